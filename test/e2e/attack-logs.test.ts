import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { send } from './outbound-support.js';

/**
 * What reaches the logs (and the answers built from the same words) when a caller or an IdP is hostile: no
 * credential of the sidecar's, no token a caller sent, and exactly one line per refusal.
 */
const dir = mkdtempSync(join(tmpdir(), 'attack-logs-e2e-'));
let idp: TestIdp;
let app: UpstreamApp;
const running: SidecarProcess[] = [];

beforeAll(async () => {
  idp = await startIdp();
  app = await startUpstream();
});
afterAll(async () => {
  await app.close();
  await idp.close();
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
});

/**
 * A token endpoint that refuses every request and quotes all of it back in `error_description`: the form (with
 * the client secret, the assertion or the subject token) and the Authorization header. Gateways and IdPs in debug
 * mode do this; the sidecar must not pass it on.
 */
async function startEchoingIdp(): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const form = Buffer.concat(chunks).toString('utf8');
      const description = `bad request ${req.method} ${req.url}: ${form} / ${decodeURIComponent(form)} / authorization ${req.headers.authorization ?? 'none'}`;
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'invalid_client', error_description: description }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

describe('credentials an IdP quotes back never reach a log line or the app', () => {
  it('client secret (basic and post), private_key_jwt assertion, assertion file and subject token are masked', async () => {
    const echo = await startEchoingIdp();
    try {
      const keyFile = join(dir, 'client-key.pem');
      writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }));
      const federated = await idp.getToken('orders', 'token-endpoint');
      const assertionFile = join(dir, 'assertion.jwt');
      writeFileSync(assertionFile, federated);
      const subject = await idp.mint({ aud: 'sts' });
      const subjectFile = join(dir, 'subject.jwt');
      writeFileSync(subjectFile, subject);
      const secrets = { basic: 'basic-S3cret:with/odd+chars', post: 'post-S3cret with space' };
      const source = (extra: Record<string, unknown>) => ({ type: 'client_credentials', tokenEndpoint: echo.url, clientId: 'orders', ...extra });
      const routes = [
        { host: 'basic', target: app.url, audience: 'basic', tokenSource: source({ clientSecret: secrets.basic }) },
        { host: 'post', target: app.url, audience: 'post', tokenSource: source({ clientSecret: secrets.post, authMethod: 'client_secret_post' }) },
        { host: 'pkjwt', target: app.url, audience: 'pkjwt', tokenSource: source({ privateKeyFile: keyFile }) },
        { host: 'federated', target: app.url, audience: 'federated', tokenSource: source({ clientAssertionFile: assertionFile }) },
        {
          host: 'exchange',
          target: app.url,
          audience: 'exchange',
          tokenSource: { type: 'token_exchange', tokenEndpoint: echo.url, clientId: 'orders', clientSecret: secrets.basic, subjectTokenFile: subjectFile },
        },
      ];
      const s = await startSidecar({ service: 'orders', log: { level: 'trace' }, outbound: { routes } }, { waitReady: false });
      running.push(s);
      const bodies: string[] = [];
      for (const { host } of routes) {
        const res = await send(s.outbound!, { target: `http://${host}/x`, host });
        expect(res.status, host).toBe(503);
        // Still says what the IdP said, with the quoted credentials masked.
        expect(res.json(), host).toMatchObject({ reason: 'token_unavailable', oauth_error: 'invalid_client' });
        expect(res.json().error, host).toContain('[redacted]');
        bodies.push(res.text);
      }
      await s.waitForLog((l) => l.event === 'request_rejected' && l.route === 'exchange');
      const failed = s.logs.filter((l) => l.event === 'token_fetch_failed');
      expect(new Set(failed.map((l) => l.audience))).toEqual(new Set(routes.map((r) => r.audience)));
      // `oidc-sidecar token` says the IdP's refusal in its one error line: masked the same way.
      const config = writeConfig({ service: 'orders', outbound: { routes } });
      for (const { audience } of routes) {
        const r = await runCli(['token', '--config', config, '--audience', audience]);
        expect([r.code, r.stdout], audience).toEqual([1, '']);
        expect(r.stderr, audience).toMatch(/^oidc-sidecar: .*\[redacted\][^\n]*\n$/);
        bodies.push(r.stderr);
      }
      const everything = `${s.output()}\n${bodies.join('\n')}`;
      const basicValue = Buffer.from(`orders:${new URLSearchParams({ v: secrets.basic }).toString().slice(2)}`).toString('base64');
      for (const leak of [secrets.basic, secrets.post, encodeURIComponent(secrets.post), basicValue, 'client_assertion=ey', 'subject_token=ey', 'eyJ']) {
        expect(everything, leak).not.toContain(leak);
      }
      for (const jwt of [federated, subject]) for (const part of jwt.split('.')) expect(everything).not.toContain(part.slice(0, 16));
    } finally {
      await echo.close();
    }
  });
});

