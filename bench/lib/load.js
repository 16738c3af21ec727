// Load generation (autocannon) and the unloaded latency probe (one keep-alive connection, microsecond timing).
import { connect } from 'node:net';
import autocannon from 'autocannon';

/** One autocannon run at fixed concurrency; latencies are autocannon's (whole milliseconds). */
export async function loadRun({ url, host, connections, durationSeconds }) {
  const result = await autocannon({
    url,
    connections,
    duration: durationSeconds,
    headers: { host },
  });
  const non2xx = result.non2xx + result.errors + result.timeouts;
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, total: result.requests.total, non2xx };
}

/** A keep-alive connection that sends one GET at a time and times each exchange with hrtime. */
async function probeConnection(port, host, path, headers = {}) {
  const socket = connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  const request = Buffer.from(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`);
  let pending;
  let buf = Buffer.alloc(0);
  socket.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = buf.subarray(0, end).toString('latin1');
    const len = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
    if (buf.length < end + 4 + len) return;
    const status = Number(head.slice(9, 12));
    buf = buf.subarray(end + 4 + len);
    const p = pending;
    pending = undefined;
    p?.(status);
  });
  return {
    /** Sends one request; resolves with [status, microseconds]. */
    once() {
      return new Promise((resolve) => {
        const t0 = process.hrtime.bigint();
        pending = (status) => resolve([status, Number(process.hrtime.bigint() - t0) / 1000]);
        socket.write(request);
      });
    },
    close: () => socket.destroy(),
  };
}

/**
 * Unloaded latency: `samples` sequential requests per target over one
 * keep-alive connection each. Targets take turns in blocks of `block`
 * requests, many turns over the run, so drift on a shared machine hits every
 * target alike. With `block` 1 they alternate on every request, and each
 * request finds the CPU caches full of the other targets' processes; with a
 * larger block each target is measured warm, as under steady light traffic.
 * The first `warmup` requests of each target are not counted. Returns
 * p50/p99/mean in microseconds per target.
 */
export async function latencyProbe(targets, { samples, warmup, block = 1, path = '/bench' }) {
  const conns = [];
  for (const t of targets) conns.push(await probeConnection(t.port, t.host, path, t.headers));
  const times = targets.map(() => []);
  for (let i = 0; i < warmup + samples; i += block) {
    for (let j = 0; j < conns.length; j++) {
      for (let k = i; k < Math.min(i + block, warmup + samples); k++) {
        const [status, us] = await conns[j].once();
        if (status !== 200) throw new Error(`latency probe: ${targets[j].name} answered ${status}`);
        if (k >= warmup) times[j].push(us);
      }
    }
  }
  conns.forEach((c) => c.close());
  return targets.map((t, j) => ({ name: t.name, p50: percentile(times[j], 0.5), p99: percentile(times[j], 0.99), mean: times[j].reduce((a, b) => a + b, 0) / times[j].length }));
}

/** Nearest-rank percentile: the smallest value with at least q of the values at or below it. */
export function percentile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}
