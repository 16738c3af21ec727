import { mkdtempSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { tokenSourceSchema } from '../../src/config/schema.js';
import { TokenUnavailableError } from '../../src/errors.js';
import { FILE_RECHECK_MS } from '../../src/outbound/sources/file.js';
import { createTokenSource } from '../../src/outbound/sources/index.js';
import { backoffDelay, spreadWait } from '../../src/jitter.js';
import { computeRefreshAt, createTokenCache, LONGEST_RENEWAL_LIFETIME_MS, type TokenBinding, type TokenCache } from '../../src/outbound/token-cache.js';
import { rawToken } from '../support/tokens.js';
import { createFakeTime, metricValue, observed, startStubTokenEndpoint, type FakeTime, type StubTokenEndpoint, type TokenReply } from './outbound-harness.js';

const SECRET = 'cache-test-s3cret';
const TTL_S = 600;

describe('computeRefreshAt', () => {
  it('always lands between 50% and 80% of the lifetime, and never after exp - margin unless that is before 60% of it', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 4e12 }),
        fc.integer({ min: 1, max: LONGEST_RENEWAL_LIFETIME_MS }),
        fc.integer({ min: 0, max: 3_600_000 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (obtained, lifetime, margin, r) => {
          const at = computeRefreshAt(obtained, obtained + lifetime, margin, r);
          expect(at).toBeGreaterThanOrEqual(obtained + lifetime * 0.5);
          expect(at).toBeLessThanOrEqual(obtained + lifetime * 0.8 + 1e-6);
          expect(at).toBeLessThanOrEqual(Math.max(obtained + lifetime * 0.6, obtained + lifetime - margin) + 1e-6);
        },
      ),
    );
  });

  it('uses the jitter across the whole 50%..80% window', () => {
    expect(computeRefreshAt(0, 1000_000, 60_000, 0)).toBe(500_000);
    expect(computeRefreshAt(0, 1000_000, 60_000, 1)).toBe(800_000);
    expect(computeRefreshAt(0, 1000_000, 60_000, 0.5)).toBe(650_000);
  });

  it('renews long-lived tokens by the margin and short ones between 50% and 60%, so they do not loop', () => {
    // 1 h token, 20 min margin: 80% (48 min) is later than exp - margin (40 min).
    expect(computeRefreshAt(0, 3_600_000, 1_200_000, 1)).toBe(2_400_000);
    // 100 s token, 60 s margin: exp - margin (40 s) is before half-life; the window is 50 s..60 s.
    expect(computeRefreshAt(0, 100_000, 60_000, 0)).toBe(50_000);
    expect(computeRefreshAt(0, 100_000, 60_000, 0.9)).toBe(59_000);
    // 200 s token, 60 s margin: the window is 100 s..140 s, and the jitter spreads over all of it.
    expect(computeRefreshAt(0, 200_000, 60_000, 0.5)).toBe(120_000);
  });

  it('keeps a jitter window for every lifetime, so tokens fetched together are not renewed in step', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1_000, max: 90 * 86_400_000 }),
        fc.integer({ min: 0, max: 3_600_000 }),
        (lifetime, margin) => {
          const spread = computeRefreshAt(0, lifetime, margin, 1) - computeRefreshAt(0, lifetime, margin, 0);
          expect(spread).toBeGreaterThanOrEqual(Math.min(lifetime, LONGEST_RENEWAL_LIFETIME_MS) * 0.1 - 1e-6);
        },
      ),
    );
  });

  it('renews a token that lives longer than a day as if it lived a day: an absurd expires_in is not held for ever', () => {
    const day = LONGEST_RENEWAL_LIFETIME_MS;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 4e12 }),
        fc.integer({ min: day, max: 1e15 }),
        fc.integer({ min: 0, max: 3_600_000 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (obtained, lifetime, margin, r) => {
          const at = computeRefreshAt(obtained, obtained + lifetime, margin, r);
          expect(at).toBeGreaterThanOrEqual(obtained + day * 0.5);
          expect(at).toBeLessThanOrEqual(obtained + day * 0.8 + 1e-3);
        },
      ),
    );
    // expires_in: 1e12 seconds, as a reviewer's IdP sent it: renewed 12 h to 19.2 h in, spread over that window.
    expect(computeRefreshAt(0, 1e15, 60_000, 0)).toBe(day * 0.5);
    expect(computeRefreshAt(0, 1e15, 60_000, 1)).toBe(day * 0.8);
  });

  it('lets a source ask for an earlier recheck (file sources re-read every minute)', () => {
    expect(computeRefreshAt(0, 3_600_000, 60_000, 0, 60_000)).toBe(60_000);
    expect(computeRefreshAt(0, 100_000, 60_000, 0, 90_000)).toBe(50_000);
  });
});