describe('a credential written into the token endpoint URL', () => {
  it('is masked where the IdP quotes the request target: in the log, the app\'s 503, /readyz and `oidc-sidecar token`', async () => {
    const echo = await startEchoingIdp();
    try {
      const key = 'K3y-Sup3rSecretApiKey-42';
      const tokenSource = { type: 'client_credentials', tokenEndpoint: `${echo.url}?api_key=${key}&tenant=acme`, clientId: 'orders', clientSecret: 'client-S3cret' };
      const routes = [{ host: 'peer', target: app.url, audience: 'peer', tokenSource }];
      const s = await startSidecar({ service: 'orders', log: { level: 'trace' }, outbound: { routes } }, { waitReady: false });
      running.push(s);
      const res = await send(s.outbound!, { target: 'http://peer/x', host: 'peer' });
      expect(res.status).toBe(503);
      // The IdP's words are still there, with the target's query masked.
      expect(res.json().error).toContain('bad request POST /token?[redacted]');
      await s.waitForLog((l) => l.event === 'request_rejected' && l.route === 'peer');
      const readyz = await (await fetch(`${s.admin}/readyz`)).text();
      expect(readyz).toContain('not ready');
      const cli = await runCli(['token', '--config', writeConfig({ service: 'orders', outbound: { routes } }), '--audience', 'peer']);
      expect(cli.code).toBe(1);
      const everything = [s.output(), res.text, readyz, cli.stderr].join('\n');
      expect(everything).toContain('[redacted]');
      for (const leak of [key, 'api_key=K3y', 'Sup3rSecret']) expect(everything, leak).not.toContain(leak);
    } finally {
      await echo.close();
    }
  });
});

describe('a client secret of three characters or fewer', () => {
  it('is masked where the IdP quotes it, as a longer one is, and the letters of other words are left alone', async () => {
    const echo = await startEchoingIdp();
    try {
      // Weak, but still the secret: an IdP quoting the request back must not put it in a log line or the app's answer.
      const secrets = { post: 'Zq7', basic: 'k9', one: 'x' };
      const source = (extra: Record<string, unknown>) => ({ type: 'client_credentials', tokenEndpoint: echo.url, clientId: 'orders', ...extra });
      const routes = [
        { host: 'post', target: app.url, audience: 'post', tokenSource: source({ clientSecret: secrets.post, authMethod: 'client_secret_post' }) },
        { host: 'basic', target: app.url, audience: 'basic', tokenSource: source({ clientSecret: secrets.basic }) },
        { host: 'one', target: app.url, audience: 'one', tokenSource: source({ clientSecret: secrets.one, authMethod: 'client_secret_post' }) },
      ];
      const s = await startSidecar({ service: 'orders', log: { level: 'trace' }, outbound: { routes } }, { waitReady: false });
      running.push(s);
      const bodies: string[] = [];
      for (const { host } of routes) {
        const res = await send(s.outbound!, { target: `http://${host}/call`, host });
        expect(res.status, host).toBe(503);
        expect(res.json(), host).toMatchObject({ reason: 'token_unavailable', oauth_error: 'invalid_client' });
        bodies.push(res.text);
      }
      expect(JSON.parse(bodies[0]!).error).toContain('client_secret=[redacted]');
      // The one-letter secret is masked where it stands alone, not inside the words around it.
      expect(JSON.parse(bodies[2]!).error).toContain('client_secret=[redacted]');
      expect(JSON.parse(bodies[2]!).error).toContain('grant_type=client_credentials');
      const failed = s.logs.filter((l) => l.event === 'token_fetch_failed');
      expect(new Set(failed.map((l) => l.audience))).toEqual(new Set(routes.map((r) => r.audience)));
      const everything = `${s.output()}\n${bodies.join('\n')}`;
      for (const secret of Object.values(secrets)) {
        const standing = new RegExp(`.{0,40}(?<![A-Za-z0-9])${secret}(?![A-Za-z0-9]).{0,40}`, 'g');
        expect(everything.match(standing), secret).toBeNull();
      }
      expect(everything).not.toContain('orders:k9');
    } finally {
      await echo.close();
    }
  });
});

