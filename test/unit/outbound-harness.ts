import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createMetrics, type Metrics } from '../../src/admin/metrics.js';
import type { Clock } from '../../src/clock.js';
import { createLogger, type Logger } from '../../src/log.js';
import type { Scheduler } from '../../src/scheduler.js';

/** A clock and scheduler that only move when the test says so. */
export interface FakeTime {
  clock: Clock;
  scheduler: Scheduler;
  /** Moves time forward, running every task that falls due on the way, in order. */
  advance(ms: number): void;
  /** Steps the wall clock by `ms` (NTP, a resumed VM) while no time passes: the monotonic clock and the tasks stay. */
  step(ms: number): void;
  /** Due times (ms since epoch, as the wall clock will read then) of pending tasks, earliest first. */
  pending(): number[];
  now(): number;
}

export function createFakeTime(start = Date.UTC(2030, 0, 1)): FakeTime {
  let now = start;
  /** Monotonic time: moves with `now` except when the wall clock steps. Tasks are due on it. */
  let mono = start;
  let seq = 0;
  const tasks: { at: number; seq: number; fn: () => void }[] = [];
  const byDue = () => tasks.sort((a, b) => a.at - b.at || a.seq - b.seq);
  return {
    clock: { now: () => now, monotonic: () => mono },
    scheduler: {
      schedule(delayMs, fn) {
        const task = { at: mono + Math.max(0, delayMs), seq: seq++, fn };
        tasks.push(task);
        return () => {
          const i = tasks.indexOf(task);
          if (i >= 0) tasks.splice(i, 1);
        };
      },
    },
    advance(ms) {
      const target = mono + ms;
      for (;;) {
        byDue();
        const next = tasks[0];
        if (!next || next.at > target) break;
        tasks.shift();
        now += next.at - mono;
        mono = next.at;
        next.fn();
      }
      now += target - mono;
      mono = target;
    },
    step: (ms) => void (now += ms),
    pending: () => byDue().map((t) => t.at - mono + now),
    now: () => now,
  };
}

export interface SeenTokenRequest {
  headers: IncomingHttpHeaders;
  form: URLSearchParams;
}

export type TokenReply = { status?: number; body: unknown; contentType?: string; headers?: Record<string, string> };

/**
 * A stand-in OAuth token endpoint on 127.0.0.1 (the network edge of a token
 * source): records each request and answers with `reply(req)`. `hold()`
 * parks answers until the returned release function is called.
 */
export interface StubTokenEndpoint {
  url: string;
  origin: string;
  requests: SeenTokenRequest[];
  reply: (req: SeenTokenRequest) => TokenReply;
  hold(): () => void;
  close(): Promise<void>;
}

export async function startStubTokenEndpoint(reply: (req: SeenTokenRequest) => TokenReply): Promise<StubTokenEndpoint> {
  let gate: Promise<void> | undefined;
  const stub: StubTokenEndpoint = {
    url: '',
    origin: '',
    requests: [],
    reply,
    hold() {
      let release!: () => void;
      gate = new Promise<void>((r) => (release = r));
      return () => {
        gate = undefined;
        release();
      };
    },
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const seen = { headers: req.headers, form: new URLSearchParams(Buffer.concat(chunks).toString('utf8')) };
      stub.requests.push(seen);
      if (gate) await gate;
      const r = stub.reply(seen);
      const body = typeof r.body === 'string' ? r.body : JSON.stringify(r.body);
      res.writeHead(r.status ?? 200, { 'content-type': r.contentType ?? 'application/json', ...r.headers }).end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  stub.origin = `http://127.0.0.1:${port}`;
  stub.url = `${stub.origin}/token`;
  return stub;
}

/** A logger whose JSON lines are collected for assertions, plus metrics on a private registry. */
export function observed(): { logger: Logger; metrics: Metrics; lines: Record<string, any>[]; text: () => string } {
  const lines: Record<string, any>[] = [];
  let text = '';
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const s = chunk.toString('utf8');
      text += s;
      for (const line of s.split('\n')) if (line.trim()) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { logger: createLogger({ level: 'debug', destination }), metrics: createMetrics({ processMetrics: false }), lines, text: () => text };
}

/** The value of one sample in the registry's Prometheus text, or undefined. */
export async function metricValue(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const text = await metrics.registry.metrics();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const inner = line.slice(name.length + 1, line.indexOf('}'));
    if (want.every((w) => inner.split(',').includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}
