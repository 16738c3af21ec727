import { connect, type AddressInfo, type Socket } from 'node:net';
import { Gauge } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/admin/metrics.js';
import { createAdminServer } from '../../src/admin/server.js';
import type { LimitsConfig } from '../../src/config/schema.js';
import { limitsWith, rawConnect, rawExchange } from './proxy-harness.js';

const servers: Array<ReturnType<typeof createAdminServer>> = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
});

async function startAdmin(limits: LimitsConfig = limitsWith(), metrics = createMetrics({ processMetrics: false })): Promise<number> {
  const server = createAdminServer(metrics, { isAccepting: () => true, waitingFor: () => [] }, limits, () => {});
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

describe('admin server', () => {
  it('answers a CONNECT with 405 and the methods it serves, as it does a POST, instead of closing without a word', async () => {
    const port = await startAdmin();
    const connect = await rawExchange(port, 'CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n');
    expect(connect).toMatch(/^HTTP\/1\.1 405 Method Not Allowed\r\n/);
    expect(connect).toMatch(/\r\nallow: GET, HEAD\r\n/);
    expect(connect).toMatch(/\r\n\r\nmethod not allowed\n$/);
    const post = await rawExchange(port, 'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    expect(post).toMatch(/^HTTP\/1\.1 405 /);
    expect(post).toMatch(/\r\nallow: GET, HEAD\r\n/i);
    // Still serving.
    const health = await rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(health).toMatch(/^HTTP\/1\.1 200 /);
    expect(health).toContain('ok\n');
  });

  it('holds a connection that sends nothing, or half a header block, no longer than limits.headersTimeoutSeconds (408), as the other listeners do', async () => {
    // Node's own headers timeout (60 s, checked every 30 s) held both for over a minute.
    const port = await startAdmin(limitsWith({ headersTimeoutSeconds: 0.5 }));
    const answers = await Promise.all(
      ['', 'GET /metrics HTTP/1.1\r\nHost: x\r\n'].map(async (sent) => {
        const s = await rawConnect(port);
        let text = '';
        s.on('data', (d) => (text += d.toString('latin1')));
        s.on('error', () => {});
        if (sent) s.write(sent);
        await new Promise((r) => s.once('close', r));
        return text;
      }),
    );
    for (const text of answers) expect(text).toMatch(/^HTTP\/1\.1 408 /);
    // And it still serves.
    expect(await rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('answers requests pipelined on one connection one at a time, each in an event-loop turn of its own, so a /metrics series cannot hold up the rest', async () => {
    const metrics = createMetrics({ processMetrics: false });
    // Event-loop turns, counted by an immediate that sets itself again: what the other listeners' connections get.
    let turn = 0;
    let ticking = true;
    const tick = () => {
      turn++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    // A metric whose collection takes a moment, as the process metrics do: how many renders run at once, and in which turn.
    let rendering = 0;
    let mostAtOnce = 0;
    const turns: number[] = [];
    new Gauge({
      name: 'test_render_probe',
      help: 'test',
      registers: [metrics.registry],
      async collect() {
        mostAtOnce = Math.max(mostAtOnce, ++rendering);
        turns.push(turn);
        await Promise.resolve();
        rendering--;
      },
    });
    const port = await startAdmin(limitsWith(), metrics);
    const n = 20;
    const answer = await rawExchange(port, 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(n - 1) + 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    ticking = false;
    expect(answer.match(/HTTP\/1\.1 200 OK/g)).toHaveLength(n);
    // Every pipelined request used to be rendered at once (here 20; thousands took over 100 MB of heap), and each
    // answer's end started the next in the same turn: a long series held up every other connection until it was done.
    expect(mostAtOnce).toBe(1);
    expect(turns).toHaveLength(n);
    for (let i = 1; i < n; i++) expect(turns[i]).toBeGreaterThan(turns[i - 1]!);
  });

  it('a drop at its cap does not cut a /metrics answer still on its way to a slow scraper, and closes the connections at rest', async () => {
    const page = 'x'.repeat(16 * 1024 * 1024);
    const metrics = { registry: { metrics: async () => page, contentType: 'text/plain; version=0.0.4' } } as unknown as ReturnType<typeof createMetrics>;
    const server = createAdminServer(metrics, { isAccepting: () => true, waitingFor: () => [] }, limitsWith(), () => {});
    servers.push(server);
    server.maxConnections = 3;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const open = (): Promise<Socket> =>
      new Promise((resolve) => {
        const s = connect(port, '127.0.0.1', () => resolve(s));
        s.on('error', () => {});
      });
    // The scraper asks, and reads nothing yet: the page is ended but still queued in the server.
    const scraper = await open();
    scraper.pause();
    scraper.write('GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n');
    await new Promise((r) => setTimeout(r, 300));
    const silent = await open();
    const closedSilent = new Promise((r) => silent.once('close', r));
    // Two more: one takes the last place, one is dropped, and the drop closes what is at rest.
    const others = [await open(), await open()];
    await closedSilent;
    let received = 0;
    scraper.on('data', (c: Buffer) => (received += c.length));
    scraper.resume();
    await new Promise((r) => setTimeout(r, 50));
    for (let waited = 0; received < page.length && waited < 10_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    expect(received).toBeGreaterThan(page.length);
    for (const s of [scraper, ...others]) s.destroy();
  }, 30_000);
});