/** Writes `bytes` on a fresh connection (and ends the request, unless `end` is false); resolves with all the listener answered once it closes. */
function exchange(listener: string, bytes: string, end = true): Promise<string> {
  const url = new URL(listener);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(url.port), url.hostname);
    let answer = '';
    socket.on('data', (c: Buffer) => (answer += c.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve(answer));
    if (end) socket.end(bytes);
    else socket.write(bytes);
  });
}

/** The sum of a counter's series in the /metrics text. */
async function counted(s: SidecarProcess, metric: string): Promise<number> {
  const text = await (await fetch(`${s.admin}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${metric}{`))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

describe('one refused request is one log line and one count', () => {
  // The head is refused and answered at once with `connection: close`; the parser then fails on the same request's
  // framing or body. That failure used to be logged and counted as a second refusal nobody was answered for.
  const cases: Array<[string, 'inbound' | 'outbound', string, RegExp]> = [
    ['inbound: a transfer coding after chunked', 'inbound', 'GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n', / 400 /],
    ['inbound: no token, then a chunked body that does not parse', 'inbound', 'POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n', / 401 /],
    ['outbound: a transfer coding after chunked', 'outbound', 'GET http://payments/x HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: gzip\r\n\r\n', / 400 /],
  ];
  for (const [what, side, bytes, status] of cases) {
    it(what, async () => {
      const s = await startSidecar({
        service: 'orders',
        inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
        outbound: { tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] },
      });
      running.push(s);
      const metric = side === 'inbound' ? 'oidc_sidecar_inbound_requests_total' : 'oidc_sidecar_outbound_requests_total';
      const before = await counted(s, metric);
      const answer = await exchange(s[side]!, bytes);
      expect(answer.match(/^HTTP\/1\.1 \d{3} /gm), answer).toHaveLength(1);
      expect(answer).toMatch(status);
      // A marker request after it: once its line is there, every line of the refused request is too.
      await exchange(s[side]!, 'GET /marker HTTP/1.1\r\nHost: a\r\nExpect: marker\r\n\r\n');
      await s.waitForLog((l) => l.component === side && l.detail === 'the only expectation supported is 100-continue');
      const refusals = s.logs.filter((l) => l.component === side && ['request_rejected', 'token_rejected'].includes(l.event ?? '') && l.detail !== 'the only expectation supported is 100-continue');
      expect(refusals.map((l) => `${l.event}:${l.reason}:${l.detail}`)).toHaveLength(1);
      expect(await counted(s, metric)).toBe(before + 2);
    });
  }

  // The head passes and the request is decided (allowed, and counted so) before its body breaks: the 400 that
  // follows is that same request's answer, not a second request to count as a reject.
  it('inbound: an allowed request whose chunked body then does not parse', async () => {
    const s = await startSidecar({
      service: 'orders',
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
    });
    running.push(s);
    const token = await idp.mint({ aud: 'orders' });
    const before = await counted(s, 'oidc_sidecar_inbound_requests_total');
    const timedBefore = await counted(s, 'oidc_sidecar_request_duration_seconds_count');
    const answer = await exchange(s.inbound!, `POST /upload?k=v HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n`);
    expect(answer.match(/^HTTP\/1\.1 \d{3} /gm), answer).toHaveLength(1);
    expect(answer).toMatch(/ 400 /);
    await exchange(s.inbound!, 'GET /marker HTTP/1.1\r\nHost: a\r\nExpect: marker\r\n\r\n');
    await s.waitForLog((l) => l.component === 'inbound' && l.detail === 'the only expectation supported is 100-continue');
    const refusals = s.logs.filter((l) => l.component === 'inbound' && ['request_rejected', 'token_rejected'].includes(l.event ?? '') && l.detail !== 'the only expectation supported is 100-continue');
    // Still logged, naming the request (its head was parsed), without the query.
    expect(refusals.map((l) => `${l.event}:${l.reason}:${l.method}:${l.path}`)).toEqual(['request_rejected:bad_request:POST:/upload']);
    expect(await counted(s, 'oidc_sidecar_inbound_requests_total')).toBe(before + 2);
    // And timed once each (the duration histogram counts requests too): the broken one ends with its 400.
    expect(await counted(s, 'oidc_sidecar_request_duration_seconds_count')).toBe(timedBefore + 2);
    const text = await (await fetch(`${s.admin}/metrics`)).text();
    expect(text).toContain('oidc_sidecar_inbound_requests_total{decision="allow",reason="ok"} 1');
    expect(s.output()).not.toContain(token);
  });

  // The outbound side has no decision to count before the body: the 400 is the request's only count, and it belongs
  // to the route the request was sent to, not to route="none" (no route), where it read as a call to an unknown host.
  it('outbound: a routed request whose chunked body then does not parse', async () => {
    const s = await startSidecar({
      service: 'orders',
      outbound: { tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] },
    });
    running.push(s);
    const before = await counted(s, 'oidc_sidecar_outbound_requests_total');
    const answer = await exchange(s.outbound!, 'POST /upload?k=v HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n');
    expect(answer.match(/^HTTP\/1\.1 \d{3} /gm), answer).toHaveLength(1);
    expect(answer).toMatch(/ 400 /);
    const logged = await s.waitForLog((l) => l.component === 'outbound' && l.event === 'request_rejected' && l.reason === 'bad_request');
    expect(logged).toMatchObject({ route: 'payments', method: 'POST', path: '/upload' });
    expect(await counted(s, 'oidc_sidecar_outbound_requests_total')).toBe(before + 1);
    const text = await (await fetch(`${s.admin}/metrics`)).text();
    expect(text).toContain('oidc_sidecar_outbound_requests_total{route="payments",status="bad_request"} 1');
  });

  // The request waits for a token (the one held expired, its renewal is slow) when its body breaks: the listener's 400
  // is its answer and its one count. The renewal that then fails must not count and log it again as token_unavailable.
  it('outbound: a routed request whose chunked body breaks while it waits for a token that then cannot be had', { timeout: 30_000 }, async () => {
    let calls = 0;
    let failed!: () => void;
    const renewalFailed = new Promise<void>((resolve) => (failed = resolve));
    const tokenEndpoint: Server = createServer((req, res) => {
      req.resume();
      res.setHeader('content-type', 'application/json');
      // The first token lives four seconds; every renewal answers 500, five seconds later.
      if (++calls === 1) return void res.end(JSON.stringify({ access_token: 'opaque-token', token_type: 'Bearer', expires_in: 4 }));
      setTimeout(() => {
        res.statusCode = 500;
        res.end('{"error":"server_error"}');
        failed();
      }, 5000);
    });
    await new Promise<void>((resolve) => tokenEndpoint.listen(0, '127.0.0.1', resolve));
    try {
      const s = await startSidecar({
        service: 'orders',
        outbound: {
          tokenSource: { type: 'client_credentials', tokenEndpoint: `http://127.0.0.1:${(tokenEndpoint.address() as AddressInfo).port}/token`, clientId: 'orders', clientSecret: 'orders-secret' },
          routes: [{ host: 'payments', target: app.url, audience: 'payments' }],
        },
      });
      running.push(s);
      const issued = await s.waitForLog((l) => l.event === 'token_issued');
      // Past the token's expiry (the renewal, started at 50-60 % of its lifetime, is still waiting for its answer).
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, Date.parse(String(issued.expiresAt)) - Date.now()) + 100));
      const before = await counted(s, 'oidc_sidecar_outbound_requests_total');
      const answer = await exchange(s.outbound!, 'POST /upload HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n');
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      await renewalFailed;
      await s.waitForLog((l) => l.event === 'token_fetch_failed');
      await new Promise((resolve) => setTimeout(resolve, 200));
      const refusals = s.logs.filter((l) => l.component === 'outbound' && l.event === 'request_rejected');
      expect(refusals.map((l) => `${l.route}:${l.reason}`)).toEqual(['payments:bad_request']);
      expect(await counted(s, 'oidc_sidecar_outbound_requests_total')).toBe(before + 1);
    } finally {
      tokenEndpoint.close();
    }
  });
});

