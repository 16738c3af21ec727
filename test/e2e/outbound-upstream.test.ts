import { request } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { listenTracked, tokenLeaks } from '../support/attacks.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { b64url, epochSeconds } from '../support/tokens.js';
import { eventually, metricsText, sample } from './inbound-support.js';

/**
 * The outbound side against upstreams that behave in legal but awkward ways,
 * through the CLI: an upstream that closes a keep-alive connection just as a
 * request is sent on it (the stale-connection race). The upstreams are raw
 * TCP servers, so the test decides exactly when a connection ends.
 */

/** A token the `env` source accepts (the sidecar decodes its exp; the peer would verify it). */
const TOKEN = `${b64url({ alg: 'RS256', typ: 'at+jwt' })}.${b64url({ sub: 'orders', aud: 'payments', exp: epochSeconds() + 3600 })}.c2lnbmF0dXJlLW5vdC1jaGVja2VkLWhlcmU`;

const running: SidecarProcess[] = [];
const servers: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
afterAll(async () => {
  await Promise.all(running.map((s) => s.stop()));
});

async function outbound(target: string, limits: Record<string, unknown> = {}): Promise<SidecarProcess> {
  const s = await startSidecar(
    {
      service: 'orders',
      lifecycle: { watchConfig: false },
      limits,
      outbound: { tokenSource: { type: 'env', variable: 'PAYMENTS_TOKEN' }, routes: [{ host: 'payments', target, audience: 'payments' }] },
    },
    { env: { PAYMENTS_TOKEN: TOKEN } },
  );
  running.push(s);
  return s;
}

interface RawUpstream {
  url: string;
  /** Request lines received, with the connection's number and the request's number on it: `GET /a c1#1`. */
  received: string[];
}

/**
 * A raw HTTP/1.1 upstream. `answer(n, c)` says what to do with the n-th
 * request (1-based) on connection number c: a response to write, `close` to end the
 * connection without answering, the way a server whose keep-alive idle timer
 * fired just as the request arrived does, or `reset` to abort it (TCP RST).
 */
async function rawUpstream(answer: (n: number, connection: number) => string | 'close' | 'reset'): Promise<RawUpstream> {
  const up: RawUpstream = { url: '', received: [] };
  let connections = 0;
  const server = createNetServer((socket: Socket) => {
    const conn = ++connections;
    let n = 0;
    let buffer = '';
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      buffer += d.toString('latin1');
      for (let end = buffer.indexOf('\r\n\r\n'); end >= 0; end = buffer.indexOf('\r\n\r\n')) {
        const head = buffer.slice(0, end);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffer.length < end + 4 + length) return;
        buffer = buffer.slice(end + 4 + length);
        const line = head.slice(0, head.indexOf('\r\n')).replace(/ HTTP\/1\.1$/, '');
        const what = answer(++n, conn);
        up.received.push(`${line} c${conn}#${n}`);
        if (what === 'close') return void socket.end();
        if (what === 'reset') return void socket.resetAndDestroy();
        socket.write(what);
      }
    });
  });
  const listening = await listenTracked(server);
  servers.push(listening);
  up.url = listening.url;
  return up;
}

const OK = 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok';

/** One call on a connection of its own; `error` when no response came. */
function call(s: SidecarProcess, method: string, path: string, body?: string): Promise<{ status: number; body: string } | { error: string }> {
  const { hostname, port } = new URL(s.outbound!);
  return new Promise((resolve) => {
    const req = request({ host: hostname, port, method, path, agent: false, headers: { host: 'payments' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: text }));
    });
    req.on('error', (e) => resolve({ error: e.message }));
    req.end(body);
  });
}

const reasonOf = (r: { body: string } | { error: string }) => ('body' in r ? (JSON.parse(r.body) as { reason?: string }).reason : r.error);

