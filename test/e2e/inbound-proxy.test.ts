import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { flushLogs, rawExchange, startUpgradingApp } from '../support/attacks.js';
import { accessTokenClaims, algNoneToken, tamperPayload } from '../support/tokens.js';
import { closedPort } from '../unit/proxy-harness.js';
import { call, inboundSidecarConfig, metricsText, rawRequest, sample } from './inbound-support.js';

/**
 * The happy path, end to end: a real OpenID provider issues client_credentials
 * JWT access tokens, the sidecar runs as users run it (the built CLI), and a
 * real app behind it records what it receives.
 */
describe('inbound: a verified call reaches the app with identity headers', () => {
  let idp: TestIdp;
  let app: UpstreamApp;
  let sidecar: SidecarProcess;

  beforeAll(async () => {
    idp = await startIdp({
      clients: [
        { clientId: 'orders', clientSecret: 'orders-secret' },
        { clientId: 'billing', clientSecret: 'billing-secret', extraClaims: { environment: 'prod', roles: ['reader', 'writer'] } },
      ],
    });
    app = await startUpstream();
    sidecar = await startSidecar(
      inboundSidecarConfig(app, [idp], {
        typ: 'at+jwt',
        forward: { claimHeaders: { 'x-peer-env': 'environment', 'x-peer-roles': 'roles' } },
        rules: [
          { match: { path: '/healthz', methods: ['GET'] }, public: true },
          { match: { path: '/**' }, allow: [{ sub: ['orders', 'billing'] }] },
        ],
      }),
    );
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
    await idp?.close();
  });

  it('accepts a token from the IdP; the app sees x-peer-* and no Authorization', async () => {
    const token = await idp.getToken('orders', 'orders');
    const res = await call(sidecar.inbound!, '/orders/42?expand=items', { token });
    expect(res.status).toBe(200);
    const seen = app.seen.at(-1)!;
    expect(seen.url).toBe('/orders/42?expand=items');
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers['x-peer-sub']).toBe('orders');
    expect(seen.headers['x-peer-iss']).toBe(idp.issuer);
    const claims = JSON.parse(Buffer.from(String(seen.headers['x-peer-claims']), 'base64url').toString('utf8'));
    expect(claims).toMatchObject({ iss: idp.issuer, sub: 'orders', aud: 'orders', client_id: 'orders' });
    expect(typeof claims.exp).toBe('number');
  });

  it('forwards configured claim headers (strings as-is, other values as JSON)', async () => {
    const token = await idp.getToken('billing', 'orders');
    expect((await call(sidecar.inbound!, '/x', { token })).status).toBe(200);
    const seen = app.seen.at(-1)!;
    expect(seen.headers['x-peer-sub']).toBe('billing');
    expect(seen.headers['x-peer-env']).toBe('prod');
    expect(seen.headers['x-peer-roles']).toBe('["reader","writer"]');
  });

  it('removes caller-supplied identity headers, also on public routes, so they cannot be spoofed', async () => {
    const token = await idp.getToken('orders', 'orders');
    const spoof = {
      'x-peer-sub': 'admin',
      'x-peer-iss': 'https://evil',
      'x-peer-claims': Buffer.from('{"sub":"admin"}').toString('base64url'),
      'x-peer-env': 'prod-spoofed',
    };
    expect((await call(sidecar.inbound!, '/x', { token, headers: spoof })).status).toBe(200);
    let seen = app.seen.at(-1)!;
    expect(seen.headers['x-peer-sub']).toBe('orders');
    expect(seen.headers['x-peer-iss']).toBe(idp.issuer);
    expect(seen.headers['x-peer-env']).toBeUndefined();
    expect(seen.rawHeaders.filter((h) => h.toLowerCase() === 'x-peer-sub')).toHaveLength(1);

    expect((await call(sidecar.inbound!, '/healthz', { headers: { ...spoof, authorization: 'Bearer whatever' } })).status).toBe(200);
    seen = app.seen.at(-1)!;
    expect(seen.url).toBe('/healthz');
    for (const h of ['x-peer-sub', 'x-peer-iss', 'x-peer-claims', 'x-peer-env', 'authorization']) expect(seen.headers[h], h).toBeUndefined();
  });

  it('removes spoofed identity headers in any letter case and when sent twice', async () => {
    const token = await idp.getToken('orders', 'orders');
    const res = await rawRequest(
      sidecar.inbound!,
      `GET /dup HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${token}\r\nX-PEER-SUB: admin\r\nx-Peer-Sub: root\r\nX-Peer-Claims: e30`,
    );
    expect(res.status).toBe(200);
    const seen = app.seen.at(-1)!;
    const subs = [];
    for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === 'x-peer-sub') subs.push(seen.rawHeaders[i + 1]);
    expect(subs).toEqual(['orders']);
    const claimLines = seen.rawHeaders.filter((_, i) => i % 2 === 1 && seen.rawHeaders[i - 1]!.toLowerCase() === 'x-peer-claims');
    expect(claimLines).toHaveLength(1);
    expect(JSON.parse(Buffer.from(claimLines[0]!, 'base64url').toString('utf8'))).toMatchObject({ sub: 'orders' });
  });

  it('removes identity headers spelt with _ or other punctuation for - (CGI-style apps read X_Peer_Sub, and lighttpd X.Peer.Sub, as HTTP_X_PEER_SUB), on public and protected routes', async () => {
    const token = await idp.getToken('orders', 'orders');
    const spoof = [
      ...['X_Peer_Sub', 'admin', 'x_peer_iss', 'https://evil', 'X-Peer_Claims', Buffer.from('{"sub":"admin"}').toString('base64url'), 'X_PEER_ENV', 'prod-spoofed'],
      ...['X.Peer.Env', 'prod-spoofed', 'x+peer+sub', 'admin', 'X~Peer~Iss', 'https://evil', "x!peer'claims", 'e30', 'X-Peer|Env', 'prod-spoofed'],
    ];
    // Every name a CGI-style app could read as an x-peer-* variable, other than the plain `-` spelling the sidecar sets.
    const underscored = (seen: { rawHeaders: string[] }) =>
      seen.rawHeaders.filter((h, i) => i % 2 === 0 && /^x-peer-/i.test(h.replace(/[^a-z0-9]/gi, '-')) && /[^a-z0-9-]/i.test(h));

    expect(await getWithRawHeaders(sidecar.inbound!, '/healthz', spoof)).toBe(200);
    let seen = app.seen.at(-1)!;
    expect(seen.url).toBe('/healthz');
    expect(underscored(seen)).toEqual([]);
    for (const h of ['x-peer-sub', 'x-peer-iss', 'x-peer-claims', 'x-peer-env']) expect(seen.headers[h], h).toBeUndefined();

    expect(await getWithRawHeaders(sidecar.inbound!, '/x', ['Authorization', `Bearer ${token}`, ...spoof])).toBe(200);
    seen = app.seen.at(-1)!;
    expect(seen.url).toBe('/x');
    expect(underscored(seen)).toEqual([]);
    expect(seen.headers['x-peer-sub']).toBe('orders');
    expect(seen.headers['x-peer-iss']).toBe(idp.issuer);
    expect(seen.headers['x-peer-env']).toBeUndefined();
  });

  it('removes X_Forwarded_For/-Proto/-Host spelt with _ (the same HTTP_X_FORWARDED_* to a CGI-style app); the sidecar appends to the - spelling', async () => {
    const token = await idp.getToken('orders', 'orders');
    const spoof = ['X_Forwarded_For', '10.0.0.1', 'x_forwarded_proto', 'https', 'X-Forwarded_Host', 'admin.internal', 'X.Forwarded.For', '10.0.0.2', 'x~forwarded~host', 'evil.internal', 'X-Forwarded-For', '192.0.2.7'];
    for (const [path, auth] of [['/healthz', []], ['/x', ['Authorization', `Bearer ${token}`]]] as const) {
      expect(await getWithRawHeaders(sidecar.inbound!, path, [...auth, ...spoof])).toBe(200);
      const seen = app.seen.at(-1)!;
      expect(seen.url).toBe(path);
      const names = seen.rawHeaders.filter((_, i) => i % 2 === 0);
      expect(names.filter((n) => /^x-forwarded-/i.test(n.replace(/[^a-z0-9]/gi, '-')) && /[^a-z0-9-]/i.test(n)), path).toEqual([]);
      expect(seen.headers['x-forwarded-for']).toBe('192.0.2.7, 127.0.0.1');
      expect(seen.headers['x-forwarded-proto']).toBe('http');
      expect(seen.headers['x-forwarded-host']).toBe(new URL(sidecar.inbound!).host);
    }
  });

  it('merges several X-Forwarded-* lines into one list ending in this hop, with no empty list element (RFC 9110 §5.6.1)', async () => {
    // An app that takes the first element as the client (or the original scheme) must not get "" from a blank line.
    const lines = [
      'X-Forwarded-For', '', 'x-forwarded-for', '192.0.2.7', 'X-FORWARDED-FOR', '198.51.100.1, ', 'X-Forwarded-For', ' , ',
      'X-Forwarded-Proto', '', 'X-Forwarded-Host', ',',
    ];
    expect(await getWithRawHeaders(sidecar.inbound!, '/healthz', lines)).toBe(200);
    const seen = app.seen.at(-1)!;
    expect(seen.headers['x-forwarded-for']).toBe('192.0.2.7, 198.51.100.1, 127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe(new URL(sidecar.inbound!).host);
    expect(seen.rawHeaders.filter((n, i) => i % 2 === 0 && /^x-forwarded-/i.test(n))).toHaveLength(3);
  });

  it("never passes Proxy (httpoxy) nor, with no Host to append, the caller's X-Forwarded-Host, whose last element an app trusts as the sidecar's", async () => {
    const token = await idp.getToken('orders', 'orders');
    const sends = [
      'GET /healthz HTTP/1.1\r\nHost:\r\nConnection: close\r\nProxy: http://evil.example:8080\r\nX-Forwarded-Host: evil.example\r\n\r\n',
      'GET /healthz HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\nProxy: http://evil.example:8080\r\n\r\n',
      `GET /x HTTP/1.1\r\nHost:\r\nConnection: close\r\nAuthorization: Bearer ${token}\r\nX-Forwarded-Host: evil.example\r\nPROXY: http://evil.example:8080\r\n\r\n`,
    ];
    for (const bytes of sends) {
      const before = app.seen.length;
      expect((await rawExchange(sidecar.inbound!, bytes)).responses.map((r) => r.status), bytes).toEqual([200]);
      expect(app.seen.length).toBe(before + 1);
      const seen = app.seen.at(-1)!;
      expect(seen.headers.proxy, bytes).toBeUndefined();
      expect(seen.headers['x-forwarded-host'], bytes).toBeUndefined();
    }
  });

  it('streams request bodies to the app unchanged', async () => {
    const token = await idp.getToken('orders', 'orders');
    const body = randomBytes(2 * 1024 * 1024);
    const res = await call(sidecar.inbound!, '/upload', { token, method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
    expect(res.status).toBe(200);
    expect(res.body.bodyBytes).toBe(body.length);
    expect(res.body.bodySha256).toBe(createHash('sha256').update(body).digest('hex'));
  });

  it('serves repeat calls of a hot caller from the verified-token cache', async () => {
    const token = await idp.getToken('orders', 'orders');
    const before = sample(await metricsText(sidecar.admin), 'oidc_sidecar_verify_cache_lookups_total', { result: 'hit' });
    for (let i = 0; i < 5; i++) expect((await call(sidecar.inbound!, '/hot', { token })).status).toBe(200);
    const after = sample(await metricsText(sidecar.admin), 'oidc_sidecar_verify_cache_lookups_total', { result: 'hit' });
    expect(after - before).toBe(4);
  });

  it('counts decisions and durations in /metrics', async () => {
    const text = await metricsText(sidecar.admin);
    expect(sample(text, 'oidc_sidecar_inbound_requests_total', { decision: 'allow', reason: 'ok' })).toBeGreaterThan(0);
    expect(sample(text, 'oidc_sidecar_inbound_requests_total', { decision: 'allow', reason: 'public' })).toBeGreaterThan(0);
    expect(sample(text, 'oidc_sidecar_request_duration_seconds_count', { direction: 'inbound' })).toBeGreaterThan(0);
    expect(sample(text, 'oidc_sidecar_jwks_fetches_total', { issuer: idp.issuer, result: 'success' })).toBeGreaterThanOrEqual(1);
  });

  it('gives each metric exactly the labels the contract names; the service name is on oidc_sidecar_info alone', async () => {
    const text = await metricsText(sidecar.admin);
    const labelNames = (name: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${name}{`))!;
      return [...line.slice(line.indexOf('{') + 1, line.lastIndexOf('}')).matchAll(/([a-z_]+)="/g)].map((m) => m[1]).sort();
    };
    expect(labelNames('oidc_sidecar_inbound_requests_total')).toEqual(['decision', 'reason']);
    expect(labelNames('oidc_sidecar_request_duration_seconds_count')).toEqual(['direction']);
    expect(labelNames('oidc_sidecar_request_duration_seconds_bucket')).toEqual(['direction', 'le']);
    expect(labelNames('oidc_sidecar_jwks_fetches_total')).toEqual(['issuer', 'result']);
    expect(text).toMatch(/^oidc_sidecar_inbound_requests_total\{decision="allow",reason="ok"\} \d+$/m);
    expect(text).toMatch(/^oidc_sidecar_info\{service="orders",version="\d+\.\d+\.\d+[^"]*"\} 1$/m);
    // Node's process metrics carry none either.
    expect(labelNames('nodejs_heap_space_size_total_bytes')).toEqual(['space']);
  });

  it('never logs the token, neither an allowed one nor one refused after it was parsed', async () => {
    const token = await idp.getToken('orders', 'orders');
    expect((await call(sidecar.inbound!, '/x', { token })).status).toBe(200);
    // Well-formed, so it is parsed and its claims audited (unverified) in a token_rejected line: the line a careless
    // change would put the token into.
    const tampered = tamperPayload(token, { sub: 'billing' });
    expect((await call(sidecar.inbound!, '/tampered', { token: tampered })).status).toBe(401);
    await flushLogs(sidecar);
    expect(sidecar.logs.find((l) => l.event === 'token_rejected' && l.path === '/tampered')).toMatchObject({ reason: 'bad_signature' });
    for (const t of [token, tampered]) {
      for (const segment of t.split('.')) expect(sidecar.output()).not.toContain(segment);
    }
  });
});

describe('inbound: forwarding options and upstream failures', () => {
  let idp: TestIdp;
  let app: UpstreamApp;

  beforeAll(async () => {
    idp = await startIdp();
    app = await startUpstream();
  });
  afterAll(async () => {
    await app?.close();
    await idp?.close();
  });

  it('keepToken passes the bearer token on; custom header names are honoured', async () => {
    const sidecar = await startSidecar(
      inboundSidecarConfig(app, [idp], {
        tokenHeader: 'x-service-token',
        forward: { keepToken: true, subjectHeader: 'x-caller', issuerHeader: 'x-caller-iss', claimsHeader: 'x-caller-claims' },
      }),
    );
    try {
      const token = await idp.getToken('orders', 'orders');
      const res = await call(sidecar.inbound!, '/k', { headers: { 'x-service-token': token, authorization: 'Bearer end-user-token' } });
      expect(res.status).toBe(200);
      let seen = app.seen.at(-1)!;
      expect(seen.headers['x-service-token']).toBe(token);
      // The app's own Authorization (an end-user token) is not ours to judge or remove.
      expect(seen.headers.authorization).toBe('Bearer end-user-token');
      expect(seen.headers['x-caller']).toBe('orders');
      expect(seen.headers['x-caller-iss']).toBe(idp.issuer);
      expect(JSON.parse(Buffer.from(String(seen.headers['x-caller-claims']), 'base64url').toString('utf8'))).toMatchObject({ sub: 'orders', iss: idp.issuer });
      expect(seen.headers['x-peer-sub']).toBeUndefined();

      // The kept token passes; a second one spelt with _ (the same HTTP_X_SERVICE_TOKEN to a CGI-style app) does not.
      expect(await getWithRawHeaders(sidecar.inbound!, '/k2', ['x-service-token', token, 'X_Service_Token', 'forged', 'x-service_token', 'forged', 'x.service.token', 'forged'])).toBe(200);
      seen = app.seen.at(-1)!;
      expect(seen.url).toBe('/k2');
      expect(seen.rawHeaders.filter((_, i) => i % 2 === 0 && /^x[^a-z0-9]service[^a-z0-9]token$/i.test(seen.rawHeaders[i]!))).toEqual(['x-service-token']);
      expect(seen.headers['x-service-token']).toBe(token);
    } finally {
      await sidecar.stop();
    }
  });

  it("forwardedHeaders: replace gives the app this hop's X-Forwarded-For/-Proto/-Host alone and none of the caller's Forwarded, X-Real-IP, X-Original-URL and the like, on public and protected routes", async () => {
    const sidecar = await startSidecar(
      inboundSidecarConfig(app, [idp], {
        forwardedHeaders: 'replace',
        rules: [
          { match: { path: '/pub' }, public: true },
          { match: { path: '/**' }, allow: [{ sub: 'orders' }] },
        ],
      }),
    );
    try {
      const token = await idp.getToken('orders', 'orders');
      // What a caller would send to make Express or Koa (trusting their proxy) read https, evil.example and its own
      // client address, or an older Symfony app route to /admin.
      const spoof = [
        'X-Forwarded-For', '203.0.113.9', 'X-Forwarded-Proto', 'https', 'X-Forwarded-Host', 'evil.example', 'X-Forwarded-Port', '443',
        'Forwarded', 'for=203.0.113.9;proto=https;host=evil.example', 'X-Real-IP', '203.0.113.9', 'X_Real_IP', '203.0.113.9',
        'True-Client-IP', '203.0.113.9', 'X-Original-URL', '/admin', 'X-Rewrite-URL', '/admin', 'X-Forwarded-Prefix', '/evil',
        'Client-IP', '203.0.113.9', 'X-Forwarded-Client-Cert', 'By=spiffe://evil;URI=spiffe://evil',
        'traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      ];
      for (const [path, auth] of [['/pub', []], ['/orders', ['Authorization', `Bearer ${token}`]]] as const) {
        expect(await getWithRawHeaders(sidecar.inbound!, path, [...auth, ...spoof]), path).toBe(200);
        const seen = app.seen.at(-1)!;
        expect(seen.url).toBe(path);
        const names = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
        expect(names.filter((n) => /forwarded|real.ip|client-ip|original-url|rewrite-url/.test(n)).sort(), path).toEqual(['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto']);
        expect(names, path).not.toContain('x-forwarded-client-cert');
        expect(seen.headers['x-forwarded-for'], path).toBe('127.0.0.1');
        expect(seen.headers['x-forwarded-proto'], path).toBe('http');
        expect(seen.headers['x-forwarded-host'], path).toBe(new URL(sidecar.inbound!).host);
        // End-to-end headers still pass untouched.
        expect(seen.headers.traceparent, path).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
      }
    } finally {
      await sidecar.stop();
    }
    // A WebSocket handshake leaves HTTP through the upgrade path, which drops the same headers.
    const wsApp = await startUpgradingApp();
    const wsSidecar = await startSidecar(inboundSidecarConfig(wsApp, [idp], { forwardedHeaders: 'replace' }));
    try {
      const token = await idp.getToken('orders', 'orders');
      const handshake =
        `GET /ws HTTP/1.1\r\nHost: ${new URL(wsSidecar.inbound!).host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\nX-Forwarded-Proto: https\r\nX_Real_IP: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\n\r\n`;
      expect((await rawExchange(wsSidecar.inbound!, handshake, { idleMs: 300 })).responses[0]!.status).toBe(101);
      const head = wsApp.connections[0]!;
      expect(head).toMatch(/^x-forwarded-proto: http$/im);
      expect(head).not.toMatch(/https|203\.0\.113\.9|^forwarded:|^x_real_ip:/im);
    } finally {
      await wsSidecar.stop();
      await wsApp.close();
    }
  });

  it('forwardedHeaders: replace refuses a kept token header it would remove', async () => {
    const config = inboundSidecarConfig(app, [idp], { forwardedHeaders: 'replace', tokenHeader: 'x-real-ip', forward: { keepToken: true } });
    const res = await runCli(['validate', '--skip-file-checks', '--config', writeConfig(config)]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('inbound.tokenHeader: "x-real-ip" is removed from every request with forwardedHeaders: replace');
  });

  it('keepToken never hands the app an unverified token: a public route removes the token header, forged or real', async () => {
    const sidecar = await startSidecar(
      inboundSidecarConfig(app, [idp], {
        forward: { keepToken: true },
        rules: [
          { match: { path: '/public/**' }, public: true },
          { match: { path: '/**' }, allow: [{ sub: 'orders' }] },
        ],
      }),
    );
    try {
      const real = await idp.getToken('orders', 'orders');
      // What an app that decodes the kept token (trusting the sidecar to have checked it) would take for `sub: admin`.
      const forged = algNoneToken(accessTokenClaims({ iss: idp.issuer, aud: 'orders', sub: 'admin' }));
      for (const token of [forged, tamperPayload(real, { sub: 'admin' }), real]) {
        const res = await call(sidecar.inbound!, '/public/page', { token });
        expect(res.status).toBe(200);
        const seen = app.seen.at(-1)!;
        expect(seen.url).toBe('/public/page');
        expect(seen.headers.authorization).toBeUndefined();
        expect(seen.headers['x-peer-sub']).toBeUndefined();
      }
      // A protected route still passes the token it verified.
      expect((await call(sidecar.inbound!, '/orders', { token: real })).status).toBe(200);
      expect(app.seen.at(-1)!.headers.authorization).toBe(`Bearer ${real}`);
    } finally {
      await sidecar.stop();
    }

    // The same for a WebSocket handshake to a public route, which is tunnelled rather than forwarded.
    const wsApp = await startUpgradingApp();
    const wsSidecar = await startSidecar(inboundSidecarConfig(wsApp, [idp], { forward: { keepToken: true }, rules: [{ match: { path: '/public/**' }, public: true }] }));
    try {
      const forged = algNoneToken(accessTokenClaims({ iss: idp.issuer, aud: 'orders', sub: 'admin' }));
      const handshake = `GET /public/ws HTTP/1.1\r\nHost: ${new URL(wsSidecar.inbound!).host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${forged}\r\n\r\n`;
      expect((await rawExchange(wsSidecar.inbound!, handshake, { idleMs: 300 })).responses[0]!.status).toBe(101);
      expect(wsApp.connections).toHaveLength(1);
      expect(wsApp.connections[0]).toMatch(/^GET \/public\/ws /);
      expect(wsApp.connections[0]).not.toMatch(/^authorization:/im);
    } finally {
      await wsSidecar.stop();
      await wsApp.close();
    }
  });

  it('answers 502 upstream_connect_failed when the app is down, and counts it', async () => {
    // Not a just-closed port of our own: a concurrent test's server can be handed that one (it was, once in CI).
    const port = await closedPort();
    const sidecar = await startSidecar(inboundSidecarConfig(app, [idp], { target: `http://127.0.0.1:${port}` }));
    try {
      const token = await idp.getToken('orders', 'orders');
      const res = await call(sidecar.inbound!, '/x', { token });
      expect(res.status).toBe(502);
      expect(res.body.reason).toBe('upstream_connect_failed');
      const text = await metricsText(sidecar.admin);
      expect(sample(text, 'oidc_sidecar_upstream_errors_total', { direction: 'inbound', reason: 'upstream_connect_failed' })).toBe(1);
    } finally {
      await sidecar.stop();
    }
  });
});

/** GET with an exact header list (names as written, `_` included) plus Host, which Node omits for a raw list; resolves the status. */
function getWithRawHeaders(base: string, path: string, rawHeaders: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { headers: ['Host', new URL(base).host, ...rawHeaders] }, (res) => {
      res.resume().on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject).end();
  });
}
