import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listenTracked, rawExchange, rawRequestBytes, startFaultyFront, startRecordingApp, tokenLeaks, type FrontMode, type RecordingApp } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { b64url, epochSeconds } from '../support/tokens.js';

/**
 * Faults on the outbound side, through the CLI: the IdP token endpoint
 * failing every way it can while calls keep coming, and a token file rotated
 * the way the kubelet does it, with bad content in between. What may be lost:
 * calls made while no valid token exists get 503; nothing is ever sent to
 * the peer without a token or with a token the source did not vouch for.
 */

const TTL = 4;
let idp: TestIdp;

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 'orders-secret' }], accessTokenTtlSeconds: TTL });
});
afterAll(() => idp?.close());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const jtiOf = (token: string | undefined) => (token ? (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { jti?: string }).jti : undefined);
const bearerOf = (v: unknown) => (typeof v === 'string' ? /^Bearer (.+)$/.exec(v)?.[1] : undefined);

interface Call {
  status: number;
  reason?: string;
  token?: string;
}

/** One call through the outbound listener to the `payments` route; `token` is what the app received, if it received the call. */
async function call(s: SidecarProcess, app: RecordingApp): Promise<Call> {
  const before = app.requests.length;
  const res = (await rawExchange(s.outbound!, rawRequestBytes('/charge', [['Host', 'payments']], { method: 'POST', body: '' }))).responses[0]!;
  const seen = app.requests.slice(before);
  if (res.status !== 200) {
    // Refused calls go nowhere.
    expect(seen).toEqual([]);
    return { status: res.status, reason: res.json().reason };
  }
  expect(seen).toHaveLength(1);
  const token = bearerOf(seen[0]!.headers.authorization);
  return { status: 200, ...(token ? { token } : {}) };
}