describe('a token a caller puts where a path or a host goes never reaches a log line', () => {
  it('inbound path and CONNECT authority, outbound Host and absolute-form host: logged as [redacted]', async () => {
    const s = await startSidecar({
      service: 'orders',
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
      outbound: { tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] },
    });
    running.push(s);
    const token = await idp.mint({ aud: 'orders' });
    const [header, payload] = token.split('.') as [string, string];
    // Magic links and signed URLs put tokens in paths; a host is whatever the caller wrote.
    const requests: Array<[string, string]> = [
      [s.inbound!, `GET /verify/${token} HTTP/1.1\r\nHost: a\r\n\r\n`],
      [s.inbound!, `GET /a/${header}.${payload}%00 HTTP/1.1\r\nHost: a\r\n\r\n`],
      // Spelt with an escape no client needs (%65 is "e"), in a target refused before it is normalised.
      [s.inbound!, `GET /cb/%65${header.slice(1)}.%65${payload.slice(1)}/%zz HTTP/1.1\r\nHost: a\r\n\r\n`],
      [s.inbound!, `CONNECT ${header}.${payload}:443 HTTP/1.1\r\nHost: ${header}.${payload}:443\r\n\r\n`],
      [s.outbound!, `GET /x HTTP/1.1\r\nHost: ${header}.${payload}\r\n\r\n`],
      [s.outbound!, `GET http://${header}.${payload}/x HTTP/1.1\r\nHost: ${header}.${payload}\r\n\r\n`],
    ];
    for (const [listener, bytes] of requests) expect(await exchange(listener, `${bytes.slice(0, -2)}Connection: close\r\n\r\n`)).toMatch(/^HTTP\/1\.1 4\d\d /);
    await s.waitForLog(() => s.logs.filter((l) => ['request_rejected', 'token_rejected'].includes(l.event ?? '')).length === requests.length);
    const refusals = s.logs.filter((l) => ['request_rejected', 'token_rejected'].includes(l.event ?? ''));
    // Each line still says what was refused and where the token was.
    expect(refusals.map((l) => l.reason)).toEqual(['missing_token', 'bad_path', 'bad_path', 'connect_not_supported', 'no_route', 'no_route']);
    expect(refusals.slice(0, 4).map((l) => l.path)).toEqual(['/verify/[redacted]', '/a/[redacted]%00', '/cb/[redacted]/%zz', '[redacted]:443']);
    // The outbound side names the host as routed, lower-cased: no longer a token (base64url is case-sensitive).
    for (const l of refusals.slice(4)) expect(l.host).toMatch(/^eyj/);
    for (const part of [header, payload]) {
      expect(s.output()).not.toContain(part.slice(0, 16));
      expect(s.output()).not.toContain(part.slice(1, 17));
    }
  });
});