describe('backoffDelay', () => {
  it('doubles from the minimum, stays within [min, max] whatever the jitter', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => backoffDelay(n, 1000, 60_000, 0.5))).toEqual([1100, 2000, 4000, 8000, 16000, 32000, 54000, 54000]);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 200 }), fc.double({ min: 0, max: 1, noNaN: true }), (n, r) => {
        const d = backoffDelay(n, 1000, 60_000, r);
        expect(d).toBeGreaterThanOrEqual(1000);
        expect(d).toBeLessThanOrEqual(60_000);
      }),
    );
  });

  it('spreads every step, the first and the ceiling too: no share of a fleet lands on one bound', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1, max: 10_000 }), fc.integer({ min: 2, max: 100 }), (n, minMs, factor) => {
        const maxMs = minMs * factor;
        // Strictly increasing in the draw: a clamp to a bound would make two draws give the same wait.
        expect(backoffDelay(n, minMs, maxMs, 0.4)).toBeLessThan(backoffDelay(n, minMs, maxMs, 0.6));
      }),
    );
    // At the 5 s ceiling used while no token is held: 4 s to 5 s, evenly.
    expect([0, 0.5, 1].map((r) => backoffDelay(10, 1000, 5000, r))).toEqual([4000, 4500, 5000]);
  });
});

