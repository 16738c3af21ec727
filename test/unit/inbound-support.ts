import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createMetrics, type Metrics } from '../../src/admin/metrics.js';
import type { Clock } from '../../src/clock.js';
import { parseConfig } from '../../src/config/load.js';
import type { InboundConfig } from '../../src/config/schema.js';
import type { Scheduler } from '../../src/scheduler.js';
import { createLogger, type Logger } from '../../src/log.js';

/** A clock that moves only when told (milliseconds). */
export interface ManualClock extends Clock {
  /** Time passes: the wall clock and the monotonic one move together. */
  advance(ms: number): void;
  /** The wall clock steps to `ms` (NTP, a resumed VM) while no time passes: the monotonic clock stays. */
  set(ms: number): void;
}

export function manualClock(start = Date.now()): ManualClock {
  let t = start;
  let m = 0;
  return {
    now: () => t,
    monotonic: () => m,
    advance: (ms) => void ((t += ms), (m += ms)),
    set: (ms) => void (t = ms),
  };
}

/** Timers that fire only when the test runs them. */
export interface ManualScheduler extends Scheduler {
  /** Pending timers, in the order they were set. */
  pending(): { ms: number }[];
  /** Runs every pending timer (not those they set) and returns how many ran. */
  runAll(): number;
}

export function manualScheduler(): ManualScheduler {
  let next = 1;
  const timers = new Map<number, { fn: () => void; ms: number }>();
  return {
    schedule(ms, fn) {
      const id = next++;
      timers.set(id, { fn, ms });
      return () => void timers.delete(id);
    },
    pending: () => [...timers.values()].map((t) => ({ ms: t.ms })),
    runAll() {
      const due = [...timers.entries()];
      for (const [id] of due) timers.delete(id);
      for (const [, t] of due) t.fn();
      return due.length;
    },
  };
}

/** Logger writing into an array of parsed lines (and the raw text, for "never logged" checks). */
export function captureLogger(): { logger: Logger; lines: Record<string, any>[]; text: () => string } {
  const lines: Record<string, any>[] = [];
  let raw = '';
  const stream = new Writable({
    write(chunk, _enc, cb) {
      const s = chunk.toString();
      raw += s;
      for (const l of s.split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: createLogger({ level: 'debug', destination: stream as any }), lines, text: () => raw };
}

export function testMetrics(): Metrics {
  return createMetrics({ processMetrics: false });
}

/** Value of a counter with exactly these labels (0 when never incremented). */
export async function counterValue(metrics: Metrics, name: keyof Metrics, labels: Record<string, string>): Promise<number> {
  const metric = metrics[name] as unknown as { get(): Promise<{ values: { labels: Record<string, unknown>; value: number }[] }> };
  const { values } = await metric.get();
  const hit = values.find((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want));
  return hit?.value ?? 0;
}

/** A JWKS endpoint on 127.0.0.1:0 whose answer the test controls; counts requests. */
export interface JwksServer {
  url: string;
  origin: string;
  count: number;
  /** What GET answers: a JWKS object, or a status with a raw body (and headers). */
  set(answer: { keys: unknown[] } | { status: number; body?: string; headers?: Record<string, string> }): void;
  /** Requests are held until release() (single-flight tests). */
  hold(): void;
  release(): void;
  close(): Promise<void>;
}

export async function startJwksServer(initial: { keys: unknown[] }): Promise<JwksServer> {
  let answer: { keys: unknown[] } | { status: number; body?: string; headers?: Record<string, string> } = initial;
  let holding = false;
  const held: (() => void)[] = [];
  const respond = (res: ServerResponse) => {
    if ('keys' in answer) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    else res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers }).end(answer.body ?? '');
  };
  const server = createServer((_req: IncomingMessage, res: ServerResponse) => {
    s.count++;
    if (holding) held.push(() => respond(res));
    else respond(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  const s: JwksServer = {
    origin: `http://127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}/jwks`,
    count: 0,
    set: (a) => void (answer = a),
    hold: () => void (holding = true),
    release() {
      holding = false;
      for (const h of held.splice(0)) h();
    },
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  return s;
}

/** A validated inbound config (defaults applied) from a partial one. */
export function inboundConfig(inbound: Record<string, unknown>): InboundConfig {
  return parseConfig({ service: 'test', inbound: { target: 'http://127.0.0.1:9', audience: 'orders', ...inbound } }).inbound!;
}
