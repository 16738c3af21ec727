import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { Agent, type IncomingHttpHeaders } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { expectContinueExchange, rawExchange as rawHttpExchange, SERVES_OTHER_UPGRADES_AS_REQUESTS, startUpgradingApp } from '../support/attacks.js';
import { selfSignedCert } from '../support/certs.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { closedPort } from '../unit/proxy-harness.js';
import { startWsEcho } from '../unit/proxy-ws-echo.js';
import { bearerOf, metricsText, sample, send, verifyWithIdp } from './outbound-support.js';

const SECRET = 'orders-secret';
let idp: TestIdp;
let app: UpstreamApp;
const running: SidecarProcess[] = [];

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: SECRET }] });
  app = await startUpstream();
});
afterAll(async () => {
  await app.close();
  await idp.close();
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
  app.seen.length = 0;
});

function outboundConfig(extra: Record<string, unknown> = {}, source: Record<string, unknown> = {}) {
  return {
    service: 'orders',
    outbound: {
      tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: SECRET, ...source },
      routes: [{ host: 'payments', target: app.url, audience: 'payments', scopes: ['pay'] }],
      ...extra,
    },
  };
}

async function sidecar(config: Record<string, unknown>, opts: Parameters<typeof startSidecar>[1] = {}): Promise<SidecarProcess> {
  const s = await startSidecar(config, opts);
  running.push(s);
  return s;
}

