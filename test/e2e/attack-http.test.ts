import { once } from 'node:events';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bearerRequest,
  expectContinueExchange,
  expectRefused,
  flushLogs,
  rawExchange,
  rawRequestBytes,
  startRecordingApp,
  SERVES_OTHER_UPGRADES_AS_REQUESTS,
  startUpgradingApp,
  tokenLeaks,
  type RecordingApp,
  type Refusal,
  type UpgradingApp,
} from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { tamperHeader } from '../support/tokens.js';
import { eventually, inboundSidecarConfig, metricsText, sample } from './inbound-support.js';

/**
 * HTTP-level attacks: duplicate credentials (CVE-2025-64527 class), request
 * smuggling and framing tricks, oversized and overlong header blocks. All
 * sent as raw bytes, since HTTP clients merge headers and fix framing. The
 * sidecar has a public route, so a request that slipped past the parser
 * would be forwarded: a smuggled request targets /admin, which only the
 * deployer may reach, and the app must never see it.
 */

let idp: TestIdp;
let app: RecordingApp;
let sidecar: SidecarProcess;
let orders: string;
let deployer: string;

const rules = [
  { match: { path: '/public/**' }, public: true },
  { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
  { match: { path: '/api/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
];

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 's1' }, { clientId: 'deployer', clientSecret: 's2' }] });
  app = await startRecordingApp();
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], rules },
  });
  [orders, deployer] = await Promise.all([idp.getToken('orders', 'orders'), idp.getToken('deployer', 'orders')]);
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), idp?.close()]);
});

const reject = (reason: string): Refusal => ({ status: 401, reason });
const badRequest: Refusal = { status: 400, reason: 'bad_request' };
const adminSeen = () => app.requests.filter((r) => r.url.includes('admin'));

