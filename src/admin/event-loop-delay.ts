import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Gauge, type Registry } from './prom-client-core.js';

/**
 * How often the event loop is sampled, ms. prom-client's default, 10 ms, is a
 * timer that woke an idle sidecar 100 times a second (0.77 % of a CPU against
 * 0.47 % at 100 ms on the benchmark machine, times every pod). At 100 ms a
 * 15 s scrape still gets 150 samples (docs/performance.md, "Idle").
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

/**
 * prom-client's histogram gauges for event-loop delay, by the names and help
 * texts it uses (lib/metrics/eventLoopLag.js), so dashboards built on them
 * keep working. `nodejs_eventloop_lag_seconds` (one setImmediate timed at
 * scrape) is prom-client's own and stays.
 */
const GAUGES = {
  min: ['nodejs_eventloop_lag_min_seconds', 'The minimum recorded event loop delay.'],
  max: ['nodejs_eventloop_lag_max_seconds', 'The maximum recorded event loop delay.'],
  mean: ['nodejs_eventloop_lag_mean_seconds', 'The mean of the recorded event loop delays.'],
  stddev: ['nodejs_eventloop_lag_stddev_seconds', 'The standard deviation of the recorded event loop delays.'],
  p50: ['nodejs_eventloop_lag_p50_seconds', 'The 50th percentile of the recorded event loop delays.'],
  p90: ['nodejs_eventloop_lag_p90_seconds', 'The 90th percentile of the recorded event loop delays.'],
  p99: ['nodejs_eventloop_lag_p99_seconds', 'The 99th percentile of the recorded event loop delays.'],
} as const;

/** prom-client's own histogram cannot be turned off; at this interval (~24.8 days, a timer's maximum) it never wakes anyone. */
export const PROM_CLIENT_EVENT_LOOP_SAMPLE_MS = 2 ** 31 - 1;

/**
 * Node's histogram records the whole time between two samples, interval
 * included: sampled every 10 ms, an idle loop reads ~10 ms of "delay", and
 * every 100 ms ~100 ms. Reported here is how late each sample came, in
 * seconds: ~0 when idle, and a stall of S ms shows as at least S − 100 ms.
 */
export function latenessSeconds(gapNs: number, sampleMs: number = EVENT_LOOP_SAMPLE_MS): number {
  return Number.isFinite(gapNs) ? Math.max(0, gapNs / 1e9 - sampleMs / 1e3) : 0;
}

/**
 * Replaces prom-client's event-loop delay gauges on `registry` (after
 * `collectDefaultMetrics`) with ones fed by a histogram sampled every
 * EVENT_LOOP_SAMPLE_MS. Like prom-client's, the histogram restarts at every
 * scrape, so each scrape reports the delays since the last one.
 */
export function registerEventLoopDelay(registry: Registry): void {
  const histogram = monitorEventLoopDelay({ resolution: EVENT_LOOP_SAMPLE_MS });
  histogram.enable();
  for (const [name] of Object.values(GAUGES)) registry.removeSingleMetric(name);
  const gauge = (key: keyof typeof GAUGES, collect?: () => void) =>
    new Gauge({ name: GAUGES[key][0], help: GAUGES[key][1], registers: [registry], ...(collect ? { collect } : {}) });

  // The first gauge's collect sets them all, as prom-client does: the registry reads them in registration order.
  const sample = () => {
    const empty = histogram.count === 0;
    const late = (ns: number) => (empty ? 0 : latenessSeconds(ns));
    min.set(late(histogram.min));
    max.set(late(histogram.max));
    mean.set(late(histogram.mean));
    stddev.set(empty || !Number.isFinite(histogram.stddev) ? 0 : histogram.stddev / 1e9);
    p50.set(late(histogram.percentile(50)));
    p90.set(late(histogram.percentile(90)));
    p99.set(late(histogram.percentile(99)));
    histogram.reset();
  };
  const min = gauge('min', sample);
  const max = gauge('max');
  const mean = gauge('mean');
  const stddev = gauge('stddev');
  const p50 = gauge('p50');
  const p90 = gauge('p90');
  const p99 = gauge('p99');
}
