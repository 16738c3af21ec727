import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Dispatcher } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { readCaBundle } from '../../src/config/ca-bundle.js';
import { createUpstreamPools, MAX_POOLS, type UpstreamPools } from '../../src/proxy/upstreams.js';
import { selfSignedCert } from '../support/certs.js';
import { limitsWith } from './proxy-harness.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** An upstream that counts, from its own side, the connections the pools open and close. */
interface Upstream {
  origin: string;
  /** Connections open right now. */
  open(): number;
  /** Connections ever accepted. */
  accepted: number;
  /** Requests received. */
  requests: number;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

async function upstream(handler: Handler = (_req, res) => res.end('ok')): Promise<Upstream> {
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    u.requests++;
    handler(req, res);
  });
  // Keep-Alive: timeout=60 in every response, so the pool keeps its socket well past the test:
  // a connection that closes was closed by the eviction, not by undici's own keep-alive timeout.
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s: Socket) => {
    u.accepted++;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const u: Upstream = {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    open: () => sockets.size,
    accepted: 0,
    requests: 0,
  };
  cleanups.push(
    () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return u;
}

function upstreams(n: number): Promise<Upstream[]> {
  return Promise.all(Array.from({ length: n }, () => upstream()));
}

/** A response that sends its first part, then waits for release() before the rest. */
function heldResponse(): { handler: Handler; release: () => void } {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  return {
    release,
    handler: (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first-');
      void released.then(() => res.end('last'));
    },
  };
}

function pools(opts?: { maxPools?: number; idleMs?: number }): UpstreamPools {
  const p = createUpstreamPools(limitsWith(), opts);
  cleanups.push(() => p.destroy());
  return p;
}

async function text(dispatcher: Dispatcher, path = '/'): Promise<string> {
  const res = await dispatcher.request({ path, method: 'GET' });
  return res.body.text();
}

const openOn = (us: Upstream[]) => us.reduce((n, u) => n + u.open(), 0);

describe('upstream pools are bounded', () => {
  it(`keeps at most MAX_POOLS (${MAX_POOLS}) pools: 300 origins leave the ${MAX_POOLS} most recent connected`, async () => {
    const servers = await upstreams(300);
    const p = pools();
    for (const u of servers) expect(await text(p.get(u.origin))).toBe('ok');
    expect(servers.every((u) => u.accepted === 1)).toBe(true);
    const evicted = servers.slice(0, servers.length - MAX_POOLS);
    const kept = servers.slice(servers.length - MAX_POOLS);
    await vi.waitFor(() => expect(openOn(evicted)).toBe(0), { timeout: 5_000 });
    expect(openOn(kept)).toBe(MAX_POOLS);
  });

  it('evicts the least recently used origin first', async () => {
    const [a, b, c, d] = await upstreams(4);
    const p = pools({ maxPools: 3 });
    for (const u of [a!, b!, c!, a!, d!]) await text(p.get(u.origin));
    // b was used least recently (a was used again after it): b goes, a, c and d stay.
    await vi.waitFor(() => expect(b!.open()).toBe(0));
    expect([a!.open(), c!.open(), d!.open()]).toEqual([1, 1, 1]);
    expect(a!.accepted).toBe(1);
  });

  it('keeps the connection count bounded under a stream of new origins', async () => {
    const servers = await upstreams(40);
    const p = pools({ maxPools: 5 });
    for (const [i, u] of servers.entries()) {
      await text(p.get(u.origin));
      // Evicted pools close within a moment of the next lookup; never more than the bound stays open.
      await vi.waitFor(() => expect(openOn(servers)).toBeLessThanOrEqual(5));
      expect(openOn(servers)).toBe(Math.min(i + 1, 5));
    }
  });

  it('lets a request in flight on an evicted pool complete with the full response', async () => {
    const held = heldResponse();
    const a = await upstream(held.handler);
    const b = await upstream();
    const p = pools({ maxPools: 1 });
    const pending = text(p.get(a.origin));
    await vi.waitFor(() => expect(a.requests).toBe(1));
    expect(await text(p.get(b.origin))).toBe('ok'); // evicts a's pool while its request is in flight
    expect(a.open()).toBe(1);
    held.release();
    expect(await pending).toBe('first-last');
    // Once its request is done, the evicted pool closes its connection.
    await vi.waitFor(() => expect(a.open()).toBe(0));
    expect(b.open()).toBe(1);
  });

  it('gives an origin a new pool after its pool was evicted, also through a dispatcher the caller kept', async () => {
    const [a, b] = await upstreams(2);
    const p = pools({ maxPools: 1 });
    const kept = p.get(a!.origin); // inbound keeps its dispatcher for good
    expect(await text(kept)).toBe('ok');
    expect(await text(p.get(b!.origin))).toBe('ok');
    await vi.waitFor(() => expect(a!.open()).toBe(0));
    expect(await text(kept)).toBe('ok');
    expect(a!.accepted).toBe(2); // a new pool, a new connection
    await vi.waitFor(() => expect(b!.open()).toBe(0)); // and b gave way in turn
    expect(await text(p.get(a!.origin))).toBe('ok');
  });
});

describe('idle upstream pools', () => {
  it('closes a pool idle for idleMs; the next request to that origin opens a new one', async () => {
    const a = await upstream();
    const p = pools({ idleMs: 100 });
    expect(await text(p.get(a.origin))).toBe('ok');
    expect(a.open()).toBe(1);
    await vi.waitFor(() => expect(a.open()).toBe(0), { timeout: 2_000 });
    expect(await text(p.get(a.origin))).toBe('ok');
    expect(a.accepted).toBe(2);
    expect(a.open()).toBe(1);
  });

  it('does not count a pool in use through a kept dispatcher as idle', async () => {
    const a = await upstream();
    // Used every ~20 ms for longer than the latest eviction (1.5 × idleMs). idleMs is far above that gap, so a
    // test process stalled on a busy machine (several test files run at once) does not make the pool idle for real.
    const idleMs = 1_000;
    const p = pools({ idleMs });
    const kept = p.get(a.origin);
    const until = performance.now() + 2 * idleMs;
    while (performance.now() < until) {
      expect(await text(kept)).toBe('ok');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(a.accepted).toBe(1);
    // Left alone, it does go idle.
    await vi.waitFor(() => expect(a.open()).toBe(0), { timeout: 4 * idleMs });
    expect(await text(kept)).toBe('ok');
    expect(a.accepted).toBe(2);
  });
});

describe('https upstream pools', () => {
  it('reopen after an idle eviction still trusting the CA bundle they were given: the second TLS handshake verifies against it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'upstreams-ca-'));
    const tls = selfSignedCert('upstream', dir);
    let [accepted, open] = [0, 0];
    const server = createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, (_req, res) => res.end('tls ok'));
    server.keepAliveTimeout = 60_000;
    server.on('secureConnection', (s: Socket) => {
      accepted++;
      open++;
      s.once('close', () => open--);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => (server.closeAllConnections(), server.close(() => r()))));
    const origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const ca = readCaBundle(tls.cert, 'outbound.routes.0.caFile');
    rmSync(dir, { recursive: true }); // only the bytes in `ca` are needed from here on

    const p = pools({ idleMs: 100 });
    expect(await text(p.get(origin, ca))).toBe('tls ok');
    await vi.waitFor(() => expect(open).toBe(0), { timeout: 2_000 });
    expect(await text(p.get(origin, ca))).toBe('tls ok');
    expect(accepted).toBe(2);
  });
});