describe.concurrent('token endpoint failing while calls keep coming', () => {
  // What each fault is logged as: its own failure, never a timeout, except for the endpoint that never answers.
  const faults: Record<Exclude<FrontMode, 'pass' | 'hold'>, { reason: string; error: RegExp }> = {
    '503': { reason: 'temporarily_unavailable', error: /HTTP 503/ },
    reset: { reason: 'idp_unreachable', error: /other side closed|socket hang up|ECONNRESET/ },
    hang: { reason: 'idp_unreachable', error: /timed out/ },
    'truncated-json': { reason: 'idp_bad_response', error: /not JSON/ },
    html: { reason: 'idp_bad_response', error: /not JSON/ },
    huge: { reason: 'idp_bad_response', error: /larger than/ },
    'no-token': { reason: 'error', error: /: no token$/ },
    expired: { reason: 'error', error: /expired/ },
  };
  for (const [mode, fault] of Object.entries(faults) as [FrontMode, (typeof faults)['hang']][]) {
    it(`(${mode}): keeps the current token, one IdP request per backoff step, 503 once it expires, recovers; lost: no call sent without a valid token`, async () => {
      const front = await startFaultyFront(idp.issuer);
      const app = await startRecordingApp();
      const s = await startSidecar({
        service: 'orders',
        log: { level: 'info' },
        lifecycle: { watchConfig: false },
        outbound: {
          tokenSource: { type: 'client_credentials', tokenEndpoint: `${front.url}/token`, clientId: 'orders', clientSecret: 'orders-secret' },
          // The request timeout is how a hanging endpoint fails, so there it is short: renewal starts at most 0.8 s
          // before the token expires, and its failures must come within the calls below. Every other fault fails
          // the request by itself; a short timeout would only fail requests the front passes to the IdP, which on
          // a busy machine can take longer than a second, and those failures are not the fault's.
          tokenRequestTimeoutSeconds: mode === 'hang' ? 1 : 60,
          routes: [{ host: 'payments', target: app.url, audience: 'payments' }],
        },
      });
      try {
        const first = await call(s, app);
        expect(first.status).toBe(200);
        // When the sidecar holds the token until: the earlier of the JWT's exp and expires_in counted from when it
        // sent the request, which on a busy machine (an IdP taking over a second to answer) is before exp.
        const firstIssued = await s.waitForLog((l) => l.event === 'token_issued' && l.jti === jtiOf(first.token));
        const firstExp = Date.parse(String(firstIssued.expiresAt));
        expect(firstExp).toBeGreaterThan(Date.now());
        expect(firstExp).toBeLessThanOrEqual((JSON.parse(Buffer.from(first.token!.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp * 1000);

        // Failures before this point (a token request to the IdP that timed out while the sidecar started) are not the fault's.
        const logsBefore = s.logs.length;
        front.mode = mode;
        const calls: (Call & { at: number })[] = [];
        // Call through the renewal window and past the expiry of the token held.
        // Each call is timed when it is sent: the token is chosen then, and on a busy machine a call sent just before
        // the expiry can come back a few hundred ms after it, rightly with the token.
        while (Date.now() < firstExp + 1500) {
          const at = Date.now();
          calls.push({ ...(await call(s, app)), at });
          await sleep(100);
        }
        const failed = s.logs.slice(logsBefore).filter((l) => l.event === 'token_fetch_failed');
        front.mode = 'pass';
        let recovered: Call;
        for (let i = 0; ; i++) {
          recovered = await call(s, app);
          if (recovered.status === 200) break;
          expect(i, 'recovered within the no-token retry ceiling').toBeLessThan(150);
          await sleep(100);
        }

        // While the token was valid, every call carried it; after it expired, 503 token_unavailable and nothing sent.
        for (const c of calls) {
          if (c.at < firstExp - 200) expect(c, 'valid token still held').toMatchObject({ status: 200, token: first.token });
          if (c.at > firstExp + 200) expect(c).toEqual({ status: 503, reason: 'token_unavailable', at: c.at });
        }
        expect(calls.some((c) => c.status === 503)).toBe(true);
        // Backoff, not a storm: each IdP request in the fault is one logged failure, however many calls waited.
        expect(failed.length).toBeGreaterThanOrEqual(1);
        expect(front.counts[mode]).toBeGreaterThanOrEqual(failed.length);
        expect(front.counts[mode]!).toBeLessThanOrEqual(failed.length + 1);
        expect(calls.length).toBeGreaterThan(3 * front.counts[mode]!);
        expect(failed[0]).toMatchObject({ keepingToken: true, failures: 1 });
        expect(failed.map((l) => l.failures)).toEqual(failed.map((_, i) => i + 1));
        // Each failure is the fault's own outcome.
        for (const l of failed) expect({ reason: l.reason, error: String(l.error) }).toEqual({ reason: fault.reason, error: expect.stringMatching(fault.error) });
        // After recovery: a new token from the IdP.
        expect(jtiOf(recovered!.token)).not.toBe(jtiOf(first.token));
        // The log line is written asynchronously and may reach us after the call it preceded did.
        await s.waitForLog((l) => l.event === 'token_issued' && l.jti === jtiOf(recovered!.token));
        const issued = new Set(s.logs.filter((l) => l.event === 'token_issued').map((l) => l.jti));
        for (const r of app.requests) expect(issued.has(jtiOf(bearerOf(r.headers.authorization)))).toBe(true);
        expect(tokenLeaks(s.output(), [first.token!, recovered!.token!])).toEqual([]);
      } finally {
        await s.stop();
        await Promise.all([front.close(), app.close()]);
      }
    });
  }
});

describe('token file rotated the way the kubelet does it (..data symlink swap)', () => {
  it('follows each swap, keeps the last good token through garbage, a torn write, an expired token and a missing file; lost: no call sent with a token that was not good', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kubelet-token-'));
    let generation = 0;
    /** Writes `content` into a new timestamped directory and swaps ..data to it atomically (rename over the symlink). */
    const publish = (content: string | null) => {
      const gen = `..2026_01_01_00_00_0${generation++}.000000001`;
      mkdirSync(join(dir, gen));
      if (content !== null) writeFileSync(join(dir, gen, 'token'), content);
      symlinkSync(gen, join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    };
    const mint = (jti: string, lifetime: number) => idp.mint({ aud: 'payments', sub: 'orders', jti, iat: epochSeconds(), exp: epochSeconds() + lifetime });
    // The kubelet's link, dangling until the first token is published.
    symlinkSync('..data/token', join(dir, 'token'));

    const app = await startRecordingApp();
    const s = await startSidecar({
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      outbound: { tokenSource: { type: 'file', path: join(dir, 'token') }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] },
    }, { waitReady: false });
    const bad: string[] = [];
    try {
      const failures = () => s.logs.filter((l) => l.event === 'token_fetch_failed').length;
      // The short-lived first token is minted once the sidecar runs and has found no file, and read at its next try
      // (about a second later): its lifetime is not spent on starting a process, which on a busy machine can take
      // longer than the token lives.
      await s.waitForLog(() => failures() > 0, 15_000);
      const good1 = await mint('good-1', 6);
      publish(good1);
      await s.waitReady();
      const fromStartup = s.logs.length;
      expect(await call(s, app)).toEqual({ status: 200, token: good1 });
      const expired = await mint('expired', -30);
      const steps: [string, string | null][] = [
        ['garbage', 'not a token at all\n'],
        ['torn write', good1.slice(0, good1.indexOf('.') + 10)],
        ['expired token', expired],
        ['missing file', null],
      ];
      const calls: Call[] = [];
      for (const [label, content] of steps) {
        if (content) bad.push(content);
        const before = failures();
        publish(content);
        // The next renewal attempt reads the new file and refuses it; calls meanwhile keep the last good token (or 503 once it expired).
        await s.waitForLog(() => failures() > before, 15_000).catch(() => {
          throw new Error(`no failed read after "${label}"`);
        });
        calls.push(await call(s, app));
      }
      const good2 = await mint('good-2', 300);
      publish(good2);
      await s.waitForLog((l) => l.event === 'token_issued' && l.jti === 'good-2', 15_000);
      expect(await call(s, app)).toEqual({ status: 200, token: good2 });

      for (const c of calls) {
        if (c.status === 200) expect(c.token).toBe(good1);
        else expect(c).toEqual({ status: 503, reason: 'token_unavailable' });
      }
      expect(calls[0]).toEqual({ status: 200, token: good1 });
      // Every token the peer ever received was a good one the file held.
      for (const r of app.requests) expect([good1, good2]).toContain(bearerOf(r.headers.authorization));
      // The missing file of the last step, not the one before the first token.
      const reasons = s.logs.slice(fromStartup).filter((l) => l.event === 'token_fetch_failed').map((l) => String(l.error));
      expect(reasons.some((r) => /no such file/.test(r))).toBe(true);
      expect(tokenLeaks(s.output(), [good1, good2, expired])).toEqual([]);
    } finally {
      await s.stop();
      await app.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A token endpoint (the network edge) that answers every request with `answer`, counting them; a sidecar whose one route's tokens come from it. */
async function withTokenEndpoint(answer: (res: ServerResponse) => void, body: (s: SidecarProcess, app: RecordingApp, idpRequests: () => number) => Promise<void>) {
  const endpoint = { url: '', requests: 0, close: async () => {} };
  const server = createServer((req, res) => {
    endpoint.requests++;
    req.resume();
    req.on('end', () => answer(res));
  });
  Object.assign(endpoint, await listenTracked(server));
  const app = await startRecordingApp();
  const s = await startSidecar({
    service: 'orders',
    lifecycle: { watchConfig: false },
    outbound: {
      tokenSource: { type: 'client_credentials', tokenEndpoint: `${endpoint.url}/token`, clientId: 'orders', clientSecret: 'orders-secret' },
      routes: [{ host: 'payments', target: app.url, audience: 'payments' }],
    },
  }, { waitReady: false });
  try {
    await body(s, app, () => endpoint.requests);
  } finally {
    await s.stop();
    await Promise.all([endpoint.close(), app.close()]);
  }
}

describe('token endpoint rate-limiting', () => {
  it("tells the app when to come back: the 503's Retry-After counts down to the sidecar's next request, which waits out the IdP's own, across a reload too", async () => {
    const throttled = (res: ServerResponse) => res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '7' }).end('{"error":"slow_down"}');
    await withTokenEndpoint(throttled, async (s, app, idpRequests) => {
      await s.waitForLog((l) => l.event === 'token_fetch_failed');
      const retryAfter = async (bytes: string) => {
        const res = (await rawExchange(s.outbound!, bytes)).responses[0]!;
        expect(res.status).toBe(503);
        expect(res.json().reason).toBe('token_unavailable');
        return Number(res.headers['retry-after']);
      };
      const plain = rawRequestBytes('/charge', [['Host', 'payments']]);
      const first = await retryAfter(plain);
      // The IdP's 7 s, with up to a fifth added (spreadWait), less what has passed since.
      expect(first).toBeGreaterThanOrEqual(5);
      expect(first).toBeLessThanOrEqual(9);
      await sleep(1100);
      expect(await retryAfter(plain)).toBeLessThan(first);
      // A WebSocket handshake is refused on the raw socket with the same header.
      const upgrade = rawRequestBytes('/ws', [['Host', 'payments'], ['Connection', 'Upgrade'], ['Upgrade', 'websocket'], ['Sec-WebSocket-Version', '13'], ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==']]);
      expect(await retryAfter(upgrade)).toBeGreaterThanOrEqual(1);
      // A reload (SIGHUP, a ConfigMap rollout) keeps the wait: the IdP is not asked before it said.
      s.signal('SIGHUP');
      await s.waitForLog((l) => l.event === 'config_reloaded');
      expect(await retryAfter(plain)).toBeGreaterThanOrEqual(3);
      await sleep(300);
      expect(idpRequests()).toBe(1);
      expect(app.requests).toEqual([]);
    });
  });
});

describe('token endpoint answering 200 with an expiry that cannot be used', () => {
  const withEndpoint = (reply: () => Record<string, unknown>, body: (s: SidecarProcess, app: RecordingApp, idpRequests: () => number) => Promise<void>) =>
    withTokenEndpoint((res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply())), body);

  it('a token that expires within a second (expires_in: 0.001) is refused, not renewed in a loop; lost: no call sent with it', async () => {
    await withEndpoint(
      () => ({ access_token: 'opaque-short-lived-token-0123456789', token_type: 'Bearer', expires_in: 0.001 }),
      async (s, app, idpRequests) => {
        await s.waitForLog((l) => l.event === 'token_fetch_failed');
        for (let i = 0; i < 5; i++) expect(await call(s, app)).toEqual({ status: 503, reason: 'token_unavailable' });
        expect(app.requests).toEqual([]);
        // Every request the endpoint got is a logged, backed-off failure (the last line may still be on its way):
        // no token was taken, so no renewal loop runs behind the logs' back.
        const failures = () => s.logs.filter((l) => l.event === 'token_fetch_failed').length;
        await s.waitForLog(() => failures() >= idpRequests());
        expect(s.logs.filter((l) => l.event === 'token_issued')).toEqual([]);
        expect(idpRequests()).toBeLessThanOrEqual(failures() + 1);
        expect(String(s.logs.find((l) => l.event === 'token_fetch_failed')!.error)).toMatch(/expires in less than 1 s/);
      },
    );
  });

  it('an expiry past the end of time (exp: 1e300) is refused with a reason, never a broken audit line or a silent token', async () => {
    const now = epochSeconds();
    const jwt = `${b64url({ alg: 'RS256', typ: 'at+jwt' })}.${b64url({ sub: 'orders', aud: 'payments', iat: now, exp: 1e300 })}.c2lnbmF0dXJlLW5vdC1jaGVja2VkLWhlcmU`;
    await withEndpoint(
      () => ({ access_token: jwt, token_type: 'Bearer', expires_in: 300 }),
      async (s, app) => {
        const failed = await s.waitForLog((l) => l.event === 'token_fetch_failed');
        expect(String(failed.error)).toMatch(/expiry is out of range/);
        expect(await call(s, app)).toEqual({ status: 503, reason: 'token_unavailable' });
        expect(app.requests).toEqual([]);
        expect(tokenLeaks(s.output(), [jwt])).toEqual([]);
      },
    );
  });
});

