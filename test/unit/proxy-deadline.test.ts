import { createServer } from 'node:http';
import { connect as tcpConnect, type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createDeadlineWatch, UpstreamDeadlineError } from '../../src/proxy/deadline.js';
import { toUpstreamError } from '../../src/proxy/forward.js';
import { Pool } from '../../src/proxy/undici-core.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function app(handler: Parameters<typeof createServer>[1]): Promise<string> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(
    () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('deadline watch (upstream timeouts without per-request timers)', () => {
  it('forgets every request once it ends, whatever the outcome', async () => {
    const origin = await app((req, res) => (req.url === '/reset' ? req.socket.destroy() : res.end('ok')));
    const watch = createDeadlineWatch(5_000);
    const pool = new Pool(origin, { headersTimeout: 0, bodyTimeout: 0 });
    cleanups.push(async () => {
      await pool.destroy();
      watch.close();
    });
    const dispatcher = pool.compose(watch.interceptor);
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => dispatcher.request({ path: i % 5 === 0 ? '/reset' : '/ok', method: 'GET' }).then((r) => r.body.text())),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(40);
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(10);
    expect(watch.size).toBe(0);
  });

  it('aborts a request whose response headers do not come, with an error that maps to 504 upstream_timeout', async () => {
    const origin = await app(() => {
      /* never answers */
    });
    const watch = createDeadlineWatch(100);
    const pool = new Pool(origin, { headersTimeout: 0, bodyTimeout: 0 });
    cleanups.push(async () => {
      await pool.destroy();
      watch.close();
    });
    const err = await pool
      .compose(watch.interceptor)
      .request({ path: '/', method: 'GET' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamDeadlineError);
    expect((err as UpstreamDeadlineError).code).toBe('UND_ERR_HEADERS_TIMEOUT');
    expect(toUpstreamError(err)).toMatchObject({ code: 'upstream_timeout', status: 504 });
    expect(watch.size).toBe(0);
  });

  it('expires every overdue request in one pass and leaves the answered ones alone', async () => {
    // Stalled requests sit first, in the middle and last of the watch list: expiring one unlinks it mid-walk.
    const origin = await app((req, res) => {
      if (req.url !== '/stall') res.end('ok');
    });
    // The /ok requests must be answered (connection included) within the timeout, so it is far longer than a loopback
    // exchange on a loaded machine; the stalled ones wait it out, the price in a passing run.
    const watch = createDeadlineWatch(1_000);
    const pool = new Pool(origin, { connections: 16, headersTimeout: 0, bodyTimeout: 0 });
    cleanups.push(async () => {
      await pool.destroy();
      watch.close();
    });
    const dispatcher = pool.compose(watch.interceptor);
    const paths = ['/stall', '/ok', '/stall', '/stall', '/ok', '/ok', '/stall', '/ok', '/stall'];
    const results = await Promise.allSettled(paths.map((path) => dispatcher.request({ path, method: 'GET' }).then((r) => r.body.text())));
    results.forEach((r, i) => {
      if (paths[i] === '/ok') expect(r).toEqual({ status: 'fulfilled', value: 'ok' });
      else expect(r.status === 'rejected' && (r.reason as UpstreamDeadlineError).code).toBe('UND_ERR_HEADERS_TIMEOUT');
    });
    expect(watch.size).toBe(0);
  });

  it('gives a request its queue timeout to get a connection, connecting included, then the upstream timeout', async () => {
    const origin = await app((_req, res) => res.end('ok'));
    const { port } = new URL(origin);
    // Connections take 800 ms to open: longer than the 500 ms upstream timeout and the quarter of it by which the watch
    // may fire late (so the timeout would have cut the request had it counted connecting), well within the queue's 5 s.
    // The answer, once connected, has the 500 ms: far more than a loopback exchange needs on a loaded machine.
    const slowConnect = (_opts: object, done: (err: Error | null, socket: unknown) => void) => {
      setTimeout(() => {
        const socket = tcpConnect(Number(port), '127.0.0.1', () => done(null, socket));
        socket.once('error', (e) => done(e, null));
      }, 800);
    };
    const run = async (queueTimeoutMs: number) => {
      const watch = createDeadlineWatch(500, queueTimeoutMs);
      const pool = new Pool(origin, { connect: slowConnect as never, headersTimeout: 0, bodyTimeout: 0 });
      cleanups.push(async () => {
        await pool.destroy();
        watch.close();
      });
      return pool
        .compose(watch.interceptor)
        .request({ path: '/', method: 'GET' })
        .then((r) => r.body.text(), (e: unknown) => e);
    };
    expect(await run(5_000)).toBe('ok');
    const err = await run(100);
    expect(err).toBeInstanceOf(UpstreamDeadlineError);
    expect((err as UpstreamDeadlineError).code).toBe('UPSTREAM_QUEUE_TIMEOUT');
    expect(toUpstreamError(err)).toMatchObject({ code: 'upstream_timeout', status: 504, message: 'no upstream connection was free in time' });
  });
});