describe('CVE-2025-64527 class: duplicate Authorization headers', () => {
  it('two credentials are malformed_token whatever their case, order or validity; never "the first one wins"', async () => {
    const cases: [string, [string, string][]][] = [
      ['two valid tokens', [['Authorization', `Bearer ${orders}`], ['Authorization', `Bearer ${orders}`]]],
      ['valid + another valid (different subject)', [['Authorization', `Bearer ${orders}`], ['authorization', `Bearer ${deployer}`]]],
      ['Basic then Bearer', [['authorization', 'Basic b3JkZXJzOnM='], ['Authorization', `Bearer ${deployer}`]]],
      ['Bearer then garbage', [['AUTHORIZATION', `Bearer ${deployer}`], ['aUtHoRiZaTiOn', 'x']]],
      ['empty then Bearer', [['Authorization', ''], ['Authorization', `Bearer ${deployer}`]]],
    ];
    for (const [label, headers] of cases) {
      const req = rawRequestBytes('/admin/users', [['Host', 'orders'], ...headers]);
      await expectRefused(sidecar, app, label, req, reject('malformed_token'), [orders, deployer]);
    }
  });

  it('two tokens folded into one header value are malformed_token', async () => {
    for (const value of [`Bearer ${orders}, Bearer ${deployer}`, `Bearer ${orders} ${deployer}`, `Bearer ${orders},${deployer}`]) {
      await expectRefused(sidecar, app, value.slice(0, 20), rawRequestBytes('/admin/users', [['Host', 'orders'], ['Authorization', value]]), reject('malformed_token'), [orders, deployer]);
    }
  });

  it('an Authorization header hidden past the header-count limit is refused with 431 (Node would drop it from req.headers)', async () => {
    const filler: [string, string][] = Array.from({ length: 100 }, (_, i) => [`x-filler-${i}`, 'a']);
    const req = rawRequestBytes('/admin/users', [['Host', 'orders'], ['Authorization', `Bearer ${orders}`], ...filler, ['Authorization', `Bearer ${deployer}`]]);
    await expectRefused(sidecar, app, 'past the count limit', req, { status: 431, reason: 'too_many_headers' }, [orders, deployer]);
  });

  it('with JWKS fetches failing: concurrent duplicate headers and unknown-kid tokens are refused, the process stays up, and serves again on recovery', async () => {
    const flaky = await startIdp();
    const s = await startSidecar({
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: flaky.issuer }], jwks: { cooldownSeconds: 1, retryMinSeconds: 0.2, retryMaxSeconds: 0.5 } },
    });
    try {
      const good = await flaky.getToken('orders', 'orders');
      flaky.setDown('reset');
      // Past the 1 s refetch cooldown, so the unknown kids below do try the JWKS and find it unreachable (within the
      // cooldown they would be answered from the last, successful attempt: 401 unknown_key).
      await new Promise((r) => setTimeout(r, 1100));
      const before = app.requests.length;
      const dup = rawRequestBytes('/api/x', [['Host', 'orders'], ['Authorization', `Bearer ${good}`], ['Authorization', `Bearer ${good}`]]);
      const unknownKid = (i: number) => bearerRequest(tamperHeader(good, { kid: `rotated-${i}` }));
      const results = await Promise.all([
        ...Array.from({ length: 50 }, () => rawExchange(s.inbound!, dup)),
        ...Array.from({ length: 50 }, (_, i) => rawExchange(s.inbound!, unknownKid(i))),
      ]);
      const outcomes = results.map((r) => `${r.responses[0]?.status} ${r.responses[0]?.json().reason}`);
      expect(new Set(outcomes.slice(0, 50))).toEqual(new Set(['401 malformed_token']));
      // Unknown kids try a refetch (one per cooldown, shared) and the IdP resets it: the issuer may have rotated to a
      // key that cannot be fetched, so 503 keys_unavailable rather than a 401 for a token that may be good; never a
      // crash or a pass.
      expect(new Set(outcomes.slice(50))).toEqual(new Set(['503 keys_unavailable']));
      expect(app.requests.length).toBe(before);
      expect(s.child.exitCode).toBeNull();
      expect((await fetch(`${s.admin}/healthz`)).status).toBe(200);

      // The IdP is back: the same process serves the real token.
      flaky.setDown(false);
      expect((await rawExchange(s.inbound!, bearerRequest(good))).responses[0]!.status).toBe(200);
      await flushLogs(s);
      expect(tokenLeaks(s.output(), [good])).toEqual([]);
    } finally {
      await s.stop();
      await flaky.close();
    }
  });

  it('with keys never loaded (IdP down since start): duplicates are malformed_token, a single token is 503 keys_unavailable', async () => {
    const down = await startIdp();
    down.setDown('reset');
    const s = await startSidecar(
      { service: 'orders', log: { level: 'info' }, lifecycle: { watchConfig: false }, inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: down.issuer }] } },
      { waitReady: false },
    );
    try {
      const token = await down.mint({ aud: 'orders' });
      const dup = rawRequestBytes('/api/x', [['Host', 'orders'], ['Authorization', `Bearer ${token}`], ['Authorization', `Bearer ${token}`]]);
      await expectRefused(s, app, 'dup, no keys', dup, reject('malformed_token'), [token]);
      const single = await expectRefused(s, app, 'single, no keys', bearerRequest(token), { status: 503, reason: 'keys_unavailable' }, [token]);
      expect(single.headers['www-authenticate']).toBeUndefined();
      expect(s.child.exitCode).toBeNull();
    } finally {
      await s.stop();
      await down.close();
    }
  });
});