describe('closing the pools', () => {
  it('close() resolves only after evicted pools finished their requests and closed', async () => {
    const held = heldResponse();
    const a = await upstream(held.handler);
    const [b, c] = await upstreams(2);
    const p = createUpstreamPools(limitsWith(), { maxPools: 1 });
    const pending = text(p.get(a.origin));
    await vi.waitFor(() => expect(a.requests).toBe(1));
    await text(p.get(b!.origin)); // a is evicted, still answering
    await text(p.get(c!.origin)); // b is evicted, idle
    let closed = false;
    const closing = p.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(false);
    held.release();
    await closing;
    expect(await pending).toBe('first-last');
    await vi.waitFor(() => expect(openOn([a, b!, c!])).toBe(0));
  });

  it('after close() a kept dispatcher fails instead of opening a new pool', async () => {
    const a = await upstream();
    const p = createUpstreamPools(limitsWith());
    const kept = p.get(a.origin);
    expect(await text(kept)).toBe('ok');
    await p.close();
    await expect(text(kept)).rejects.toMatchObject({ code: expect.stringMatching(/^UND_ERR_(CLOSED|DESTROYED)$/) });
    // Nor does a late get(): it refuses with the upstream error the handlers answer 502 for.
    expect(() => p.get(a.origin)).toThrow(expect.objectContaining({ code: 'upstream_reset', status: 502 }));
    expect(a.accepted).toBe(1);
  });

  it('destroy() cuts the connections of live and evicted pools at once', async () => {
    const held = heldResponse();
    const a = await upstream(held.handler);
    const b = await upstream();
    const p = createUpstreamPools(limitsWith(), { maxPools: 1 });
    const pending = text(p.get(a.origin)).catch((e: unknown) => e);
    await vi.waitFor(() => expect(a.requests).toBe(1));
    await text(p.get(b.origin)); // a is evicted, still answering
    await p.destroy();
    await vi.waitFor(() => expect(openOn([a, b])).toBe(0));
    expect(await pending).toBeInstanceOf(Error);
    held.release();
  });
});
