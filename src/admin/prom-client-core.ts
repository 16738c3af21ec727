import type * as PromClient from 'prom-client';
import CounterClass from 'prom-client/lib/counter.js';
import collectDefaultMetricsFunction from 'prom-client/lib/defaultMetrics.js';
import GaugeClass from 'prom-client/lib/gauge.js';
import HistogramClass from 'prom-client/lib/histogram.js';
import RegistryClass from 'prom-client/lib/registry.js';

/*
 * The parts of prom-client the sidecar uses, without the rest of the package. Its entry point also loads the
 * Pushgateway client (and with it node:zlib), Summary (and its t-digest), and the cluster aggregator, in every
 * sidecar, for code a sidecar never runs: 0.2-0.5 MiB at rest (docs/performance.md, "The bundle"). These are
 * prom-client's own modules, so a release that moves them fails the build (the bundle cannot resolve them) and the
 * tests, not a running sidecar: the CLI runs from the bundle made at build time (scripts/bundle.mjs).
 * test/e2e/bundle.test.ts checks that a sidecar does not load node:zlib.
 */

/** prom-client's `Registry`. */
export const Registry = RegistryClass as typeof PromClient.Registry;
/** prom-client's `Counter`. */
export const Counter = CounterClass as typeof PromClient.Counter;
/** prom-client's `Gauge`. */
export const Gauge = GaugeClass as typeof PromClient.Gauge;
/** prom-client's `Histogram`. */
export const Histogram = HistogramClass as typeof PromClient.Histogram;
/** prom-client's `collectDefaultMetrics`: Node's process metrics on a registry. */
export const collectDefaultMetrics = collectDefaultMetricsFunction as typeof PromClient.collectDefaultMetrics;
export type Registry = PromClient.Registry;
export type Counter<T extends string = string> = PromClient.Counter<T>;
export type Gauge<T extends string = string> = PromClient.Gauge<T>;
export type Histogram<T extends string = string> = PromClient.Histogram<T>;
