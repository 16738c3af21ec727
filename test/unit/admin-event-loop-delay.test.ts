import { setTimeout as sleep } from 'node:timers/promises';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { EVENT_LOOP_SAMPLE_MS, latenessSeconds, registerEventLoopDelay } from '../../src/admin/event-loop-delay.js';
import { createMetrics } from '../../src/admin/metrics.js';

const sample = (text: string, name: string) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1]);

describe('event-loop delay metrics (src/admin/event-loop-delay.ts)', () => {
  it('report how late a sample came, not the gap between samples', () => {
    expect(latenessSeconds((EVENT_LOOP_SAMPLE_MS + 0.25) * 1e6)).toBeCloseTo(0.00025, 9);
    expect(latenessSeconds(EVENT_LOOP_SAMPLE_MS * 1e6 - 1)).toBe(0); // a timer that fired a hair early is not late
    expect(latenessSeconds(2_000 * 1e6, 100)).toBeCloseTo(1.9, 9);
    // An empty histogram's min is a huge number and its mean NaN.
    expect(latenessSeconds(Number.NaN)).toBe(0);
    expect(latenessSeconds(Number.POSITIVE_INFINITY)).toBe(0);
  });

  it("replace prom-client's gauges under the same names, once each, beside its nodejs_eventloop_lag_seconds", async () => {
    const registry = new Registry();
    collectDefaultMetrics({ register: registry });
    const before = (await registry.getMetricsAsJSON()).map((m) => m.name).sort();
    registerEventLoopDelay(registry);
    const after = (await registry.getMetricsAsJSON()).map((m) => m.name).sort();
    expect(after).toEqual(before);
    expect(after.filter((n) => n.startsWith('nodejs_eventloop_lag_'))).toHaveLength(8);
  });

  it('show a stall: a loop blocked for 300 ms reads at least 200 ms of delay, and the next scrape starts afresh', async () => {
    const { registry } = createMetrics({ service: 'test' });
    await registry.metrics(); // restart the histogram
    await sleep(2 * EVENT_LOOP_SAMPLE_MS);
    // A synchronous stall, as a slow handler would cause, of at least 300 ms on the monotonic clock: the sample before
    // it and the one after are then at least 300 ms apart, 200 ms late, however slow the machine (a slow one only
    // stretches the gap). Date.now() counts whole milliseconds, so a stall timed by it could be up to 1 ms short.
    const stallUntil = performance.now() + 300;
    while (performance.now() < stallUntil) {
      // busy
    }
    await sleep(2 * EVENT_LOOP_SAMPLE_MS);
    const stalled = await registry.metrics();
    const stalledMax = sample(stalled, 'nodejs_eventloop_lag_max_seconds');
    expect(stalledMax).toBeGreaterThanOrEqual(0.2);
    expect(sample(stalled, 'nodejs_eventloop_lag_min_seconds')).toBeLessThanOrEqual(stalledMax);
    // Scraped again at once, the histogram holds only what happened since the last scrape, not the stall. (After a
    // wait instead, a loaded machine that kept this process off the CPU for as long as the stall would read as late.)
    expect(sample(await registry.metrics(), 'nodejs_eventloop_lag_max_seconds')).toBeLessThan(stalledMax);
  });
});