describe('a host an app names is capped in every log line', () => {
  it('passthrough: the upstream_error target of a host as long as the header block allows is cut, as no_route and CONNECT lines are', async () => {
    const s = await startSidecar({ service: 'orders', outbound: { routes: [], unknownHosts: 'passthrough' } });
    running.push(s);
    const host = `${'a'.repeat(3000)}.invalid`;
    expect(await exchange(s.outbound!, `GET http://${host}/x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)).toMatch(/^HTTP\/1\.1 502 /);
    const line = await s.waitForLog((l) => l.event === 'upstream_error' && l.route === 'passthrough');
    expect(String(line.target).length).toBeLessThanOrEqual(300);
    expect(line.target).toMatch(/^http:\/\/a+…$/);
  });
});

describe('metric labels a token endpoint cannot multiply', () => {
  it('an OAuth error code the IdP invents per request is result="oauth_error"; a registered one is itself', async () => {
    let n = 0;
    const server: Server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        n += 1;
        const error = req.url === '/registered' ? 'invalid_client' : `err_${n}_${Date.now()}`;
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const routes = ['a', 'b', 'c', 'registered'].map((host) => ({
        host,
        target: app.url,
        audience: host,
        tokenSource: { type: 'client_credentials', tokenEndpoint: `${base}/${host}`, clientId: 'orders', clientSecret: 'orders-secret' },
      }));
      const s = await startSidecar({ service: 'orders', outbound: { routes } }, { waitReady: false });
      running.push(s);
      await s.waitForLog(() => new Set(s.logs.filter((l) => l.event === 'token_fetch_failed').map((l) => l.audience)).size === routes.length);
      const text = await (await fetch(`${s.admin}/metrics`)).text();
      const results = text.split('\n').filter((l) => l.startsWith('oidc_sidecar_token_requests_total{')).map((l) => /result="([^"]*)"/.exec(l)![1]);
      expect(new Set(results)).toEqual(new Set(['oauth_error', 'invalid_client']));
      // The log line still carries what the IdP said.
      const invented = s.logs.filter((l) => l.event === 'token_fetch_failed' && l.audience !== 'registered');
      expect(invented.every((l) => l.reason === 'oauth_error' && /^err_\d+_\d+$/.test(String(l.oauthError)))).toBe(true);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('an outbound refusal names the path it was for', () => {
  it('no_route and token_unavailable lines carry the path, without its query or userinfo', async () => {
    const s = await startSidecar(
      { service: 'orders', outbound: { tokenSource: { type: 'env', variable: 'NO_SUCH_TOKEN_VARIABLE' }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] } },
      { waitReady: false },
    );
    running.push(s);
    expect((await send(s.outbound!, { target: 'http://exfil.example/upload/batch?access_token=QUERYTOKEN', host: 'exfil.example' })).status).toBe(403);
    expect((await send(s.outbound!, { target: 'http://svc:pw@exfil.example/upload/batch', host: 'exfil.example' })).status).toBe(400);
    expect((await send(s.outbound!, { target: '/charge/42?card=QUERYCARD', host: 'payments' })).status).toBe(503);
    await s.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'token_unavailable');
    const lines = s.logs.filter((l) => l.event === 'request_rejected');
    expect(lines.map((l) => [l.reason, l.path])).toEqual([
      ['no_route', 'http://exfil.example/upload/batch'],
      ['bad_request', 'http://exfil.example/upload/batch'],
      ['token_unavailable', '/charge/42'],
    ]);
    expect(s.output()).not.toMatch(/QUERYTOKEN|QUERYCARD|svc:pw/);
  });
});

describe('a request the listener refuses is timed as long as it took', () => {
  const stall = (listener: string, bytes: string) => exchange(listener, bytes, false);

  it('inbound: an allowed request whose body stalls is timed from its start to its 408; one whose head never came whole is counted, not timed', { timeout: 30_000 }, async () => {
    const s = await startSidecar({
      service: 'orders',
      limits: { headersTimeoutSeconds: 1, requestTimeoutSeconds: 2 },
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
    });
    running.push(s);
    const token = await idp.mint({ aud: 'orders' });
    const timed = () => counted(s, 'oidc_sidecar_request_duration_seconds_count');
    const seconds = () => counted(s, 'oidc_sidecar_request_duration_seconds_sum');
    const [countBefore, sumBefore] = [await timed(), await seconds()];
    const stalled = await stall(s.inbound!, `POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${token}\r\nContent-Length: 100\r\n\r\n0123456789`);
    expect(stalled).toMatch(/^HTTP\/1\.1 408 /);
    expect(await timed()).toBe(countBefore + 1);
    // At least the two seconds it stalled for (it used to read as a few microseconds).
    expect((await seconds()) - sumBefore).toBeGreaterThanOrEqual(1.9);

    const requestsBefore = await counted(s, 'oidc_sidecar_inbound_requests_total');
    const slowloris = await stall(s.inbound!, 'GET /x HTTP/1.1\r\nHost: a\r\n');
    expect(slowloris).toMatch(/^HTTP\/1\.1 408 /);
    expect(await counted(s, 'oidc_sidecar_inbound_requests_total')).toBe(requestsBefore + 1);
    expect(await timed()).toBe(countBefore + 1);
    expect(s.output()).not.toContain(token);
  });

  it('outbound: an allowed call whose body stalls is timed from its start to its 408', { timeout: 30_000 }, async () => {
    writeFileSync(join(dir, 'payments-token'), await idp.mint({ aud: 'payments' }));
    const s = await startSidecar({
      service: 'orders',
      limits: { headersTimeoutSeconds: 1, requestTimeoutSeconds: 2 },
      outbound: { tokenSource: { type: 'file', path: join(dir, 'payments-token') }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] },
    });
    running.push(s);
    const timed = () => counted(s, 'oidc_sidecar_request_duration_seconds_count');
    const seconds = () => counted(s, 'oidc_sidecar_request_duration_seconds_sum');
    const [countBefore, sumBefore] = [await timed(), await seconds()];
    const stalled = await stall(s.outbound!, 'POST /upload HTTP/1.1\r\nHost: payments\r\nContent-Length: 100\r\n\r\n0123456789');
    expect(stalled).toMatch(/^HTTP\/1\.1 408 /);
    expect(await timed()).toBe(countBefore + 1);
    expect((await seconds()) - sumBefore).toBeGreaterThanOrEqual(1.9);
  });
});