describe('outbound sidecar (CLI) with a real OpenID provider', () => {
  it('routes an absolute-form call by its URL and says so in X-Forwarded-Host, whatever Host the app also sent (RFC 9112 §3.2.2)', async () => {
    const s = await sidecar(outboundConfig());
    const r = await send(s.outbound!, { target: 'http://payments/charge', host: 'evil.example' });
    expect(r.status).toBe(200);
    expect(app.seen.at(-1)!.headers['x-forwarded-host']).toBe('payments');
  });

  it('attaches a token bound to the route audience in both addressing modes, replacing the app Authorization', async () => {
    const s = await sidecar(outboundConfig());
    const proxied = await send(s.outbound!, {
      method: 'POST',
      target: 'http://payments/charge?id=7',
      host: 'payments',
      headers: { authorization: 'Bearer app-own-token', 'proxy-authorization': 'Basic cHJveHk6cHc=', 'content-type': 'application/json' },
      body: '{"amount":1}',
    });
    const originForm = await send(s.outbound!, { target: '/charge?id=8', host: 'PAYMENTS:15006' });
    expect([proxied.status, originForm.status]).toEqual([200, 200]);
    expect(app.seen.map((r) => `${r.method} ${r.url}`)).toEqual(['POST /charge?id=7', 'GET /charge?id=8']);
    for (const seen of app.seen) {
      const token = bearerOf(seen.headers.authorization)!;
      expect(token).toBeDefined();
      expect(seen.rawHeaders.filter((h) => h.toLowerCase() === 'authorization')).toHaveLength(1);
      expect(seen.headers['proxy-authorization']).toBeUndefined();
      const claims = await verifyWithIdp(idp, token, 'payments');
      expect(claims).toMatchObject({ sub: 'orders', client_id: 'orders', scope: 'pay' });
    }
    // X-Forwarded-Host names the authority the call was routed to, as the router spells it.
    expect(app.seen.map((r) => r.headers['x-forwarded-host'])).toEqual(['payments', 'payments:15006']);
    expect(app.seen[0]!.bodyBytes).toBe(12);
    expect(s.output()).not.toContain(SECRET);
    expect(s.output()).not.toContain(bearerOf(app.seen[0]!.headers.authorization)!);
    expect(s.output()).not.toContain('app-own-token');
  });

  it('with another tokenHeader keeps the app Authorization (end-user token) and puts ours beside it', async () => {
    const s = await sidecar(outboundConfig({ tokenHeader: 'x-workload-token' }));
    const r = await send(s.outbound!, { target: '/me', host: 'payments', headers: { authorization: 'Bearer end-user', 'x-workload-token': 'Bearer forged' } });
    expect(r.status).toBe(200);
    const seen = app.seen[0]!;
    expect(seen.headers.authorization).toBe('Bearer end-user');
    expect(seen.rawHeaders.filter((h) => h.toLowerCase() === 'x-workload-token')).toHaveLength(1);
    expect((await verifyWithIdp(idp, bearerOf(seen.headers['x-workload-token'])!, 'payments')).sub).toBe('orders');
  });

  it('200 concurrent calls on a cold start cost one token request', async () => {
    idp.resetCounts();
    const s = await sidecar(outboundConfig(), { waitReady: false });
    const agent = new Agent({ keepAlive: true, maxSockets: 64 });
    const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => send(s.outbound!, { target: `http://payments/n/${i}`, host: 'payments', agent })));
    agent.destroy();
    expect(replies.map((r) => r.status)).toEqual(Array(200).fill(200));
    expect(new Set(app.seen.map((r) => r.headers.authorization)).size).toBe(1);
    expect(idp.counts.token).toBe(1);
    const text = await metricsText(s.admin);
    expect(sample(text, 'oidc_sidecar_token_requests_total', { source: 'client_credentials', audience: 'payments', result: 'success' })).toBe(1);
    expect(sample(text, 'oidc_sidecar_outbound_requests_total', { route: 'payments', status: '200' })).toBe(200);
    // The gauge says when the sidecar stops using the token: the earlier of its exp and expires_in counted from when
    // the request was sent, which a slow IdP on a busy machine puts a second or so before exp.
    const exp = sample(text, 'oidc_sidecar_token_expiry_timestamp_seconds', { audience: 'payments' })!;
    const issued = await s.waitForLog((l) => l.event === 'token_issued' && l.audience === 'payments');
    expect(exp).toBe(Math.floor(Date.parse(String(issued.expiresAt)) / 1000));
    const jwtExp = (await verifyWithIdp(idp, bearerOf(app.seen[0]!.headers.authorization)!, 'payments')).exp!;
    expect(exp).toBeLessThanOrEqual(jwtExp);
    expect(exp).toBeGreaterThan(jwtExp - 60);
    expect(text).toMatch(/oidc_sidecar_request_duration_seconds_count\{[^}]*direction="outbound"[^}]*\} 200/);
  });

  it('refuses an unknown host with 403 no_route, asks the IdP for nothing, and logs the host it was asked for', async () => {
    const s = await sidecar(outboundConfig());
    idp.resetCounts();
    for (const r of [
      await send(s.outbound!, { target: 'http://payments.evil.example/x', host: 'payments' }),
      await send(s.outbound!, { target: '/x', host: 'ledger' }),
    ]) {
      expect(r.status).toBe(403);
      expect(r.json()).toMatchObject({ reason: 'no_route' });
    }
    expect(idp.counts).toMatchObject({ token: 0, discovery: 0 });
    expect(app.seen).toHaveLength(0);
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'none', status: 'no_route' })).toBe(2);
    // A call to a host with no route is what a dependency reaching for its own server looks like: each is logged.
    for (const host of ['payments.evil.example', 'ledger']) {
      const logged = await s.waitForLog((l) => l.event === 'request_rejected' && l.host === host);
      expect(logged).toMatchObject({ level: 'warn', route: 'none', reason: 'no_route', method: 'GET', peer: '127.0.0.1', detail: `no outbound route for host "${host}"` });
    }
    // A host as long as the header block allows is cut in the log line (the 403 body still names it in full).
    const long = `${'a'.repeat(4000)}.example`;
    expect((await send(s.outbound!, { target: '/x', host: long })).status).toBe(403);
    const logged = await s.waitForLog((l) => l.event === 'request_rejected' && String(l.host).startsWith('aaaa'));
    expect(logged.host).toBe(`${'a'.repeat(256)}…`);
    expect(String(logged.detail).length).toBeLessThanOrEqual(513);
    // A call whose Host is the listener itself (Node's fetch drops the Host it is given) is told how to name the peer.
    const own = new URL(s.outbound!).host;
    const toListener = await send(s.outbound!, { target: '/x', host: own });
    expect(toListener.status).toBe(403);
    expect(toListener.json().error).toBe(`no outbound route for host "${own}": the Host header names this listener, not the peer; name the peer in Host (Host: payments) or use the sidecar as an HTTP proxy (curl -x, or an undici ProxyAgent as fetch's dispatcher: fetch drops a Host header it is given)`);
    expect((await send(s.outbound!, { target: '/x', host: `localhost:${new URL(s.outbound!).port}` })).json().error).toContain('names this listener');
    // A name at the same port is some other host's, not the listener's: no hint.
    const otherHost = `orders:${new URL(s.outbound!).port}`;
    expect((await send(s.outbound!, { target: '/x', host: otherHost })).json().error).toBe(`no outbound route for host "${otherHost}"`);
  });

  it('sends 100 Continue only for a call it forwards: an unknown host gets 403 no_route instead and never sends its body', async () => {
    const s = await sidecar(outboundConfig());
    const head = (host: string) => `POST /charge HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`;
    const refused = await expectContinueExchange(s.outbound!, head('ledger'), 'abc');
    expect(refused.responses.map((r) => r.status), JSON.stringify(refused.raw.slice(0, 200))).toEqual([403]);
    expect(refused.responses[0]!.json()).toMatchObject({ reason: 'no_route' });
    expect(refused.bodySent).toBe(false);
    const routed = await expectContinueExchange(s.outbound!, head('payments'), 'abc');
    expect(routed.responses.map((r) => r.status)).toEqual([100, 200]);
    expect(app.seen.map((r) => [r.url, r.bodyBytes])).toEqual([['/charge', 3]]);
  });

  it('answers an Expect other than 100-continue with 417 bad_request in its JSON shape, counted, logged, connection closed', async () => {
    // Node would answer a bare 417 itself, with no body, nothing counted or logged, and the connection kept open.
    const s = await sidecar(outboundConfig());
    for (const [target, expect_] of [['/charge', '200-ok'], ['http://payments/charge?id=7', 'x-custom=1']] as const) {
      const ex = await rawHttpExchange(s.outbound!, `POST ${target} HTTP/1.1\r\nHost: payments\r\nContent-Length: 3\r\nExpect: ${expect_}\r\n\r\nabc`);
      expect(ex.responses.map((r) => r.status), `${target}: ${JSON.stringify(ex.raw.slice(0, 200))}`).toEqual([417]);
      expect(ex.responses[0]!.json(), target).toEqual({ error: 'the only expectation supported is 100-continue', reason: 'bad_request' });
      expect(ex.responses[0]!.headers.connection, target).toBe('close');
      expect(ex.closedByServer, target).toBe(true);
    }
    expect(app.seen).toHaveLength(0);
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'none', status: 'bad_request' })).toBe(2);
    // The two lines look alike, and the log is written asynchronously: wait for both, not for the first.
    const refusals = () => s.logs.filter((l) => l.event === 'request_rejected' && l.reason === 'bad_request' && l.method === 'POST' && l.route === 'none');
    await s.waitForLog(() => refusals().length === 2);
    expect(s.logs.filter((l) => l.event === 'request_rejected')).toHaveLength(2);
  });

  it('counts and logs the refusals of request heads the listener refuses itself, like its other refusals', async () => {
    const s = await sidecar(outboundConfig());
    const cases: [string, string, number, string][] = [
      ['two Host headers', 'GET /a HTTP/1.1\r\nHost: payments\r\nHost: other\r\n\r\n', 400, 'bad_request'],
      ['a transfer coding other than chunked', 'POST /b HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 501, 'transfer_coding_not_supported'],
      ['too many header lines on a WebSocket handshake', `GET /c HTTP/1.1\r\nHost: payments\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${'X-H: v\r\n'.repeat(120)}\r\n`, 431, 'too_many_headers'],
    ];
    for (const [label, bytes, status, reason] of cases) {
      const ex = await rawHttpExchange(s.outbound!, bytes);
      expect(ex.responses.map((r) => [r.status, r.json().reason]), label).toEqual([[status, reason]]);
      expect(ex.closedByServer, label).toBe(true);
      await s.waitForLog((l) => l.event === 'request_rejected' && l.reason === reason && l.route === 'none');
      expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'none', status: reason }), label).toBe(1);
    }
    expect(app.seen).toHaveLength(0);
  });

  it('refuses CONNECT to a routed host with a clear 405 (a tunnel cannot carry a token), and to an unrouted one with 403 no_route, counted and logged', async () => {
    const s = await sidecar(outboundConfig());
    const raw = await rawExchange(s.outbound!, 'CONNECT payments:443 HTTP/1.1\r\nHost: payments:443\r\n\r\n');
    expect(raw).toMatch(/^HTTP\/1\.1 405 /);
    expect(raw).toContain('"reason":"connect_not_supported"');
    expect(raw).toMatch(/\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n/);
    const logged = await s.waitForLog((l) => l.event === 'request_rejected' && l.route === 'payments' && l.reason === 'connect_not_supported');
    expect(logged).toMatchObject({ level: 'warn', method: 'CONNECT', peer: '127.0.0.1', detail: expect.stringContaining('payments') });
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'payments', status: 'connect_not_supported' })).toBe(1);
    // With unknownHosts: deny the host has no route, as a plain call to it has (passthrough would tunnel it).
    const unrouted = await rawExchange(s.outbound!, 'CONNECT elsewhere:443 HTTP/1.1\r\nHost: elsewhere:443\r\n\r\n');
    expect(unrouted).toMatch(/^HTTP\/1\.1 403 /);
    expect(unrouted).toContain('"reason":"no_route"');
    const refused = await s.waitForLog((l) => l.event === 'request_rejected' && l.route === 'none' && l.reason === 'no_route');
    expect(refused).toMatchObject({ level: 'warn', method: 'CONNECT', host: 'elsewhere:443', detail: 'no outbound route for host "elsewhere:443"' });
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'none', status: 'no_route' })).toBe(1);
    const noPort = await rawExchange(s.outbound!, 'CONNECT elsewhere HTTP/1.1\r\nHost: elsewhere\r\n\r\n');
    expect(noPort).toMatch(/^HTTP\/1\.1 400 /);
    await s.waitForLog((l) => l.event === 'request_rejected' && l.route === 'none' && l.reason === 'bad_request' && l.method === 'CONNECT');
  });

  it('counts and logs what Node\'s parser refuses before there is a request, under route "none", with the peer alone', async () => {
    const s = await sidecar(outboundConfig());
    const ex = await rawHttpExchange(s.outbound!, 'get /x HTTP/1.1\r\nHost: payments\r\n\r\n');
    expect(ex.responses.map((r) => [r.status, r.json().reason])).toEqual([[400, 'bad_request']]);
    const logged = await s.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'bad_request');
    expect(logged).toMatchObject({ level: 'warn', route: 'none', peer: '127.0.0.1', detail: 'malformed request (HPE_INVALID_METHOD)' });
    expect(logged.method).toBeUndefined();
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'none', status: 'bad_request' })).toBe(1);
    expect(app.seen).toHaveLength(0);
  });

  it('passthrough forwards unknown hosts without a token (and tunnels CONNECT to them)', async () => {
    const s = await sidecar(outboundConfig({ unknownHosts: 'passthrough' }));
    idp.resetCounts();
    const r = await send(s.outbound!, { target: `${app.url}/open`, host: 'ignored', headers: { authorization: 'Bearer app-own' } });
    expect(r.status).toBe(200);
    expect(app.seen[0]!.headers.authorization).toBe('Bearer app-own');
    expect(idp.counts.token).toBe(0);
    const tunnelled = await rawExchange(s.outbound!, `CONNECT ${app.hostPort} HTTP/1.1\r\nHost: ${app.hostPort}\r\n\r\nGET /through-tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(tunnelled).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
    expect(app.seen[1]!.url).toBe('/through-tunnel');
    expect(app.seen[1]!.headers.authorization).toBeUndefined();
    // A routed host is still never tunnelled.
    expect(await rawExchange(s.outbound!, 'CONNECT payments:443 HTTP/1.1\r\nHost: payments:443\r\n\r\n')).toMatch(/^HTTP\/1\.1 405 /);
  });

  it('a routed host spelt another way (127.1, 0x7f.0.0.1, a trailing dot) gets the token, also with passthrough (where it left without one)', async () => {
    const port = new URL(app.url).port;
    const s = await sidecar(outboundConfig({ unknownHosts: 'passthrough', routes: [{ host: app.hostPort, target: app.url, audience: 'payments' }] }));
    const calls = [
      await send(s.outbound!, { target: `http://127.1:${port}/a`, host: 'ignored' }),
      await send(s.outbound!, { target: '/b', host: `0x7f.0.0.1:${port}` }),
      await send(s.outbound!, { target: `http://127.0.0.1.:${port}/c` }),
    ];
    expect(calls.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(app.seen.map((r) => r.url)).toEqual(['/a', '/b', '/c']);
    for (const seen of app.seen) expect((await verifyWithIdp(idp, bearerOf(seen.headers.authorization)!, 'payments')).sub).toBe('orders');
    // X-Forwarded-Host is the name the app used; the metrics label is the route as configured.
    expect(app.seen.map((r) => r.headers['x-forwarded-host'])).toEqual([`127.1:${port}`, `0x7f.0.0.1:${port}`, `127.0.0.1.:${port}`]);
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: app.hostPort, status: '200' })).toBe(3);
  });

  it('refuses a CONNECT to a routed host spelt another way (127.1, IPv4-mapped IPv6, one number) with 405, even with passthrough: it is not tunnelled without the token', async () => {
    const port = new URL(app.url).port;
    const s = await sidecar(outboundConfig({ unknownHosts: 'passthrough', routes: [{ host: app.hostPort, target: app.url, audience: 'payments' }] }));
    for (const target of [`127.1:${port}`, `[::ffff:127.0.0.1]:${port}`, `2130706433:${port}`]) {
      const raw = await rawExchange(s.outbound!, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\nGET /through-tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(raw, target).toMatch(/^HTTP\/1\.1 405 /);
      expect(raw, target).toContain('"reason":"connect_not_supported"');
    }
    expect(app.seen).toHaveLength(0);
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: app.hostPort, status: 'connect_not_supported' })).toBe(3);
  });

  it('carries a WebSocket upgrade to the peer with the token attached and the target as Host, in both addressing modes', async () => {
    const ws = await startWsEcho();
    try {
      const s = await sidecar({ ...outboundConfig(), outbound: { ...outboundConfig().outbound, routes: [{ host: 'chat', target: ws.url, audience: 'payments' }] } });
      const handshake =
        'GET /room?id=1 HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer app-own\r\n\r\n';
      // One masked text frame "hi" (RFC 6455 §5.2), then a close frame.
      const mask = [1, 2, 3, 4];
      const frame = Buffer.from([0x81, 0x82, ...mask, 'h'.charCodeAt(0) ^ 1, 'i'.charCodeAt(0) ^ 2]);
      const raw = await rawExchange(s.outbound!, handshake, [frame, Buffer.from([0x88, 0x80, 0, 0, 0, 0])]);
      expect(raw).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
      expect(raw).toContain('echo:hi');
      expect(ws.seen[0]!.url).toBe('/room?id=1');
      expect((await verifyWithIdp(idp, bearerOf(ws.seen[0]!.headers.authorization)!, 'payments')).sub).toBe('orders');
      // The app's Host names the route, not the peer: the peer gets the target's authority (RFC 9112 §3.2 requires one), in both addressing modes.
      const peerHost = new URL(ws.url).host;
      expect(ws.seen[0]!.headers.host).toBe(peerHost);
      const absolute = await rawExchange(s.outbound!, handshake.replace('GET /room?id=1 ', 'GET http://chat/room?id=2 '), [frame, Buffer.from([0x88, 0x80, 0, 0, 0, 0])]);
      expect(absolute).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
      expect(ws.seen[1]!.url).toBe('/room?id=2');
      expect(ws.seen[1]!.headers.host).toBe(peerHost);
      expect(ws.seen[1]!.headers['x-forwarded-host']).toBe('chat');
      // An unrouted host is refused before any upstream or IdP traffic.
      const refused = await rawExchange(s.outbound!, handshake.replace('Host: chat', 'Host: elsewhere'));
      expect(refused).toMatch(/^HTTP\/1\.1 403 /);
      expect(refused).toContain('"reason":"no_route"');
      expect(ws.seen).toHaveLength(2);
    } finally {
      await ws.close();
    }
  });

  it('never tunnels an Upgrade to anything but WebSocket (h2c): served as a plain request (Node 22.21+) or refused 400 (older Node); a WebSocket one that is not a bodiless GET is 400 upgrade_not_supported and the peer gets no connection', async () => {
    const peer = await startUpgradingApp();
    try {
      const base = outboundConfig();
      const s = await sidecar({ ...base, outbound: { ...base.outbound, routes: [{ host: 'legacy', target: peer.url, audience: 'payments' }] } });
      const h2c = ['h2c', 'websocket, h2c'].map((upgrade) => `GET /x HTTP/1.1\r\nHost: legacy\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: ${upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`);
      if (SERVES_OTHER_UPGRADES_AS_REQUESTS) {
        // As `curl --http2` and Java's HttpClient send every plain-http call: it goes out as HTTP/1.1, with its token
        // and without the offer (the peer would have switched to whatever it was offered).
        for (const request of h2c) {
          const raw = await rawExchange(s.outbound!, request);
          expect(raw, request).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nplain$/);
          expect(peer.connections.at(-1), request).toMatch(/^GET \/x HTTP\/1\.1\r\n[\s\S]*\r\nauthorization: Bearer /i);
          expect(peer.connections.at(-1), request).not.toMatch(/^(upgrade|http2-settings):|^connection:.*upgrade/im);
        }
        peer.connections.length = 0;
      }
      const requests = [
        ...(SERVES_OTHER_UPGRADES_AS_REQUESTS ? [] : h2c),
        'POST /x HTTP/1.1\r\nHost: legacy\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n',
        'GET /x HTTP/1.1\r\nHost: legacy\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello',
      ];
      for (const request of requests) {
        const raw = await rawExchange(s.outbound!, request);
        expect(raw, request).toMatch(/^HTTP\/1\.1 400 /);
        expect(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)), request).toEqual({ error: expect.any(String), reason: 'upgrade_not_supported' });
      }
      expect(peer.connections).toEqual([]);
      expect(sample(await metricsText(s.admin), 'oidc_sidecar_outbound_requests_total', { route: 'legacy', status: 'upgrade_not_supported' })).toBe(requests.length);
      const refusals = () => s.logs.filter((l) => l.event === 'request_rejected' && l.route === 'legacy' && l.reason === 'upgrade_not_supported');
      await s.waitForLog(() => refusals().length === requests.length);
      expect(refusals().find((l) => l.method === 'GET')).toMatchObject({ level: 'warn', peer: '127.0.0.1', detail: expect.stringContaining('WebSocket') });
    } finally {
      await peer.close();
    }
  });

  it('reaches an https target through the route caFile, and refuses one it cannot verify (502)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'outbound-tls-'));
    const [cert, key] = [join(dir, 'peer.crt'), join(dir, 'peer.key')];
    // A self-signed certificate for 127.0.0.1 (node:crypto cannot sign X.509).
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=peer', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const seen: IncomingHttpHeaders[] = [];
    const peer = createHttpsServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
      seen.push(req.headers);
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain' }).end('tls ok');
    });
    await new Promise<void>((r) => peer.listen(0, '127.0.0.1', r));
    const target = `https://127.0.0.1:${(peer.address() as AddressInfo).port}`;
    try {
      const base = outboundConfig();
      const s = await sidecar({
        ...base,
        outbound: {
          ...base.outbound,
          routes: [
            { host: 'secure', target, caFile: cert, audience: 'payments' },
            { host: 'unverified', target, audience: 'payments' },
          ],
        },
      });
      const ok = await send(s.outbound!, { target: '/x', host: 'secure' });
      expect([ok.status, ok.text]).toEqual([200, 'tls ok']);
      expect((await verifyWithIdp(idp, bearerOf(seen[0]!.authorization)!, 'payments')).sub).toBe('orders');
      const bad = await send(s.outbound!, { target: '/x', host: 'unverified' });
      // Not a reset: the app was never reached, and the code says why.
      expect([bad.status, JSON.parse(bad.text)]).toEqual([502, { error: 'upstream TLS handshake failed (DEPTH_ZERO_SELF_SIGNED_CERT)', reason: 'upstream_connect_failed' }]);
      expect(await s.waitForLog((l) => l.event === 'upstream_error' && l.route === 'unverified')).toMatchObject({ reason: 'upstream_connect_failed', msg: 'upstream TLS handshake failed (DEPTH_ZERO_SELF_SIGNED_CERT)' });
      expect(seen).toHaveLength(1);
    } finally {
      peer.closeAllConnections();
      await new Promise<void>((r) => peer.close(() => r()));
    }
  });

  it('reads the route caFile once per load: deleting it changes nothing, a reload without it is refused while the old config serves, a reload picks up a rotated CA', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'outbound-ca-'));
    const [first, second] = [selfSignedCert('peer-first', dir), selfSignedCert('peer-second', dir)];
    const peer = createHttpsServer({ cert: readFileSync(first.cert), key: readFileSync(first.key) }, (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain' }).end('tls ok');
    });
    await new Promise<void>((r) => peer.listen(0, '127.0.0.1', r));
    const caFile = join(dir, 'ca.pem');
    copyFileSync(first.cert, caFile);
    try {
      const base = outboundConfig();
      const target = `https://127.0.0.1:${(peer.address() as AddressInfo).port}`;
      // Reloads by SIGHUP alone here: with watchConfig on, the CA file changes below would reload by themselves (next test).
      const s = await sidecar({
        ...base,
        lifecycle: { watchConfig: false },
        outbound: { ...base.outbound, routes: [{ host: 'secure', target, caFile, audience: 'payments' }] },
      });
      const call = async () => (await send(s.outbound!, { target: '/x', host: 'secure' })).status;
      expect(await call()).toBe(200);

      // The bundle was read at load: requests (and pools reopened for them) never look at the file again.
      rmSync(caFile);
      expect(await call()).toBe(200);

      // A reload reads it again: refused with the key path, and the old config keeps serving.
      s.signal('SIGHUP');
      const refused = await s.waitForLog((l) => l.event === 'config_reload_refused');
      expect(refused.errors).toEqual([`outbound.routes.0.caFile: cannot read ${caFile}: no such file (line 11)`]);
      expect(await call()).toBe(200);
      expect(sample(await metricsText(s.admin), 'oidc_sidecar_config_reloads_total', { result: 'invalid' })).toBe(1);

      // The peer moves to a certificate from another CA and the file follows: trusted from the next reload on.
      peer.setSecureContext({ cert: readFileSync(second.cert), key: readFileSync(second.key) });
      peer.closeAllConnections();
      copyFileSync(second.cert, caFile);
      expect(await call()).toBe(502);
      s.signal('SIGHUP');
      await s.waitForLog((l) => l.event === 'config_reloaded');
      expect(await call()).toBe(200);
    } finally {
      peer.closeAllConnections();
      await new Promise<void>((r) => peer.close(() => r()));
    }
  });

  it('with watchConfig on, a CA bundle rotated Kubernetes-style (a symlink swap, as for kube-root-ca.crt) reloads by itself', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'outbound-ca-watch-'));
    const [first, second] = [selfSignedCert('peer-first', dir), selfSignedCert('peer-second', dir)];
    const peer = createHttpsServer({ cert: readFileSync(first.cert), key: readFileSync(first.key) }, (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain' }).end('tls ok');
    });
    await new Promise<void>((r) => peer.listen(0, '127.0.0.1', r));
    // The layout of a projected volume: ca.crt -> ..data/ca.crt, ..data -> the current timestamped dir.
    const publish = (n: number, cert: string) => {
      mkdirSync(join(dir, `..v${n}`));
      copyFileSync(cert, join(dir, `..v${n}`, 'ca.crt'));
      symlinkSync(`..v${n}`, join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    };
    publish(1, first.cert);
    const caFile = join(dir, 'ca.crt');
    symlinkSync('..data/ca.crt', caFile);
    try {
      const base = outboundConfig();
      const target = `https://127.0.0.1:${(peer.address() as AddressInfo).port}`;
      const s = await sidecar({ ...base, lifecycle: { watchConfig: true }, outbound: { ...base.outbound, routes: [{ host: 'secure', target, caFile, audience: 'payments' }] } });
      const call = async () => (await send(s.outbound!, { target: '/x', host: 'secure' })).status;
      expect(await call()).toBe(200);

      // The peer moves to a certificate from another CA; the volume swaps in the new CA; the config file is untouched.
      peer.setSecureContext({ cert: readFileSync(second.cert), key: readFileSync(second.key) });
      peer.closeAllConnections();
      expect(await call()).toBe(502);
      publish(2, second.cert);
      const reloaded = await s.waitForLog((l) => l.event === 'config_reloaded');
      expect(reloaded.trigger).toBe('ca_file_changed');
      expect(await call()).toBe(200);
      expect(sample(await metricsText(s.admin), 'oidc_sidecar_config_reloads_total', { result: 'success' })).toBe(1);
    } finally {
      peer.closeAllConnections();
      await new Promise<void>((r) => peer.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('streams a 5 MiB upload byte-identical to the peer', async () => {
    const s = await sidecar(outboundConfig());
    const body = randomBytes(5 * 1024 * 1024);
    const r = await send(s.outbound!, { method: 'PUT', target: 'http://payments/blob', host: 'payments', body, headers: { 'content-type': 'application/octet-stream' } });
    expect(r.status).toBe(200);
    expect(app.seen[0]!.bodyBytes).toBe(body.length);
    expect(app.seen[0]!.bodySha256).toBe(createHash('sha256').update(body).digest('hex'));
  });

  it('without a token the call gets 503 token_unavailable with the OAuth error, goes nowhere, and is counted and logged', async () => {
    const wrong = 'wrong-secret-0xdeadbeef';
    const s = await sidecar(outboundConfig({}, { clientSecret: wrong }), { waitReady: false });
    const failed = await s.waitForLog((l) => l.event === 'token_fetch_failed');
    expect(failed).toMatchObject({ level: 'warn', audience: 'payments', oauthError: 'invalid_client', source: 'client_credentials' });
    const r = await send(s.outbound!, { target: 'http://payments/charge', host: 'payments', method: 'POST', body: 'x' });
    expect(r.status).toBe(503);
    expect(r.json()).toMatchObject({ reason: 'token_unavailable', oauth_error: 'invalid_client' });
    expect(r.json().error).toMatch(/invalid_client/);
    expect(app.seen).toHaveLength(0);
    const ready = await fetch(`${s.admin}/readyz`);
    expect(ready.status).toBe(503);
    // What is missing and why, so `curl /readyz` answers "why not ready?".
    expect(await ready.text()).toMatch(/^not ready\n- waiting for outbound: a token for audience payments \(.*invalid_client.*\)\n$/);
    expect(s.output()).not.toContain(wrong);
    const text = await metricsText(s.admin);
    expect(sample(text, 'oidc_sidecar_token_requests_total', { result: 'invalid_client' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'oidc_sidecar_outbound_requests_total', { route: 'payments', status: 'token_unavailable' })).toBe(1);
    const logged = await s.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'token_unavailable');
    expect(logged).toMatchObject({ level: 'warn', route: 'payments', method: 'POST', peer: '127.0.0.1', detail: expect.stringMatching(/invalid_client/) });
    expect(s.output()).not.toContain(wrong);
  });
});

describe('credentials written into a configured URL', () => {
  it('never reach a log line or the /readyz body: user info and query are left out of every URL an error quotes', async () => {
    const port = await closedPort();
    const s = await startSidecar(
      {
        service: 'orders',
        inbound: { target: 'http://127.0.0.1:9', audience: 'orders', issuers: [{ issuer: 'http://idp.invalid', jwksUri: `http://127.0.0.1:${port}/keys?key=SECRETKEY` }] },
        outbound: {
          tokenSource: { type: 'client_credentials', tokenEndpoint: `http://127.0.0.1:${port}/token?api_key=SECRETKEY&password=hunter2`, clientId: 'orders', clientSecret: 'orders-secret' },
          routes: [{ host: 'payments', target: 'http://127.0.0.1:9', audience: 'payments' }],
        },
      },
      { waitReady: false },
    );
    try {
      await s.waitForLog((l) => l.event === 'token_fetch_failed');
      await s.waitForLog((l) => l.event === 'jwks_fetch_failed');
      const ready = await (await fetch(`${s.admin}/readyz`)).text();
      expect(ready).toContain(`http://127.0.0.1:${port}/token?…`);
      expect(ready).toContain(`http://127.0.0.1:${port}/keys?…`);
      for (const text of [ready, s.output()]) {
        expect(text).not.toContain('hunter2');
        expect(text).not.toContain('SECRETKEY');
      }
    } finally {
      await s.stop();
    }
  });
});

describe('outbound lifecycle', () => {
  it('starts while the IdP is down, is not ready, and becomes ready by itself once the IdP is back', async () => {
    idp.setDown('503');
    try {
      const s = await sidecar(outboundConfig(), { waitReady: false });
      await s.waitForLog((l) => l.event === 'token_fetch_failed');
      expect((await fetch(`${s.admin}/readyz`)).status).toBe(503);
      const r = await send(s.outbound!, { target: '/x', host: 'payments' });
      expect(r.status).toBe(503);
      expect(r.json()).toMatchObject({ reason: 'token_unavailable', error: expect.stringMatching(/^token endpoint discovery failed: .*HTTP 503/) });
      idp.setDown(false);
      await s.waitReady();
      expect((await send(s.outbound!, { target: '/x', host: 'payments' })).status).toBe(200);
    } finally {
      idp.setDown(false);
    }
  });

  it('a config reload adds routes on the same listener, one that removes a route leaves no expiry series behind, and SIGTERM exits 0', async () => {
    const s = await sidecar(outboundConfig());
    const outbound = s.outbound!;
    const next = outboundConfig();
    next.outbound.routes = [...next.outbound.routes, { host: 'ledger', target: app.url, audience: 'ledger', scopes: ['pay'] }];
    s.rewriteConfig(next);
    await s.waitForLog((l) => l.event === 'config_reloaded');
    const r = await send(outbound, { target: '/entries', host: 'ledger' });
    expect(r.status).toBe(200);
    const ledgerToken = await verifyWithIdp(idp, bearerOf(app.seen.at(-1)!.headers.authorization)!, 'ledger');
    expect(ledgerToken.sub).toBe('orders');
    const expiry = async (audience: string) => sample(await metricsText(s.admin), 'oidc_sidecar_token_expiry_timestamp_seconds', { audience });
    expect(await expiry('ledger')).toBe(ledgerToken.exp);
    // Dropped again: a series kept at its last value would, once that time passed, fire an expiry alert for a route no one uses.
    s.rewriteConfig(outboundConfig());
    await expect.poll(() => s.logs.filter((l) => l.event === 'config_reloaded').length, { timeout: 10_000 }).toBe(2);
    await expect.poll(() => expiry('ledger'), { timeout: 5000 }).toBeUndefined();
    expect(await expiry('payments')).toBeGreaterThan(Date.now() / 1000);
    expect(await s.stop()).toBe(0);
  });
});

describe('outbound reload and the files its token sources read', () => {
  it('refuses a reload whose sources lack their secret or key files with every problem in one line, as at startup; the old config keeps serving', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'reload-secrets-'));
    const secretFile = join(dir, 'orders-secret');
    writeFileSync(secretFile, `${SECRET}\n`);
    const s = await sidecar({ ...outboundConfig({}, { clientSecret: undefined, clientSecretFile: secretFile }), lifecycle: { watchConfig: false } });
    const call = async () => (await send(s.outbound!, { target: '/x', host: 'payments' })).status;
    expect(await call()).toBe(200);

    // The next config adds a route whose own source names a key file that is missing, and the secret is gone too.
    const keyFile = join(dir, 'ledger-key.pem');
    const next = outboundConfig({}, { clientSecret: undefined, clientSecretFile: secretFile }) as Record<string, any>;
    next.outbound.routes.push({ host: 'ledger', target: app.url, audience: 'ledger', tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'orders', privateKeyFile: keyFile } });
    s.rewriteConfig({ ...next, lifecycle: { watchConfig: false } });
    rmSync(secretFile);
    s.signal('SIGHUP');
    const refused = await s.waitForLog((l) => l.event === 'config_reload_refused');
    expect(refused.errors).toEqual([
      `outbound.tokenSource.clientSecretFile: cannot read ${secretFile}: no such file (line 7)`,
      `outbound.routes.1.tokenSource.privateKeyFile: cannot read ${keyFile}: no such file (line 21)`,
    ]);
    expect(sample(await metricsText(s.admin), 'oidc_sidecar_config_reloads_total', { result: 'invalid' })).toBe(1);
    expect(s.logs.filter((l) => l.event === 'config_reload_failed')).toEqual([]);
    // The token read at start is still held: the old config keeps serving.
    expect(await call()).toBe(200);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('outbound token lifetime with short-lived tokens', () => {
  let shortIdp: TestIdp;
  beforeAll(async () => {
    shortIdp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: SECRET }], accessTokenTtlSeconds: 4 });
  });
  afterAll(() => shortIdp.close());
  const cfg = () => ({
    service: 'orders',
    outbound: {
      tokenSource: { type: 'client_credentials', tokenEndpoint: shortIdp.tokenEndpoint, clientId: 'orders', clientSecret: SECRET },
      routes: [{ host: 'payments', target: app.url, audience: 'payments' }],
    },
  });

  it('renews before expiry while calls keep succeeding', async () => {
    const s = await sidecar(cfg());
    const issued = () => s.logs.filter((l) => l.event === 'token_issued').length;
    const statuses: number[] = [];
    while (issued() < 3) {
      statuses.push((await send(s.outbound!, { target: '/tick', host: 'payments' })).status);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(statuses.every((st) => st === 200)).toBe(true);
    const tokens = [...new Set(app.seen.map((r) => bearerOf(r.headers.authorization)!))];
    expect(tokens.length).toBeGreaterThanOrEqual(2);
    const claims = await Promise.all(tokens.map((t) => verifyWithIdp(shortIdp, t, 'payments').catch(() => decodePayload(t))));
    // Each successor was issued before its predecessor expired: renewal ahead of expiry, no gap.
    for (let i = 1; i < claims.length; i++) expect(claims[i]!.iat!).toBeLessThan(claims[i - 1]!.exp!);
    const lines = s.logs.filter((l) => l.event === 'token_issued');
    for (const l of lines) expect(l).toMatchObject({ source: 'client_credentials', audience: 'payments', jti: expect.any(String), expiresAt: expect.any(String) });
  });

  it('keeps using the cached token while the IdP is down (what happens once it expires: fault-outbound)', async () => {
    const s = await sidecar(cfg());
    const before = (await send(s.outbound!, { target: '/a', host: 'payments' })).status;
    shortIdp.setDown('503');
    try {
      const failed = await s.waitForLog((l) => l.event === 'token_fetch_failed');
      expect(failed).toMatchObject({ keepingToken: true, oauthError: 'temporarily_unavailable' });
      const during = await send(s.outbound!, { target: '/b', host: 'payments' });
      expect([before, during.status]).toEqual([200, 200]);
      expect(app.seen.at(-1)!.headers.authorization).toBe(app.seen.at(-2)!.headers.authorization);
    } finally {
      shortIdp.setDown(false);
    }
  });
});

function decodePayload(token: string): { iat?: number; exp?: number } {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));
}

/**
 * Writes raw bytes to a listener and collects everything it answers until it
 * closes (or 10 s of silence). `after` chunks are written once the first answer bytes arrive.
 */
function rawExchange(listener: string, data: string, after: Buffer[] = []): Promise<string> {
  const url = new URL(listener);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(url.port), url.hostname);
    let out = '';
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on('data', (c: Buffer) => {
      out += c.toString('latin1');
      for (const chunk of after.splice(0)) socket.write(chunk);
    });
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
    socket.write(data);
  });
}