describe('token cache (clock-controlled, real client_credentials source against a stand-in token endpoint)', () => {
  let time: FakeTime;
  let stub: StubTokenEndpoint;
  let issued = 0;
  let obs: ReturnType<typeof observed>;
  let cache: TokenCache;
  let binding: TokenBinding;
  let random = 0;
  const ok = (): TokenReply => ({ body: { access_token: `opaque-${++issued}`, token_type: 'Bearer', expires_in: TTL_S } });
  const refused = (): TokenReply => ({ status: 401, body: { error: 'invalid_client', error_description: 'client authentication failed' } });

  beforeEach(async () => {
    time = createFakeTime();
    issued = 0;
    random = 0;
    obs = observed();
    stub = await startStubTokenEndpoint(ok);
    const source = createTokenSource(
      tokenSourceSchema.parse({ type: 'client_credentials', tokenEndpoint: stub.url, clientId: 'orders', clientSecret: SECRET }),
      { clock: time.clock, env: {}, timeoutMs: 5000, configPath: 'outbound.tokenSource' },
    );
    binding = { key: 'k1', identity: 'k1', requestIdentity: 'k1', source, audience: 'payments', scopes: [] };
    cache = createTokenCache({
      clock: time.clock,
      scheduler: time.scheduler,
      random: () => random,
      logger: obs.logger,
      metrics: obs.metrics,
      refreshMarginSeconds: 60,
    });
  });

  afterEach(async () => {
    cache.close();
    await binding.source.close();
    await stub.close();
  });

  it('200 concurrent callers cost exactly one token request', async () => {
    const release = stub.hold();
    const calls = Array.from({ length: 200 }, () => cache.get(binding));
    await vi.waitFor(() => expect(stub.requests).toHaveLength(1));
    release();
    const tokens = await Promise.all(calls);
    expect(new Set(tokens)).toEqual(new Set(['opaque-1']));
    expect(await cache.get(binding)).toBe('opaque-1');
    expect(stub.requests).toHaveLength(1);
    expect(stub.requests[0]!.form.get('resource')).toBe('payments');
    // An opaque token has no claims to read, so nothing on its line needs the unverified mark.
    expect(obs.lines.filter((l) => l.event === 'token_issued').map((l) => [l.issuer, l.jti, l.claimsVerified])).toEqual([[undefined, undefined, undefined]]);
    expect(await metricValue(obs.metrics, 'oidc_sidecar_token_requests_total', { source: 'client_credentials', audience: 'payments', result: 'success' })).toBe(1);
  });

  it('peek answers from the cache without fetching, and only with a token that is still valid', async () => {
    expect(cache.peek(binding)).toBeUndefined();
    expect(stub.requests).toHaveLength(0);
    expect(await cache.get(binding)).toBe('opaque-1');
    expect(cache.peek(binding)).toBe('opaque-1');
    expect(stub.requests).toHaveLength(1);
    // Past expiry with the renewal stuck at the IdP: nothing to hand out.
    const release = stub.hold();
    time.advance(TTL_S * 1000);
    await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
    expect(cache.peek(binding)).toBeUndefined();
    release();
    await vi.waitFor(() => expect(cache.peek(binding)).toBe('opaque-2'));
    cache.close();
    expect(cache.peek(binding)).toBeUndefined();
  });

  it('renews in the background at the jittered point, not a moment before', async () => {
    random = 0.5; // 65% of 600 s = 390 s
    const start = time.now();
    expect(await cache.get(binding)).toBe('opaque-1');
    expect(time.pending()).toEqual([start + 390_000]);
    time.advance(389_999);
    expect(await cache.get(binding)).toBe('opaque-1');
    expect(stub.requests).toHaveLength(1);
    time.advance(1);
    await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
    await vi.waitFor(async () => expect(await cache.get(binding)).toBe('opaque-2'));
    // The next renewal is scheduled from the new token's own lifetime.
    expect(time.pending()).toEqual([start + 390_000 + 390_000]);
    expect(await metricValue(obs.metrics, 'oidc_sidecar_token_expiry_timestamp_seconds', { audience: 'payments' })).toBe(
      Math.floor((start + 390_000 + TTL_S * 1000) / 1000),
    );
  });

  it('two tokens for one audience (other scopes): the expiry gauge shows whichever runs out first', async () => {
    // The token with scope `read` lives 300 s, the other 600 s.
    stub.reply = (req) => ({ body: { access_token: `opaque-${++issued}`, token_type: 'Bearer', expires_in: req.form.get('scope') === 'read' ? 300 : TTL_S } });
    const reader: TokenBinding = { ...binding, key: 'k2', identity: 'k2', scopes: ['read'] };
    const gauge = () => metricValue(obs.metrics, 'oidc_sidecar_token_expiry_timestamp_seconds', { audience: 'payments' });
    const start = time.now();
    await cache.get(reader);
    await cache.get(binding); // issued last, expires last: the gauge stays on the reader's
    expect(await gauge()).toBe(Math.floor((start + 300_000) / 1000));
    // The reader's renewal (half-life, random 0) fails: its token runs out while the other's is fine, and the gauge says so.
    stub.reply = (req) => (req.form.get('scope') === 'read' ? { status: 503, body: { error: 'temporarily_unavailable' } } : ok());
    time.advance(150_000);
    await vi.waitFor(() => expect(obs.lines.some((l) => l.event === 'token_fetch_failed')).toBe(true));
    time.advance(start + 300_000 - time.now()); // the reader's token expires; the other's renewal (half-life) succeeds
    expect(cache.hasValid('k2')).toBe(false);
    await vi.waitFor(() => expect(stub.requests.filter((r) => r.form.get('scope') !== 'read')).toHaveLength(2));
    await vi.waitFor(async () => expect(await cache.get(binding)).toBe(`opaque-${issued}`));
    expect(await gauge()).toBe(Math.floor((start + 300_000) / 1000));
  });

  it('keeps serving the current token while renewal fails, until it expires; then 503-class error', async () => {
    const start = time.now();
    expect(await cache.get(binding)).toBe('opaque-1');
    stub.reply = () => ({ status: 503, body: { error: 'temporarily_unavailable' } });
    time.advance(300_000); // half-life with random 0
    await vi.waitFor(() => expect(obs.lines.some((l) => l.event === 'token_fetch_failed')).toBe(true));
    expect(await cache.get(binding)).toBe('opaque-1');
    // Retries keep failing with backoff while the old token is still used.
    const expiry = start + TTL_S * 1000;
    const failures = () => obs.lines.filter((l) => l.event === 'token_fetch_failed').length;
    for (let n = 2; time.pending()[0]! < expiry; n++) {
      time.advance(time.pending()[0]! - time.now());
      await vi.waitFor(() => expect(failures()).toBe(n));
      expect(await cache.get(binding)).toBe('opaque-1');
      expect(cache.hasValid('k1')).toBe(true);
    }
    time.advance(expiry - 1 - time.now());
    expect(await cache.get(binding)).toBe('opaque-1');
    time.advance(1);
    expect(cache.hasValid('k1')).toBe(false);
    const err = await cache.get(binding).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenUnavailableError);
    expect((err as TokenUnavailableError).oauthError).toBe('temporarily_unavailable');
    expect((err as TokenUnavailableError).status).toBe(503);
    const failed = obs.lines.filter((l) => l.event === 'token_fetch_failed');
    expect(failed.length).toBeGreaterThan(3);
    // Every retry kept the token, but the last: it came at the expiry (the backoff never waits past it).
    expect(failed.slice(0, -1).every((l) => l.keepingToken === true)).toBe(true);
    expect(failed.at(-1)).toMatchObject({ keepingToken: false });
  });

  it("waits as long as a 429's Retry-After asks (up to retryMaxSeconds) before asking the IdP again", async () => {
    const start = time.now();
    expect(await cache.get(binding)).toBe('opaque-1');
    stub.reply = () => ({ status: 429, body: { error: 'slow_down' }, headers: { 'retry-after': '30' } });
    time.advance(300_000); // half-life with random 0
    await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
    await vi.waitFor(() => expect(time.pending()).toEqual([start + 330_000]));
    // Calls keep the held token meanwhile and send the IdP nothing.
    time.advance(29_999);
    expect(await cache.get(binding)).toBe('opaque-1');
    expect(stub.requests).toHaveLength(2);
    // A Retry-After beyond the ceiling is capped at retryMaxSeconds (60 s), and the date form is read too.
    stub.reply = () => ({ status: 503, body: { error: 'temporarily_unavailable' }, headers: { 'retry-after': new Date(time.now() + 3_600_000).toUTCString() } });
    time.advance(1);
    await vi.waitFor(() => expect(stub.requests).toHaveLength(3));
    await vi.waitFor(() => expect(time.pending()).toEqual([start + 390_000]));
    stub.reply = ok;
    time.advance(60_000);
    await vi.waitFor(async () => expect(await cache.get(binding)).toBe('opaque-2'));
    expect(stub.requests).toHaveLength(4);
  });

  it('spreads a Retry-After wait by up to a fifth more, never less, so a fleet throttled at once does not come back at once', async () => {
    for (const [r, expected] of [[0, 20_000], [0.5, 22_000], [1, 24_000]] as const) {
      random = r;
      stub.reply = () => ({ status: 429, body: { error: 'slow_down' }, headers: { 'retry-after': '20' } });
      const key = `spread-${r}`;
      const start = time.now();
      await expect(cache.get({ ...binding, key, identity: key })).rejects.toBeInstanceOf(TokenUnavailableError);
      expect(time.pending()).toContain(start + expected);
    }
    // At the ceiling (retryMaxSeconds, 60 s) the wait stays the ceiling.
    expect(spreadWait(55_000, 60_000, 1)).toBe(60_000);
    expect(spreadWait(20_000, 60_000, 7)).toBe(24_000);
  });

  it('with no token held, a 429 Retry-After is honoured too: calls fail at once meanwhile, the IdP is not asked', async () => {
    stub.reply = () => ({ status: 429, body: { error: 'slow_down' }, headers: { 'retry-after': '20' } });
    const start = time.now();
    await expect(cache.get(binding)).rejects.toBeInstanceOf(TokenUnavailableError);
    expect(time.pending()).toEqual([start + 20_000]);
    time.advance(10_000);
    await expect(cache.get(binding)).rejects.toBeInstanceOf(TokenUnavailableError);
    expect(stub.requests).toHaveLength(1);
  });

  it('retries no later than the held token expires, so calls recover soon after the IdP does even when the backoff had grown long', async () => {
    random = 0.5;
    const start = time.now();
    expect(await cache.get(binding)).toBe('opaque-1');
    stub.reply = () => ({ status: 503, body: { error: 'temporarily_unavailable' } });
    const expiry = start + TTL_S * 1000;
    // Renewal fails from its first attempt (390 s) on; the backoff grows to the 60 s ceiling while the token is held.
    while (time.pending()[0]! < expiry) {
      const before = stub.requests.length;
      time.advance(time.pending()[0]! - time.now());
      await vi.waitFor(() => expect(stub.requests).toHaveLength(before + 1));
      await vi.waitFor(() => expect(time.pending()[0]).toBeGreaterThan(time.now()));
    }
    // The last retry lands at the expiry, not up to 60 s after it.
    expect(time.pending()).toEqual([expiry]);
    stub.reply = ok;
    time.advance(expiry - time.now());
    await vi.waitFor(() => expect(cache.hasValid('k1')).toBe(true));
    expect(await cache.get(binding)).toBe('opaque-2');
  });

  it('retries with exponential backoff and fails fast in between instead of hammering the IdP', async () => {
    random = 0.5; // jitter factor 1.0
    stub.reply = refused;
    const first = await cache.get(binding).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(TokenUnavailableError);
    expect((first as TokenUnavailableError).oauthError).toBe('invalid_client');
    expect((first as Error).message).toContain('invalid_client (client authentication failed)');
    expect((first as Error).message).not.toContain(SECRET);

    // Calls during the backoff window get the last error without a request.
    await expect(cache.get(binding)).rejects.toBeInstanceOf(TokenUnavailableError);
    expect(stub.requests).toHaveLength(1);

    const gaps: number[] = [];
    for (let i = 0; i < 3; i++) {
      const next = time.pending()[0]!;
      gaps.push(next - time.now());
      time.advance(next - time.now());
      await vi.waitFor(() => expect(stub.requests).toHaveLength(i + 2));
      await vi.waitFor(() => expect(time.pending()[0]).toBeGreaterThan(time.now()));
    }
    // The middle of each step's ±20%, within the 1 s floor for the first.
    expect(gaps).toEqual([1100, 2000, 4000]);
    stub.reply = ok;
    time.advance(time.pending()[0]! - time.now());
    await vi.waitFor(() => expect(cache.hasValid('k1')).toBe(true));
    expect(await cache.get(binding)).toBe('opaque-1');
    expect(await metricValue(obs.metrics, 'oidc_sidecar_token_requests_total', { source: 'client_credentials', audience: 'payments', result: 'invalid_client' })).toBe(4);
    const failed = obs.lines.filter((l) => l.event === 'token_fetch_failed');
    expect(failed[0]).toMatchObject({ level: 'warn', source: 'client_credentials', audience: 'payments', oauthError: 'invalid_client', reason: 'invalid_client' });
  });

  it('counts the backoff on the monotonic clock: the wall clock stepping back an hour does not hold off the retry for an hour', async () => {
    random = 0.5;
    stub.reply = refused;
    await cache.get(binding).catch(() => {});
    expect(time.pending()).toEqual([time.now() + 1100]);
    time.step(-3_600_000);
    stub.reply = ok;
    time.advance(1100);
    await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
    await vi.waitFor(() => expect(cache.hasValid('k1')).toBe(true));
    expect(await cache.get(binding)).toBe('opaque-1');
  });

  it('while it holds no valid token, retries at most every 5 s, so calls recover soon after the IdP does', async () => {
    random = 0.5;
    stub.reply = refused;
    await cache.get(binding).catch(() => {});
    const gaps: number[] = [];
    for (let i = 0; i < 6; i++) {
      const next = time.pending()[0]!;
      gaps.push(next - time.now());
      time.advance(next - time.now());
      await vi.waitFor(() => expect(stub.requests).toHaveLength(i + 2));
      await vi.waitFor(() => expect(time.pending()[0]).toBeGreaterThan(time.now()));
    }
    // At the 5 s ceiling a wait is 4 s to 5 s: the middle of it.
    expect(gaps).toEqual([1100, 2000, 4000, 4500, 4500, 4500]);
  });

  it('audits token_issued with source, issuer, audience, expiry from the JWT exp and jti, never the token or the secret', async () => {
    const exp = Math.floor(time.now() / 1000) + 120;
    const jwt = rawToken({ alg: 'RS256', typ: 'at+jwt' }, { iss: 'https://idp.example', sub: 'orders', aud: 'payments', exp, jti: 'jti-123' }, 'c2ln');
    stub.reply = () => ({ body: { access_token: jwt, token_type: 'bearer', expires_in: 99_999 } });
    expect(await cache.get(binding)).toBe(jwt);
    const line = obs.lines.find((l) => l.event === 'token_issued');
    expect(line).toMatchObject({
      level: 'info',
      source: 'client_credentials',
      issuer: 'https://idp.example',
      audience: 'payments',
      jti: 'jti-123',
      expiresAt: new Date(exp * 1000).toISOString(),
      // Read from the token as the IdP sent it: SPEC's mark for claims of a token whose signature nobody checked here.
      claimsVerified: false,
    });
    expect(obs.text()).not.toContain(jwt.split('.')[1]);
    expect(obs.text()).not.toContain(SECRET);
  });

  it('marks a JWT with only exp as unverified too: the expiry on its token_issued line may come from it', async () => {
    const exp = Math.floor(time.now() / 1000) + 120;
    stub.reply = () => ({ body: { access_token: rawToken({ alg: 'RS256' }, { exp }, 'c2ln'), token_type: 'Bearer' } });
    await cache.get(binding);
    const line = obs.lines.find((l) => l.event === 'token_issued');
    expect(line).toMatchObject({ expiresAt: new Date(exp * 1000).toISOString(), claimsVerified: false });
    expect([line!.issuer, line!.jti]).toEqual([undefined, undefined]);
  });

  it('treats a token that is already expired as a failure', async () => {
    const jwt = rawToken({ alg: 'RS256' }, { exp: Math.floor(time.now() / 1000) - 5 }, 'c2ln');
    stub.reply = () => ({ body: { access_token: jwt, token_type: 'Bearer' } });
    await expect(cache.get(binding)).rejects.toThrow(/expired/);
    expect(cache.hasValid('k1')).toBe(false);
  });

  it('a renewal cut short by close() (a reload retiring the config) is neither counted nor logged as a failed fetch', async () => {
    await cache.get(binding);
    stub.hold();
    time.advance(TTL_S * 1000 * 0.6);
    await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
    cache.close();
    // What the retired component's close does next: its source hangs up on the IdP.
    await binding.source.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(obs.lines.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
    expect(await metricValue(obs.metrics, 'oidc_sidecar_token_requests_total', { source: 'client_credentials', audience: 'payments', result: 'idp_unreachable' })).toBeUndefined();
  });

  /** The first token request, sent and held at the stand-in IdP until the function returned is called. */
  async function heldFirstRequest(): Promise<() => void> {
    const release = stub.hold();
    void cache.get(binding).catch(() => {});
    await vi.waitFor(() => expect(stub.requests).toHaveLength(1));
    return release;
  }

  /** The cache a config reload builds: its own source for the same config, the predecessor's snapshot handed over. */
  function successorOf(predecessor: TokenCache, requestIdentity = binding.requestIdentity) {
    const next = observed();
    const source = createTokenSource(
      tokenSourceSchema.parse({ type: 'client_credentials', tokenEndpoint: stub.url, clientId: 'orders', clientSecret: SECRET }),
      { clock: time.clock, env: {}, timeoutMs: 5000, configPath: 'outbound.tokenSource' },
    );
    const nextCache = createTokenCache({
      clock: time.clock,
      scheduler: time.scheduler,
      random: () => random,
      logger: next.logger,
      metrics: next.metrics,
      refreshMarginSeconds: 60,
      handover: predecessor.snapshot(),
    });
    const nextBinding: TokenBinding = { ...binding, key: 'k1-next', requestIdentity, source };
    return { cache: nextCache, binding: nextBinding, obs: next, close: async () => (nextCache.close(), await source.close()) };
  }

  it('a reload while the first token is being requested: the new cache waits for that request instead of sending another', async () => {
    const release = stub.hold();
    const waiting = cache.get(binding);
    await vi.waitFor(() => expect(stub.requests).toHaveLength(1));
    const next = successorOf(cache);
    try {
      const call = next.cache.get(next.binding);
      cache.close(); // the predecessor retires; its source stays open while the request it handed over is in flight
      expect(cache.handedOverFetches()).toHaveLength(1);
      expect(next.obs.lines.filter((l) => l.event === 'token_fetch_handed_over')).toEqual([expect.objectContaining({ audience: 'payments' })]);
      release();
      expect(await call).toBe('opaque-1');
      expect(await waiting).toBe('opaque-1');
      expect(stub.requests).toHaveLength(1);
      await vi.waitFor(() => expect(cache.handedOverFetches()).toEqual([]));
      // One request, counted and logged once: by the cache that sent it.
      const success = { source: 'client_credentials', audience: 'payments', result: 'success' };
      expect(await metricValue(obs.metrics, 'oidc_sidecar_token_requests_total', success)).toBe(1);
      expect(await metricValue(next.obs.metrics, 'oidc_sidecar_token_requests_total', success)).toBeUndefined();
      expect(next.obs.lines.filter((l) => l.event === 'token_issued')).toEqual([]);
      // From here the token is the new cache's own: it renews it at half its life (random 0), with its own source.
      expect(next.cache.hasValid('k1-next')).toBe(true);
      time.advance(TTL_S * 500);
      await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
      await vi.waitFor(async () => expect(await next.cache.get(next.binding)).toBe('opaque-2'));
      expect(await metricValue(next.obs.metrics, 'oidc_sidecar_token_requests_total', success)).toBe(1);
    } finally {
      await next.close();
    }
  });

  it('a second reload while the request is still in flight hands it on again; the sender lets go of it only when the last cache waiting for it closes', async () => {
    const release = await heldFirstRequest();
    const first = successorOf(cache);
    void first.cache.get(first.binding).catch(() => {}); // as its warm-up does, before a reload can replace it
    const second = successorOf(first.cache);
    try {
      const call = second.cache.get(second.binding);
      cache.close();
      await first.close();
      const settled = (p: Promise<void>) => Promise.race([p.then(() => true), new Promise((r) => setTimeout(() => r(false), 50))]);
      const lent = cache.handedOverFetches();
      expect(lent).toHaveLength(1);
      expect(await settled(lent[0]!)).toBe(false); // the second successor still waits on it
      release();
      expect(await call).toBe('opaque-1');
      expect(stub.requests).toHaveLength(1);
      expect(await settled(lent[0]!)).toBe(true);
    } finally {
      await second.close();
    }
  });

  it('a successor that closes (a reload abandoned at shutdown) lets go of the request it waited on, so the sender can cut it', async () => {
    await heldFirstRequest();
    const next = successorOf(cache);
    void next.cache.get(next.binding).catch(() => {});
    const lent = cache.handedOverFetches();
    expect(lent).toHaveLength(1);
    await next.close();
    await lent[0]; // resolves although the request is still held
    expect(cache.handedOverFetches()).toEqual([]);
    // Cut by its own config closing, with no one waiting: neither counted nor logged, like any request cut by a close.
    cache.close();
    await binding.source.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(obs.lines.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
  });

  it('a request sent with what the reload changed (a rotated secret, another CA, another timeout) is not adopted: the new cache sends its own, the old one cuts its own uncounted', async () => {
    const release = await heldFirstRequest();
    const next = successorOf(cache, 'k1 with the rotated secret');
    try {
      const call = next.cache.get(next.binding);
      await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
      expect(next.obs.lines.filter((l) => l.event === 'token_fetch_handed_over')).toEqual([]);
      cache.close();
      expect(cache.handedOverFetches()).toEqual([]);
      await binding.source.close(); // nothing waits on the old request: the old config's close cuts it at once
      release();
      expect(await call).toMatch(/^opaque-/);
      await new Promise((r) => setTimeout(r, 50));
      expect(obs.lines.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
    } finally {
      await next.close();
    }
  });

  it('an adopted token that has expired by the time it arrives is a failure, never handed out, and the new cache retries', async () => {
    const release = await heldFirstRequest();
    const next = successorOf(cache);
    try {
      const call = next.cache.get(next.binding);
      cache.close();
      stub.reply = () => ({ body: { access_token: 'short-lived', token_type: 'Bearer', expires_in: 1 } });
      // The sender checks the token when it arrives and logs it; the clock moves on before the new cache sees it.
      const push = obs.lines.push.bind(obs.lines);
      obs.lines.push = (...lines) => (lines.some((l) => l.event === 'token_issued') && time.advance(1000), push(...lines));
      release();
      await expect(call).rejects.toThrow(/already expired/);
      expect(obs.lines.filter((l) => l.event === 'token_issued')).toHaveLength(1);
      expect(next.cache.hasValid('k1-next')).toBe(false);
      stub.reply = ok;
      expect(time.pending()).toHaveLength(1); // the new cache's own retry
      time.advance(time.pending()[0]! - time.now());
      await vi.waitFor(async () => expect(await next.cache.get(next.binding)).toBe('opaque-1'));
    } finally {
      await next.close();
    }
  });

  it('a renewal in flight at a reload is handed over with the token: the new cache neither renews again nor drops the token', async () => {
    expect(await cache.get(binding)).toBe('opaque-1');
    const release = stub.hold();
    time.advance(TTL_S * 500); // the renewal point (random 0): the renewal is sent and held
    await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
    const next = successorOf(cache);
    try {
      expect(await next.cache.get(next.binding)).toBe('opaque-1');
      cache.close();
      time.advance(1000); // the inherited renewal point has passed: the new cache must not send a renewal of its own
      expect(next.cache.peek(next.binding)).toBe('opaque-1');
      expect(stub.requests).toHaveLength(2);
      release();
      await vi.waitFor(async () => expect(await next.cache.get(next.binding)).toBe('opaque-2'));
      expect(stub.requests).toHaveLength(2);
    } finally {
      await next.close();
    }
  });

  it('a handed-over request that fails is counted and logged by the retired cache, and the new cache backs off as after its own failure', async () => {
    stub.reply = refused;
    const release = await heldFirstRequest();
    const next = successorOf(cache);
    try {
      const call = next.cache.get(next.binding);
      cache.close();
      release();
      await expect(call).rejects.toThrow(/invalid_client/);
      // A real answer from the IdP, not a request cut by the close: counted, although its cache has closed.
      const failed = { source: 'client_credentials', audience: 'payments', result: 'invalid_client' };
      expect(await metricValue(obs.metrics, 'oidc_sidecar_token_requests_total', failed)).toBe(1);
      expect(obs.lines.filter((l) => l.event === 'token_fetch_failed')).toHaveLength(1);
      expect(next.obs.lines.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
      // In backoff the new cache fails fast with that error, without asking the IdP, and retries when it is over.
      await expect(next.cache.get(next.binding)).rejects.toThrow(/invalid_client/);
      expect(stub.requests).toHaveLength(1);
      stub.reply = ok;
      expect(time.pending()).toHaveLength(1);
      time.advance(time.pending()[0]! - time.now());
      await vi.waitFor(() => expect(stub.requests).toHaveLength(2));
      await vi.waitFor(async () => expect(await next.cache.get(next.binding)).toBe('opaque-1'));
    } finally {
      await next.close();
    }
  });

  it("a reload during a backoff keeps it: the new cache asks the IdP when the old one would have (its Retry-After), not at once; a request sent another way goes at once", async () => {
    stub.reply = () => ({ status: 429, body: { error: 'slow_down' }, headers: { 'retry-after': '20' } });
    const start = time.now();
    await expect(cache.get(binding)).rejects.toThrow(/slow_down/);
    expect(stub.requests).toHaveLength(1);
    time.advance(5_000);
    const next = successorOf(cache);
    const rotated = successorOf(cache, 'k1 with the rotated secret');
    try {
      cache.close();
      // Fails fast with the predecessor's error, 15 s before the IdP said to come back: no request.
      await expect(next.cache.get(next.binding)).rejects.toThrow(/slow_down/);
      expect(stub.requests).toHaveLength(1);
      stub.reply = ok;
      // A binding whose request changed (a rotated secret) is not held back by a failure of the old request.
      expect(await rotated.cache.get(rotated.binding)).toMatch(/^opaque-/);
      expect(stub.requests).toHaveLength(2);
      expect(time.pending()).toContain(start + 20_000);
      time.advance(start + 20_000 - time.now());
      await vi.waitFor(() => expect(stub.requests).toHaveLength(3));
      await vi.waitFor(async () => expect(await next.cache.get(next.binding)).toMatch(/^opaque-/));
    } finally {
      await next.close();
      await rotated.close();
    }
  });

  it('a token for another audience than asked is not asked for again soon: each retry would mint one more for nothing, so the cache waits its longest', async () => {
    stub.reply = () => ({ body: { access_token: rawToken({ alg: 'RS256' }, { aud: 'ledger', exp: Math.floor(time.now() / 1000) + TTL_S }, 'c2ln'), token_type: 'Bearer', expires_in: TTL_S } });
    const start = time.now();
    const err = await cache.get(binding).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenUnavailableError);
    expect((err as Error).message).toMatch(/the token is for aud "ledger", not "payments" as asked/);
    // retryMaxSeconds (60 by default), not the 1-5 s of a transient failure with no token held.
    expect(time.pending()).toEqual([start + 60_000]);
    expect((err as TokenUnavailableError).retryAt).toBe(time.clock.monotonic() + 60_000);
  });

  it('nor is a token it cannot use (a DPoP type, no expiry, a space in it): the IdP makes every token of its client that way', async () => {
    const answers: [string, Record<string, unknown>, RegExp][] = [
      ['DPoP', { access_token: 'opaque-1', token_type: 'DPoP', expires_in: TTL_S }, /token_type "dpop" is not a bearer token/],
      ['no expiry', { access_token: 'opaque-2', token_type: 'Bearer' }, /neither a JWT exp claim nor expires_in/],
      ['a space', { access_token: 'opaque 3', token_type: 'Bearer', expires_in: TTL_S }, /not a valid bearer token/],
    ];
    for (const [label, body, message] of answers) {
      stub.reply = () => ({ body });
      const err = await cache.get({ ...binding, key: label, identity: label, requestIdentity: label }).catch((e: unknown) => e);
      expect(err, label).toBeInstanceOf(TokenUnavailableError);
      expect((err as Error).message, label).toMatch(message);
      expect((err as TokenUnavailableError).retryAt, label).toBe(time.clock.monotonic() + 60_000);
    }
    expect(stub.requests).toHaveLength(3);
    // A token missing from the answer, or expired on arrival (the IdP's clock stepped), may be a passing fault.
    for (const [label, body] of [['missing', { token_type: 'Bearer', expires_in: TTL_S }], ['expired', { access_token: rawToken({ alg: 'RS256' }, { exp: Math.floor(time.now() / 1000) - 10 }, 'c2ln'), token_type: 'Bearer' }]] as const) {
      stub.reply = () => ({ body });
      const err = await cache.get({ ...binding, key: label, identity: label, requestIdentity: label }).catch((e: unknown) => e);
      expect((err as TokenUnavailableError).retryAt! - time.clock.monotonic(), label).toBeLessThanOrEqual(5_000);
    }
  });

  it('one failed request that fails several bindings (a shared discovery) gives each binding its own error, with its own next attempt', async () => {
    const discovery = await startStubTokenEndpoint(() => ({ status: 503, body: { error: 'temporarily_unavailable' } }));
    const source = createTokenSource(
      tokenSourceSchema.parse({ type: 'client_credentials', issuer: discovery.origin, clientId: 'orders', clientSecret: SECRET }),
      { clock: time.clock, env: {}, timeoutMs: 5000, configPath: 'outbound.tokenSource' },
    );
    try {
      const a: TokenBinding = { key: 'a', identity: 'a', requestIdentity: 'a', source, audience: 'payments', scopes: [] };
      const b: TokenBinding = { key: 'b', identity: 'b', requestIdentity: 'b', source, audience: 'ledger', scopes: [] };
      const [errA, errB] = await Promise.all([cache.get(a).catch((e: unknown) => e), cache.get(b).catch((e: unknown) => e)]);
      expect(discovery.requests).toHaveLength(1);
      expect(errA).toBeInstanceOf(TokenUnavailableError);
      expect(errB).toBeInstanceOf(TokenUnavailableError);
      expect(errA).not.toBe(errB);
      expect((errA as TokenUnavailableError).retryAt).toBeGreaterThan(time.clock.monotonic());
      // During the backoff each binding answers with its own.
      await expect(cache.get(a)).rejects.toBe(errA);
      await expect(cache.get(b)).rejects.toBe(errB);
    } finally {
      await source.close();
      await discovery.close();
    }
  });

  it('close() cancels renewals and refuses further calls', async () => {
    await cache.get(binding);
    expect(time.pending()).toHaveLength(1);
    cache.close();
    expect(time.pending()).toHaveLength(0);
    await expect(cache.get(binding)).rejects.toBeInstanceOf(TokenUnavailableError);
  });
});

describe('token cache over a file source (the fake clock stands still, so only the file watch can bring a change)', () => {
  it('takes a replaced file at once, quietly re-reads a touched one, keeps the token while the file is gone and takes it back when it returns', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cache-file-'));
    const time = createFakeTime();
    const obs = observed();
    const path = join(dir, 'token-payments');
    const jwt = (jti: string) => rawToken({ alg: 'RS256', typ: 'JWT' }, { aud: 'payments', exp: Math.floor(time.now() / 1000) + 3600, jti }, 'c2ln');
    /** Writes a temp file and renames it over the token file, as an atomic rotation does. */
    const replace = (content: string) => {
      writeFileSync(join(dir, 'next.tmp'), content);
      renameSync(join(dir, 'next.tmp'), path);
    };
    const source = createTokenSource(tokenSourceSchema.parse({ type: 'file', path: join(dir, 'token-{audience}') }), {
      clock: time.clock,
      env: {},
      timeoutMs: 5000,
      configPath: 'outbound.tokenSource',
    });
    const binding: TokenBinding = { key: 'f1', identity: 'f1', requestIdentity: 'f1', source, audience: 'payments', scopes: [] };
    const cache = createTokenCache({ clock: time.clock, scheduler: time.scheduler, logger: obs.logger, metrics: obs.metrics, refreshMarginSeconds: 60 });
    const issued = () => obs.lines.filter((l) => l.event === 'token_issued').map((l) => l.jti);
    const reads = () => metricValue(obs.metrics, 'oidc_sidecar_token_requests_total', { source: 'file', audience: 'payments', result: 'success' });
    const eventually = (assertion: () => void | Promise<void>) => vi.waitFor(assertion, { timeout: 15_000, interval: 20 });
    try {
      const a = jwt('a');
      replace(a);
      expect(await cache.get(binding)).toBe(a);

      // Touched, same content: read again (the renewal point moves to a minute from now) but nothing is announced or counted.
      time.advance(1000);
      const bumped = new Date(Date.now() + 5000);
      utimesSync(path, bumped, bumped);
      await eventually(() => expect(time.pending()).toContain(time.now() + FILE_RECHECK_MS));
      expect(issued()).toEqual(['a']);
      expect(await reads()).toBe(1);

      // The once-a-minute re-read (the backstop for a change the poll missed) finds the same token: quiet as well.
      const recheckAt = time.now() + FILE_RECHECK_MS;
      time.advance(FILE_RECHECK_MS);
      await eventually(() => expect(time.pending()).toContain(recheckAt + FILE_RECHECK_MS));
      expect(issued()).toEqual(['a']);
      expect(await reads()).toBe(1);

      const b = jwt('b');
      replace(b);
      await eventually(() => expect(cache.peek(binding)).toBe(b));
      expect(issued()).toEqual(['a', 'b']);
      expect(await reads()).toBe(2);

      // Gone: a failed renewal, and the token in hand stays; back: taken at once, not at the backoff's retry.
      rmSync(path);
      await eventually(() => expect(obs.lines.filter((l) => l.event === 'token_fetch_failed')).toHaveLength(1));
      expect(obs.lines.find((l) => l.event === 'token_fetch_failed')).toMatchObject({ source: 'file', keepingToken: true });
      expect(cache.peek(binding)).toBe(b);
      const c = jwt('c');
      replace(c);
      await eventually(() => expect(cache.peek(binding)).toBe(c));
      expect(issued()).toEqual(['a', 'b', 'c']);
      expect(obs.text()).not.toContain(a.split('.')[1]);
    } finally {
      cache.close();
      await source.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