describe('request smuggling: ambiguous framing is refused by the parser, nothing reaches the app', () => {
  const smuggled = 'GET /admin/users HTTP/1.1\r\nHost: orders\r\n\r\n';
  const chunkedBody = `0\r\n\r\n${smuggled}`;
  const variants: [string, string][] = [
    ['CL + TE', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: ${chunkedBody.length}\r\nTransfer-Encoding: chunked\r\n\r\n${chunkedBody}`],
    ['TE + CL', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${chunkedBody}`],
    ['TE: chunked, identity', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked, identity\r\n\r\n${chunkedBody}`],
    ['TE: identity (not chunked last)', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: identity\r\n\r\n${chunkedBody}`],
    ['TE: xchunked', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: xchunked\r\n\r\n${chunkedBody}`],
    ['space before colon', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding : chunked\r\n\r\n${chunkedBody}`],
    ['obs-fold TE', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding:\r\n chunked\r\n\r\n${chunkedBody}`],
    ['TE twice (chunked, then identity)', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n${chunkedBody}`],
    ['double Content-Length (different)', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`],
    ['double Content-Length (same)', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n${smuggled}`],
    ['Content-Length list', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 0, ${smuggled.length}\r\n\r\n${smuggled}`],
    ['Content-Length +0', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: +0\r\n\r\n${smuggled}`],
    ['Content-Length -1', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: -1\r\n\r\n${smuggled}`],
    ['Content-Length hex', `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 0x0\r\n\r\n${smuggled}`],
    ['chunk size overflow', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\n${smuggled}\r\n0\r\n\r\n`],
    ['chunk size with junk', `POST /public/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n${smuggled}`],
    ['NUL in a header value', `GET /public/x HTTP/1.1\r\nHost: orders\r\nX-A: a\u0000b\r\n\r\n${smuggled}`],
    ['CR inside a header value', `GET /public/x HTTP/1.1\r\nHost: orders\r\nX-A: a\rContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`],
    ['two Host headers', `GET /public/x HTTP/1.1\r\nHost: orders\r\nHost: admin\r\n\r\n`],
    // RFC 9112 §3.2: a Host that is not uri-host[:port] is 400; the app would take it for its own name (links, vhosts).
    ['Host with userinfo', `GET /public/x HTTP/1.1\r\nHost: evil.example@orders\r\n\r\n`],
    ['Host with a path', `GET /public/x HTTP/1.1\r\nHost: orders/admin\r\n\r\n`],
    ['Host with a space', `GET /public/x HTTP/1.1\r\nHost: orders evil.example\r\n\r\n`],
    ['Host as a list', `GET /public/x HTTP/1.1\r\nHost: orders, evil.example\r\n\r\n`],
    ['Host with a backslash', `GET /public/x HTTP/1.1\r\nHost: evil.example\\orders\r\n\r\n`],
    ['Host with two ports', `GET /public/x HTTP/1.1\r\nHost: orders:80:81\r\n\r\n`],
    ['Host with a letter in the port', `GET /public/x HTTP/1.1\r\nHost: orders:8o\r\n\r\n`],
    ['Host with a quote', `GET /public/x HTTP/1.1\r\nHost: orders"><script>\r\n\r\n`],
    ['lower-case method', `get /public/x HTTP/1.1\r\nHost: orders\r\n\r\n`],
  ];

  for (const [label, bytes] of variants) {
    it(`${label}: 400 bad_request, the app sees no request at all`, async () => {
      const before = app.requests.length;
      const ex = await rawExchange(sidecar.inbound!, bytes);
      expect(ex.responses.length, `${label}: ${JSON.stringify(ex.raw.slice(0, 300))}`).toBeGreaterThanOrEqual(1);
      expect(ex.responses[0]!.status, label).toBe(badRequest.status);
      expect(ex.responses[0]!.json()).toEqual({ error: expect.any(String), reason: badRequest.reason });
      // Nothing after the refusal: the connection is closed, so the smuggled request is never parsed.
      expect(ex.responses).toHaveLength(1);
      expect(ex.closedByServer).toBe(true);
      expect(app.requests.slice(before)).toEqual([]);
    });
  }

  it('a Host that is uri-host[:port] passes as sent, also an empty one (RFC 9110 §7.2), a bracketed IPv6 and a reg-name with sub-delims', async () => {
    const hosts = ['orders', 'ORDERS.svc.cluster.local:15006', '127.0.0.1:8080', '[::1]:15006', '[v1.fe80::a+en1]', 'orders:', 'a-b_c~d.e%41!$&\'()*+;=', ''];
    for (const host of hosts) {
      const before = app.requests.length;
      const ex = await rawExchange(sidecar.inbound!, `GET /public/host HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
      expect(ex.responses.map((r) => r.status), `${host}: ${JSON.stringify(ex.raw.slice(0, 200))}`).toEqual([200]);
      expect(app.requests.slice(before).map((r) => r.headers.host), host).toEqual([host]);
    }
  });

  it('HTTP/1.1 without Host: 400 bad_request (RFC 9112 §3.2), the app sees no request', async () => {
    const before = app.requests.length;
    const ex = await rawExchange(sidecar.inbound!, 'GET /public/x HTTP/1.1\r\n\r\n');
    // The sidecar's own refusal, JSON and counted, rather than Node's bare 400.
    expect(ex.responses.map((r) => r.status)).toEqual([400]);
    expect(ex.responses[0]!.json()).toEqual({ error: 'an HTTP/1.1 request must have a Host header', reason: 'bad_request' });
    expect(ex.closedByServer).toBe(true);
    expect(app.requests.slice(before)).toEqual([]);
  });

  it('CONNECT on the inbound listener is 405 connect_not_supported, and the app gets no connection', async () => {
    const [before, connectionsBefore] = [app.requests.length, app.connections];
    const authority = new URL(app.url).host;
    const ex = await rawExchange(sidecar.inbound!, `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n${smuggled}`);
    expect(ex.responses.map((r) => r.status)).toEqual([405]);
    expect(ex.responses[0]!.json().reason).toBe('connect_not_supported');
    // RFC 9110 §15.5.6: a 405 names the methods that are served.
    expect(ex.responses[0]!.headers.allow).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    expect(ex.closedByServer).toBe(true);
    expect(app.requests.slice(before)).toEqual([]);
    expect(app.connections).toBe(connectionsBefore);
    // Counted and logged like every other refusal.
    const logged = await sidecar.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'connect_not_supported');
    expect(logged).toMatchObject({ level: 'warn', method: 'CONNECT', path: authority, peer: '127.0.0.1', audience: 'orders' });
    expect(sample(await metricsText(sidecar.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'connect_not_supported' })).toBe(1);
  });

  it('valid framing is re-framed by the sidecar: a request hidden in a body or pipelined behind it is judged on its own', async () => {
    const before = app.requests.length;
    // A body that looks like a request is a body; the pipelined /admin request gets its own decision (no token: 401).
    const bodyLooksLikeRequest = `POST /public/x HTTP/1.1\r\nHost: orders\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`;
    const chunked = `POST /public/y HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
    const ex = await rawExchange(sidecar.inbound!, `${bodyLooksLikeRequest}${chunked}${smuggled.replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n')}`);
    expect(ex.responses.map((r) => r.status)).toEqual([200, 200, 401]);
    expect(ex.responses[2]!.json().reason).toBe('missing_token');
    // One request of a connection at a time: the second POST goes upstream once the first is answered, so the app
    // sees them in the order they were sent.
    expect(app.requests.slice(before).map((r) => `${r.method} ${r.url}`)).toEqual(['POST /public/x', 'POST /public/y']);
    expect(adminSeen()).toEqual([]);
  });

  it('a connection that pipelines thousands of requests the sidecar answers itself does not keep other connections waiting for all of them', async () => {
    // 2,000 token-less requests in one write: each is refused (401) by the sidecar itself, with no upstream to wait
    // for. Answered back to back in one event-loop turn, every other connection waited for the whole series.
    const pipelined = 2000;
    const flood = connect(Number(new URL(sidecar.inbound!).port), '127.0.0.1');
    const other = connect(Number(new URL(sidecar.inbound!).port), '127.0.0.1');
    await Promise.all([once(flood, 'connect'), once(other, 'connect')]);
    let floodAnswers = 0;
    let tail = '';
    flood.on('data', (d: Buffer) => {
      const text = tail + d.toString('latin1');
      floodAnswers += text.split('HTTP/1.1 401 ').length - 1;
      tail = text.slice(-16);
    });
    // The other request is sent once the flood's first answer is in: the series is then under way.
    const firstAnswer = once(flood, 'data');
    flood.write('GET /api/x HTTP/1.1\r\nHost: orders\r\n\r\n'.repeat(pipelined));
    await firstAnswer;
    other.write('GET /api/y HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n');
    await once(other, 'data');
    const answeredBefore = floodAnswers;
    other.destroy();
    // Its answer came while the flood's series went on, not after it.
    expect(answeredBefore).toBeLessThan(pipelined / 2);
    await eventually(() => floodAnswers === pipelined, 15_000, 'every pipelined request answered');
    flood.destroy();
  });

  it('a request with a body refused by the verifier does not get its body parsed as the next request', async () => {
    const before = app.requests.length;
    const ex = await rawExchange(
      sidecar.inbound!,
      `POST /admin/users HTTP/1.1\r\nHost: orders\r\nContent-Length: ${smuggled.length}\r\nConnection: keep-alive\r\n\r\n${smuggled}`,
    );
    expect(ex.responses.map((r) => r.status)).toEqual([401]);
    expect(ex.responses[0]!.headers.connection).toBe('close');
    expect(app.requests.slice(before)).toEqual([]);
  });
});

describe('Expect: 100-continue (RFC 9110 §10.1.1): the client is asked for its body only once the request is allowed', () => {
  // Node answers 100 Continue as soon as the head is parsed, before any handler runs. A caller with no token, a denied
  // one, or a request the listener refuses would then be invited to upload its whole body for nothing.
  const body = 'abc';
  const head = (path: string, headers: [string, string][]) => {
    let h = `POST ${path} HTTP/1.1\r\nHost: orders\r\n`;
    for (const [n, v] of headers) h += `${n}: ${v}\r\n`;
    return `${h}Expect: 100-continue\r\n\r\n`;
  };
  const length: [string, string] = ['Content-Length', String(body.length)];

  it('a refused request gets its refusal and no 100 Continue, so the body is never sent, and the app sees nothing', async () => {
    const cases: [string, string, Refusal][] = [
      ['no token', head('/api/orders', [length]), reject('missing_token')],
      ['a forged token', head('/api/orders', [length, ['Authorization', `Bearer ${tamperHeader(orders, { kid: 'nope' })}`]]), reject('unknown_key')],
      ['denied by the rules', head('/admin/users', [length, ['Authorization', `Bearer ${orders}`]]), { status: 403, reason: 'policy_denied' }],
      ['two Host headers', head('/public/x', [length, ['Host', 'admin']]), badRequest],
      ['a transfer coding other than chunked', head('/public/x', [['Transfer-Encoding', 'gzip, chunked']]), { status: 501, reason: 'transfer_coding_not_supported' }],
    ];
    for (const [label, bytes, want] of cases) {
      const before = app.requests.length;
      const ex = await expectContinueExchange(sidecar.inbound!, bytes, body);
      expect(ex.responses.map((r) => r.status), `${label}: ${JSON.stringify(ex.raw.slice(0, 200))}`).toEqual([want.status]);
      expect(ex.responses[0]!.json(), label).toEqual({ error: expect.any(String), reason: want.reason });
      expect(ex.bodySent, label).toBe(false);
      expect(ex.closedByServer, label).toBe(true);
      expect(app.requests.slice(before), label).toEqual([]);
    }
  });

  it('an allowed request gets 100 Continue, then its body reaches the app', async () => {
    for (const [path, headers] of [
      ['/public/upload', [length]],
      ['/api/orders', [length, ['Authorization', `Bearer ${orders}`]]],
      ['/api/chunked', [['Transfer-Encoding', 'chunked'], ['Authorization', `Bearer ${orders}`]]],
    ] as [string, [string, string][]][]) {
      const chunked = headers.some(([n]) => n === 'Transfer-Encoding');
      const ex = await expectContinueExchange(sidecar.inbound!, head(path, [...headers, ['Connection', 'close']]), chunked ? `3\r\n${body}\r\n0\r\n\r\n` : body);
      expect(ex.responses.map((r) => r.status), `${path}: ${JSON.stringify(ex.raw.slice(0, 200))}`).toEqual([100, 200]);
      expect(ex.bodySent, path).toBe(true);
      expect(ex.responses[1]!.json().url, path).toBe(path);
    }
  });
});

describe('Expect other than 100-continue (RFC 9110 §10.1.1): 417 in the sidecar JSON shape', () => {
  // Node answers these itself with a bare 417, no body and nothing counted or logged, and keeps the connection open
  // although the body may be on its way. The sidecar answers like any refusal of a malformed request.
  it('is 417 bad_request with the JSON body, counted, logged as request_rejected; the connection closes and the app sees nothing', async () => {
    const reason = { decision: 'reject', reason: 'bad_request' };
    const counted = async () => sample(await metricsText(sidecar.admin), 'oidc_sidecar_inbound_requests_total', reason) ?? 0;
    const countedBefore = await counted();
    const before = app.requests.length;
    const cases: [string, string][] = [
      ['/public/expect-upload', 'POST /public/expect-upload HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\nExpect: 200-ok\r\n\r\nabc'],
      ['/api/expect-token', `GET /api/expect-token?q=1 HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${orders}\r\nExpect: x-custom=1\r\n\r\n`],
    ];
    for (const [path, bytes] of cases) {
      // No Connection: close from the client: the sidecar closes it.
      const ex = await rawExchange(sidecar.inbound!, bytes);
      expect(ex.responses.map((r) => r.status), `${path}: ${JSON.stringify(ex.raw.slice(0, 200))}`).toEqual([417]);
      expect(ex.responses[0]!.json(), path).toEqual({ error: 'the only expectation supported is 100-continue', reason: 'bad_request' });
      expect(ex.responses[0]!.headers['content-type'], path).toBe('application/json');
      expect(ex.responses[0]!.headers.connection, path).toBe('close');
      expect(ex.closedByServer, path).toBe(true);
      const logged = await sidecar.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'bad_request' && l.path === path);
      expect(logged).toMatchObject({ level: 'warn', method: path.startsWith('/api') ? 'GET' : 'POST', peer: '127.0.0.1' });
    }
    expect(app.requests.slice(before)).toEqual([]);
    expect(await counted()).toBe(countedBefore + cases.length);
    expect(tokenLeaks(sidecar.output(), [orders, deployer])).toEqual([]);
  });

  it('the refusals of request heads the listener refuses itself are counted and logged as request_rejected too', async () => {
    const cases: [string, string, Refusal][] = [
      ['/public/two-hosts', 'GET /public/two-hosts HTTP/1.1\r\nHost: orders\r\nHost: admin\r\n\r\n', badRequest],
      ['/public/gzip', 'POST /public/gzip HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', { status: 501, reason: 'transfer_coding_not_supported' }],
      // A WebSocket handshake takes the upgrade path, with the same checks.
      ['/public/ws-two-hosts', 'GET /public/ws-two-hosts HTTP/1.1\r\nHost: orders\r\nHost: admin\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', badRequest],
    ];
    const before = app.requests.length;
    for (const [path, bytes, want] of cases) {
      const counted = async () => sample(await metricsText(sidecar.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: want.reason }) ?? 0;
      const countedBefore = await counted();
      const ex = await rawExchange(sidecar.inbound!, bytes);
      expect(ex.responses.map((r) => [r.status, r.json().reason]), path).toEqual([[want.status, want.reason]]);
      const logged = await sidecar.waitForLog((l) => l.event === 'request_rejected' && l.reason === want.reason && l.path === path);
      expect(logged).toMatchObject({ level: 'warn', peer: '127.0.0.1', audience: 'orders' });
      expect(await counted(), path).toBe(countedBefore + 1);
    }
    expect(app.requests.slice(before)).toEqual([]);
  });

  it('a request that also breaks a listener limit gets that refusal, as without the Expect', async () => {
    const ex = await rawExchange(sidecar.inbound!, 'GET /public/x HTTP/1.1\r\nHost: orders\r\nHost: admin\r\nExpect: 200-ok\r\n\r\n');
    expect(ex.responses.map((r) => [r.status, r.json().reason])).toEqual([[400, 'bad_request']]);
    expect(ex.closedByServer).toBe(true);
  });
});

describe('what Node\'s parser refuses before there is a request: answered, counted and logged with the peer alone', () => {
  it('a malformed request line, an oversize header block and a client too slow with its headers are each counted and logged; a connection that never sent a byte is answered but is no request', async () => {
    const s = await startSidecar(inboundSidecarConfig(app, [idp], { rules }, { limits: { headersTimeoutSeconds: 1 } }));
    try {
      const counted = async (reason: string) => sample(await metricsText(s.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason }) ?? 0;
      const before = app.requests.length;
      const cases: [string, string, number, string, string][] = [
        ['a lower-case method', 'get /public/x HTTP/1.1\r\nHost: orders\r\n\r\n', 400, 'bad_request', 'malformed request (HPE_INVALID_METHOD)'],
        ['a header block over maxHeaderBytes', `GET /public/x HTTP/1.1\r\nHost: orders\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large', 'the request header block is larger than limits.maxHeaderBytes'],
        ['half a request line, then silence', 'GET /public/slow HT', 408, 'request_timeout', 'the request was not complete within limits.headersTimeoutSeconds or limits.requestTimeoutSeconds'],
      ];
      for (const [label, bytes, status, reason, detail] of cases) {
        const countedBefore = await counted(reason);
        const ex = await rawExchange(s.inbound!, bytes);
        expect(ex.responses.map((r) => [r.status, r.json().reason]), label).toEqual([[status, reason]]);
        expect(ex.closedByServer, label).toBe(true);
        const logged = await s.waitForLog((l) => l.event === 'request_rejected' && l.reason === reason);
        // No request was parsed, so there is no method or path to report: the peer and what went wrong.
        expect(logged, label).toMatchObject({ level: 'warn', peer: '127.0.0.1', detail });
        expect(logged.path, label).toBeUndefined();
        expect(logged.method, label).toBeUndefined();
        expect(await counted(reason), label).toBe(countedBefore + 1);
      }

      // Opened ahead of need (a client's connection pool) and never used: Node answers 408 when the headers timeout
      // runs out, but nothing was asked, so nothing is counted or logged.
      const timeoutsBefore = await counted('request_timeout');
      const idle = await rawExchange(s.inbound!, '');
      expect(idle.responses.map((r) => r.status)).toEqual([408]);
      await flushLogs(s);
      expect(await counted('request_timeout')).toBe(timeoutsBefore);
      expect(s.logs.filter((l) => l.event === 'request_rejected' && l.reason === 'request_timeout')).toHaveLength(1);
      expect(app.requests.slice(before)).toEqual([]);
    } finally {
      await s.stop();
    }
  });
});

describe('h2c smuggling (Bishop Fox, 2020): only WebSocket upgrades are tunnelled', () => {
  // Behind a proxy that tunnels any Upgrade, a caller allowed on one path asks the app to switch to HTTP/2 (h2c) and
  // then sends requests for any path over the tunnel, which the sidecar never sees. The app here switches to
  // whatever it is offered, and answers whatever follows: it must never get a connection.
  let h2cApp: UpgradingApp;
  let front: SidecarProcess;
  beforeAll(async () => {
    h2cApp = await startUpgradingApp();
    front = await startSidecar(inboundSidecarConfig(h2cApp, [idp], { rules }));
  });
  afterAll(async () => {
    await front?.stop();
    await h2cApp?.close();
  });

  const smuggled = 'GET /admin/users HTTP/1.1\r\nHost: orders\r\n\r\n';
  const upgrade = (path: string, headers: [string, string][], token?: string) =>
    rawRequestBytes(path, [['Host', 'orders'], ...(token ? ([['Authorization', `Bearer ${token}`]] as [string, string][]) : []), ...headers]) + smuggled;
  const offers: [string, [string, string][]][] = [
    ['h2c with HTTP2-Settings (RFC 7540 §3.2)', [['Connection', 'Upgrade, HTTP2-Settings'], ['Upgrade', 'h2c'], ['HTTP2-Settings', 'AAMAAABkAARAAAAAAAIAAAAA']]],
    ['H2C in upper case', [['Connection', 'Upgrade'], ['Upgrade', 'H2C']]],
    ['websocket, h2c (the app picks from a list)', [['Connection', 'Upgrade'], ['Upgrade', 'websocket, h2c']]],
    ['h2c, websocket', [['Connection', 'Upgrade'], ['Upgrade', 'h2c, websocket']]],
    ['websocket and h2c on two Upgrade lines', [['Connection', 'Upgrade'], ['Upgrade', 'websocket'], ['Upgrade', 'h2c']]],
    ['TLS/1.0 (RFC 2817)', [['Connection', 'Upgrade'], ['Upgrade', 'TLS/1.0']]],
  ];

  it('every non-WebSocket Upgrade is served as the plain request it also is (Node 22.21+, 24.9+), or refused 400 upgrade_not_supported (older Node), on a public route and with an allowed token: the app never sees the offer, and what follows is judged as a request of its own', async () => {
    for (const [path, token] of [['/public/x', undefined], ['/api/orders', orders]] as const) {
      for (const [label, headers] of offers) {
        const what = `${label} on ${path}`;
        const before = h2cApp.connections.length;
        const ex = await rawExchange(front.inbound!, upgrade(path, headers, token));
        if (SERVES_OTHER_UPGRADES_AS_REQUESTS) {
          // The app answers a request that offers it nothing (it would have switched to what it was offered). Node
          // drops the bytes pipelined behind such a request, so the connection ends with the answer: they never
          // reach the app, and the client knows to send them again.
          expect(ex.responses.map((r) => [r.status, r.body]), `${what}: ${JSON.stringify(ex.raw.slice(0, 300))}`).toEqual([[200, 'plain']]);
          expect(ex.closedByServer, what).toBe(true);
          expect(h2cApp.connections.slice(before), what).toHaveLength(1);
          expect(h2cApp.connections.at(-1), what).not.toMatch(/^(upgrade|http2-settings):|^connection:.*upgrade/im);
          expect(h2cApp.connections.at(-1), what).not.toContain('/admin/users');
        } else {
          expect(ex.responses.map((r) => r.status), `${what}: ${JSON.stringify(ex.raw.slice(0, 200))}`).toEqual([400]);
          expect(ex.responses[0]!.json(), what).toEqual({ error: expect.any(String), reason: 'upgrade_not_supported' });
          expect(ex.closedByServer, what).toBe(true);
          expect(h2cApp.connections, what).toEqual([]);
        }
      }
    }
    const metrics = await metricsText(front.admin);
    if (!SERVES_OTHER_UPGRADES_AS_REQUESTS) {
      expect(sample(metrics, 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'upgrade_not_supported' })).toBe(2 * offers.length);
      const logged = await front.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'upgrade_not_supported' && l.path === '/api/orders');
      expect(logged).toMatchObject({ method: 'GET', peer: expect.any(String) });
    }
    await flushLogs(front);
    expect(tokenLeaks(front.output(), [orders])).toEqual([]);

    // The same app is reached by a WebSocket upgrade, in any letter case: what is refused is the protocol alone.
    const ws = await rawExchange(front.inbound!, upgrade('/public/ws', [['Connection', 'Upgrade'], ['Upgrade', 'WebSocket']]));
    expect(ws.raw).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(ws.raw).toContain(`switched:${smuggled}`);
    expect(h2cApp.connections.at(-1)).toMatch(/^GET \/public\/ws HTTP\/1\.1\r\n[\s\S]*\r\nupgrade: WebSocket\r\n/);
  });

  it('a WebSocket upgrade that is not a GET, or has a body, is 400 upgrade_not_supported: the body would reach the app as tunnel data', async () => {
    const before = h2cApp.connections.length;
    const ws: [string, string][] = [['Connection', 'Upgrade'], ['Upgrade', 'websocket']];
    const variants: [string, string][] = [
      ['POST', rawRequestBytes('/api/orders', [['Host', 'orders'], ['Authorization', `Bearer ${orders}`], ...ws, ['Content-Length', '0']], { method: 'POST' })],
      ['GET with a Content-Length body', rawRequestBytes('/api/orders', [['Host', 'orders'], ['Authorization', `Bearer ${orders}`], ...ws, ['Content-Length', String(smuggled.length)]], { body: smuggled })],
      ['GET with a chunked body', rawRequestBytes('/public/ws', [['Host', 'orders'], ...ws, ['Transfer-Encoding', 'chunked']], { body: `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n` })],
    ];
    for (const [label, bytes] of variants) {
      const ex = await rawExchange(front.inbound!, bytes);
      expect(ex.responses.map((r) => r.status), label).toEqual([400]);
      expect(ex.responses[0]!.json().reason, label).toBe('upgrade_not_supported');
      expect(ex.closedByServer, label).toBe(true);
    }
    expect(h2cApp.connections.slice(before)).toEqual([]);
    // Content-Length: 0 is no body.
    const empty = await rawExchange(front.inbound!, rawRequestBytes('/public/ws', [['Host', 'orders'], ...ws, ['Content-Length', '0']]));
    expect(empty.raw).toMatch(/^HTTP\/1\.1 101 /);
  });
});

describe('oversized header blocks', () => {
  it('a header block over limits.maxHeaderBytes is 431 headers_too_large; over maxHeaderCount is 431 too_many_headers', async () => {
    const before = app.requests.length;
    const big = await rawExchange(sidecar.inbound!, rawRequestBytes('/public/x', [['Host', 'orders'], ['X-Big', 'a'.repeat(17_000)]]));
    expect(big.responses[0]!.status).toBe(431);
    expect(big.responses[0]!.json().reason).toBe('headers_too_large');
    const many = await rawExchange(sidecar.inbound!, rawRequestBytes('/public/x', [['Host', 'orders'], ...Array.from({ length: 120 }, (_, i): [string, string] => [`x-${i}`, '1'])]));
    expect(many.responses[0]!.status).toBe(431);
    expect(many.responses[0]!.json().reason).toBe('too_many_headers');
    expect(app.requests.slice(before)).toEqual([]);
  });

  it('no token sent in this file reached the sidecar output', async () => {
    await flushLogs(sidecar);
    expect(tokenLeaks(sidecar.output(), [orders, deployer])).toEqual([]);
    expect(adminSeen()).toEqual([]);
  });
});