describe('an upstream that closes a keep-alive connection as a request arrives (stale connection)', () => {
  it('a GET is sent again once on a new connection and succeeds; the upstream saw it on the closed one first', async () => {
    const up = await rawUpstream((n) => (n === 1 ? OK : 'close'));
    const s = await outbound(up.url);
    expect(await call(s, 'GET', '/a')).toEqual({ status: 200, body: 'ok' });
    expect(await call(s, 'GET', '/b')).toEqual({ status: 200, body: 'ok' });
    expect(up.received).toEqual(['GET /a c1#1', 'GET /b c1#2', 'GET /b c2#1']);
  });

  it('a POST is never sent again (the upstream may have acted on it): 502 upstream_reset, received once', async () => {
    const up = await rawUpstream((n) => (n === 1 ? OK : 'close'));
    const s = await outbound(up.url);
    expect(await call(s, 'POST', '/a', 'one')).toEqual({ status: 200, body: 'ok' });
    const second = await call(s, 'POST', '/b', 'two');
    expect(second).toMatchObject({ status: 502 });
    expect(reasonOf(second)).toBe('upstream_reset');
    expect(up.received).toEqual(['POST /a c1#1', 'POST /b c1#2']);
  });

  it('the other idempotent methods without a body (PUT, DELETE, OPTIONS) are sent again too; a PUT with a body never', async () => {
    for (const method of ['PUT', 'DELETE', 'OPTIONS']) {
      const up = await rawUpstream((n) => (n === 1 ? OK : 'close'));
      const s = await outbound(up.url);
      expect(await call(s, method, '/a'), method).toEqual({ status: 200, body: 'ok' });
      expect(await call(s, method, '/b'), method).toEqual({ status: 200, body: 'ok' });
      expect(up.received, method).toEqual([`${method} /a c1#1`, `${method} /b c1#2`, `${method} /b c2#1`]);
    }
    // A body could not be sent again (it was streamed through, not kept): RFC 9110 allows the retry, the sidecar cannot.
    const up = await rawUpstream((n) => (n === 1 ? OK : 'close'));
    const s = await outbound(up.url);
    expect(await call(s, 'PUT', '/a', 'one')).toEqual({ status: 200, body: 'ok' });
    const second = await call(s, 'PUT', '/b', 'two');
    expect(reasonOf(second)).toBe('upstream_reset');
    expect(up.received).toEqual(['PUT /a c1#1', 'PUT /b c1#2']);
  });

  it('a GET that a new connection closes unanswered is not sent again: 502 upstream_reset, received once', async () => {
    const up = await rawUpstream(() => 'close');
    const s = await outbound(up.url);
    const r = await call(s, 'GET', '/a');
    expect(r).toMatchObject({ status: 502 });
    expect(reasonOf(r)).toBe('upstream_reset');
    expect(up.received).toEqual(['GET /a c1#1']);
  });

  it('a reset is retried once even on a new connection (undici does not say whether it was new); a POST never', async () => {
    const up = await rawUpstream((n, c) => (c === 1 ? 'reset' : OK));
    const s = await outbound(up.url);
    expect(await call(s, 'GET', '/a')).toEqual({ status: 200, body: 'ok' });
    expect(up.received).toEqual(['GET /a c1#1', 'GET /a c2#1']);

    const posts = await rawUpstream(() => 'reset');
    const p = await outbound(posts.url);
    expect(reasonOf(await call(p, 'POST', '/b', 'one'))).toBe('upstream_reset');
    expect(posts.received).toEqual(['POST /b c1#1']);
  });

  it('a GET whose second attempt is closed too gets 502 upstream_reset; at most one extra attempt', async () => {
    // Only the first request on each of the first two connections is answered; whichever connection the second
    // attempt finds, it is closed too.
    const up = await rawUpstream((n, c) => (n === 1 && c <= 2 ? OK : 'close'));
    const s = await outbound(up.url);
    await Promise.all([call(s, 'GET', '/warm1'), call(s, 'GET', '/warm2')]);
    const before = up.received.length;
    const r = await call(s, 'GET', '/x');
    expect(reasonOf(r)).toBe('upstream_reset');
    expect(up.received.slice(before).map((l) => l.split(' ')[1])).toEqual(['/x', '/x']);
    expect(tokenLeaks(s.output(), [TOKEN])).toEqual([]);
  });
});

describe('an app that goes away before the peer answers', () => {
  it('cancels the peer\'s request and counts the call as client_closed, with no refusal logged', async () => {
    let requests = 0;
    let closed = false;
    // A peer that takes the request and never answers: only the app's hang-up can end the call.
    const server = createNetServer((socket: Socket) => {
      socket.on('error', () => {});
      socket.on('data', () => requests++);
      socket.on('close', () => (closed = true));
    });
    const listening = await listenTracked(server);
    servers.push(listening);
    const s = await outbound(listening.url);
    const { hostname, port } = new URL(s.outbound!);
    const app = connect(Number(port), hostname);
    app.on('error', () => {});
    app.write('GET /slow HTTP/1.1\r\nHost: payments\r\n\r\n');
    await eventually(() => requests > 0, 15_000, 'the request at the peer');
    app.destroy();
    await eventually(() => closed, 15_000, 'the peer\'s request cancelled');
    const counted = () => metricsText(s.admin).then((t) => sample(t, 'oidc_sidecar_outbound_requests_total', { route: 'payments', status: 'client_closed' }));
    await eventually(async () => (await counted()) === 1, 15_000, 'the call counted as client_closed');
    expect(s.logs.filter((l) => l.event === 'request_rejected' || l.event === 'upstream_error')).toEqual([]);
  });
});

describe('a call still in flight when a drain deadline passes', () => {
  /** A sidecar whose peer takes the call and never answers, and an app whose call is waiting at that peer. */
  async function callWaitingAtPeer() {
    let requests = 0;
    const server = createNetServer((socket: Socket) => {
      socket.on('error', () => {});
      socket.on('data', () => requests++);
    });
    const listening = await listenTracked(server);
    servers.push(listening);
    const config = {
      service: 'orders',
      lifecycle: { watchConfig: false, drainTimeoutSeconds: 0.3 },
      admin: { listen: '127.0.0.1:0' },
      outbound: { listen: '127.0.0.1:0', tokenSource: { type: 'env', variable: 'PAYMENTS_TOKEN' }, routes: [{ host: 'payments', target: listening.url, audience: 'payments' }] },
    };
    const s = await startSidecar(config, { env: { PAYMENTS_TOKEN: TOKEN } });
    running.push(s);
    const { hostname, port } = new URL(s.outbound!);
    const app = connect(Number(port), hostname);
    app.on('error', () => {});
    let appClosed = false;
    app.on('close', () => (appClosed = true));
    app.write('GET /slow HTTP/1.1\r\nHost: payments\r\n\r\n');
    await eventually(() => requests > 0, 15_000, 'the request at the peer');
    const counted = (status: string) => metricsText(s.admin).then((t) => sample(t, 'oidc_sidecar_outbound_requests_total', { route: 'payments', status }) ?? 0);
    return { s, config, app, isAppClosed: () => appClosed, counted };
  }

  it('is counted as status="drain_timeout" when the sidecar cuts it, not as client_closed: the app did not give up on it', async () => {
    const { s, config, isAppClosed, counted } = await callWaitingAtPeer();
    // A reload that moves the listener drains the old one, and cuts what is left at the deadline, as a shutdown does.
    s.rewriteConfig({ ...config, outbound: { ...config.outbound, listen: '127.0.0.2:0' } });
    s.signal('SIGHUP');
    await s.waitForLog((l) => l.event === 'config_reloaded');
    await eventually(isAppClosed, 15_000, 'the call cut at the drain deadline');
    await eventually(async () => (await counted('drain_timeout')) === 1, 15_000, 'the call counted as drain_timeout');
    expect(await counted('client_closed')).toBe(0);
  });

  it('is still the app\'s to give up on when a reload kept its listener (nothing was cut): client_closed', async () => {
    const { s, config, app, isAppClosed, counted } = await callWaitingAtPeer();
    // Same address, another rule: the old component keeps serving the call past the drain deadline, uncut.
    s.rewriteConfig({ ...config, outbound: { ...config.outbound, routes: [...config.outbound.routes, { host: 'ledger', target: 'http://127.0.0.1:9', audience: 'ledger' }] } });
    s.signal('SIGHUP');
    await s.waitForLog((l) => l.event === 'config_reloaded');
    await new Promise((r) => setTimeout(r, 1000)); // well past drainTimeoutSeconds (0.3 s)
    expect(isAppClosed()).toBe(false);
    app.destroy();
    await eventually(async () => (await counted('client_closed')) === 1, 15_000, 'the call counted as client_closed');
    expect(await counted('drain_timeout')).toBe(0);
  });
});

describe('an upstream whose response head is not HTTP/1.1', () => {
  const heads: Record<string, string> = {
    'no status line (HTTP/0.9 style)': 'hello, no status line here\r\n\r\n',
    'an empty status code': 'HTTP/1.1 \r\ncontent-length: 2\r\n\r\nok',
    'a control character in a header value': 'HTTP/1.1 200 OK\r\nx-a: a\u0001b\r\ncontent-length: 2\r\n\r\nok',
    'a header block over 16 KiB': `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(20_000)}\r\ncontent-length: 2\r\n\r\nok`,
    // RFC 9110 §15: codes outside 100-599 are invalid; relayed, a client would get `HTTP/1.1 999 unknown`.
    'a status code past 599': 'HTTP/1.1 999 Whatever\r\ncontent-length: 2\r\n\r\nok',
    // undici refuses a 100 it did not ask for (it never sends Expect): the app broke the exchange, not the connection.
    'a 100 Continue no one asked for': 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
  };
  for (const [what, head] of Object.entries(heads)) {
    it(`${what}: 502 upstream_bad_response, logged and counted as such`, async () => {
      const up = await rawUpstream(() => head);
      const s = await outbound(up.url);
      const r = await call(s, 'GET', '/a');
      expect(r).toMatchObject({ status: 502 });
      expect(reasonOf(r)).toBe('upstream_bad_response');
      const logged = await s.waitForLog((l) => l.event === 'upstream_error');
      expect(logged).toMatchObject({ route: 'payments', reason: 'upstream_bad_response' });
      const metrics = await (await fetch(`${s.admin}/metrics`)).text();
      expect(metrics).toMatch(/oidc_sidecar_upstream_errors_total\{[^}]*reason="upstream_bad_response"[^}]*\} 1/);
      expect(metrics).toMatch(/oidc_sidecar_outbound_requests_total\{[^}]*route="payments",status="upstream_bad_response"[^}]*\} 1/);
    });
  }
});
