import { createPublicKey } from 'node:crypto';
import { describe, expect, it, type TestContext } from 'vitest';
import { bearerRequest, flushLogs, rawExchange, rawRequestBytes, signRaw, startRecordingApp, tokenLeaks } from '../support/attacks.js';
import { startIdp, type DownMode, type TestIdp } from '../support/idp.js';
import { startSidecar, type LogLine, type SidecarProcess } from '../support/sidecar.js';
import { signToken, tamperHeader, testKeyPair } from '../support/tokens.js';

/**
 * Faults on the key side of the inbound verifier, through the CLI: the IdP
 * down at start, a JWKS outage after start (every way an IdP can fail), and
 * key rotation with the verified-token cache in play. Each test states what
 * was lost, and checks it: no request let through that should not be, and
 * every request that reached the app got a 2xx.
 *
 * SIGHUP/file-change reload and SIGTERM drain: test/e2e/lifecycle.test.ts.
 */

/** IdP, app and sidecar for one test, torn down when that test finishes (tests in a file run concurrently). */
async function setup(ctx: TestContext, inbound: Record<string, unknown>, opts: { down?: DownMode } = {}) {
  const idp = await startIdp();
  ctx.onTestFinished(() => idp.close());
  if (opts.down) idp.setDown(opts.down);
  const app = await startRecordingApp();
  ctx.onTestFinished(() => app.close());
  const sidecar = await startSidecar(
    {
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      inbound: {
        target: app.url,
        audience: 'orders',
        issuers: [{ issuer: idp.issuer }],
        rules: [{ match: { path: '/public/**' }, public: true }, { match: { path: '/**' }, allow: [{ sub: ['orders', 'deployer'] }] }],
        ...inbound,
      },
    },
    { waitReady: !opts.down },
  );
  ctx.onTestFinished(async () => void (await sidecar.stop()));
  return { idp, app, sidecar };
}

interface Outcome {
  at: number;
  kind: string;
  status: number;
  reason?: string;
}

/** Sends one request and records what came back. */
async function probe(sidecar: SidecarProcess, kind: string, token: string | undefined, path = '/api/x'): Promise<Outcome> {
  const bytes = token === undefined ? rawRequestBytes(path, [['Host', 'orders']]) : bearerRequest(token, { path });
  const res = (await rawExchange(sidecar.inbound!, bytes)).responses[0]!;
  let reason: string | undefined;
  try {
    reason = res.json().reason;
  } catch {
    reason = undefined;
  }
  return { at: Date.now(), kind, status: res.status, ...(reason ? { reason } : {}) };
}

const readyz = async (s: SidecarProcess) => (await fetch(`${s.admin}/readyz`)).status;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A token with the IdP's real kid but an attacker's signature. */
async function forgedFor(idp: TestIdp): Promise<string> {
  const evil = await testKeyPair('RS256');
  const now = Math.floor(Date.now() / 1000);
  return signToken({ iss: idp.issuer, sub: 'deployer', aud: 'orders', iat: now, exp: now + 300 }, { key: evil.privateKey, alg: 'RS256', kid: idp.signingKeys[0]!.kid });
}

describe.concurrent('IdP down at start', () => {
  for (const mode of ['reset', 'hang'] as const) {
    it(`(${mode}): process up, /readyz 503, tokens 503 keys_unavailable at once, ready within one retry of the IdP's return; lost: nothing let through`, async (ctx) => {
      const { idp, app, sidecar } = await setup(ctx, { jwks: { retryMinSeconds: 0.2, retryMaxSeconds: 1, timeoutSeconds: 1 } }, { down: mode });
      expect((await fetch(`${sidecar.admin}/healthz`)).status).toBe(200);
      expect(await readyz(sidecar)).toBe(503);
      const valid = await idp.mint({ aud: 'orders' });
      const forged = await forgedFor(idp);

      const during: Outcome[] = [];
      for (let i = 0; i < 5; i++) {
        during.push(await probe(sidecar, 'valid', valid), await probe(sidecar, 'forged', forged), await probe(sidecar, 'none', undefined), await probe(sidecar, 'public', undefined, '/public/x'));
      }
      const summary = new Set(during.map((o) => `${o.kind} ${o.status} ${o.reason ?? ''}`.trim()));
      // A token cannot be judged without keys: 503 (retry later), never a pass and never a 401 that blames the caller.
      // No token is a 401 whatever the keys; a public route needs no keys at all.
      expect(summary).toEqual(new Set(['valid 503 keys_unavailable', 'forged 503 keys_unavailable', 'none 401 missing_token', 'public 200']));
      expect(app.requests.map((r) => r.url)).toEqual(Array(5).fill('/public/x'));
      const single = (await rawExchange(sidecar.inbound!, bearerRequest(valid))).responses[0]!;
      expect(single.headers['retry-after']).toBe('1');
      expect(single.headers['www-authenticate']).toBeUndefined();

      idp.setDown(false);
      // retryMaxSeconds is 1: the next attempt comes within a second (plus one fetch).
      await sidecar.waitReady(5000);
      expect((await probe(sidecar, 'valid', valid)).status).toBe(200);
      expect((await probe(sidecar, 'forged', forged)).reason).toBe('bad_signature');
      expect(app.requests.filter((r) => r.url === '/api/x')).toHaveLength(1);
      await flushLogs(sidecar);
      expect(tokenLeaks(sidecar.output(), [valid, forged])).toEqual([]);
    });
  }
});

describe.concurrent('JWKS outage after start: stale keys until jwks.maxStaleSeconds, then fail closed', () => {
  for (const mode of ['503', 'hang', 'reset'] as const) {
    it(`(${mode}): known keys keep verifying, then every token is 503 and /readyz 503; lost: nothing let through after the limit, no forged token ever`, async (ctx) => {
      const maxStale = 3;
      const { idp, app, sidecar } = await setup(ctx, {
        jwks: { refreshIntervalSeconds: 0.5, retryMinSeconds: 0.2, retryMaxSeconds: 0.5, timeoutSeconds: 0.5, cooldownSeconds: 1, maxStaleSeconds: maxStale },
      });
      const cached = await idp.mint({ aud: 'orders' });
      expect((await probe(sidecar, 'cached', cached)).status).toBe(200);
      const forged = await forgedFor(idp);
      const sent = [cached, forged];

      const outageStart = Date.now();
      idp.setDown(mode);
      const outcomes: Outcome[] = [];
      // Probe through the outage until every kind has been refused for a while.
      while (Date.now() - outageStart < (maxStale + 2.5) * 1000) {
        const fresh = await idp.mint({ aud: 'orders' }); // never seen before: only the stale keys can verify it
        const unknownKid = tamperHeader(fresh, { kid: `rotated-${outcomes.length}` });
        sent.push(fresh, unknownKid);
        outcomes.push(
          await probe(sidecar, 'fresh', fresh),
          await probe(sidecar, 'cached', cached),
          await probe(sidecar, 'forged', forged),
          await probe(sidecar, 'unknown-kid', unknownKid),
        );
        await sleep(100);
      }
      const ready = await readyz(sidecar);
      idp.setDown(false);

      for (const o of outcomes) {
        if (o.kind === 'forged') expect(`${o.status} ${o.reason}`).toMatch(/^(401 bad_signature|503 keys_unavailable)$/);
        if (o.kind === 'unknown-kid') expect(`${o.status} ${o.reason}`).toMatch(/^(401 unknown_key|503 keys_unavailable)$/);
        if (o.kind === 'fresh' || o.kind === 'cached') expect(`${o.status} ${o.reason ?? ''}`.trim()).toMatch(/^(200|503 keys_unavailable)$/);
      }
      // Stale keys carried real tokens through the first part of the outage, the fresh ones included.
      expect(outcomes.some((o) => o.kind === 'fresh' && o.status === 200)).toBe(true);
      // Fail closed and stay closed: after the first 503 for a real token, no real token passes until the IdP is back.
      // (An unknown kid is 503 from the first failed refetch on: it may be a key we cannot fetch, SPEC "keys unobtainable".)
      const firstClosed = outcomes.findIndex((o) => (o.kind === 'fresh' || o.kind === 'cached') && o.status === 503);
      expect(firstClosed).toBeGreaterThan(0);
      expect(outcomes.slice(firstClosed).filter((o) => o.status === 200)).toEqual([]);
      expect(outcomes.slice(firstClosed).length).toBeGreaterThan(4);
      // The keys were not dropped at the first failed refresh (every 0.5 s) but kept for seconds, towards maxStaleSeconds.
      expect(outcomes[firstClosed]!.at - outageStart).toBeGreaterThanOrEqual((maxStale - 1.5) * 1000);
      expect(ready).toBe(503);
      // Exactly the 2xx answers reached the app (plus the one before the outage).
      expect(app.requests).toHaveLength(1 + outcomes.filter((o) => o.status === 200).length);

      await sidecar.waitReady(5000);
      expect((await probe(sidecar, 'cached', cached)).status).toBe(200);
      await flushLogs(sidecar);
      expect(tokenLeaks(sidecar.output(), sent)).toEqual([]);
    });
  }
});

describe('key rotation with the verified-token cache in play', () => {
  it('a new kid is accepted after the refresh; a removed key stops passing even for a cached token; lost: nothing let through after removal', async (ctx) => {
    // Default cooldown (30 s): unknown kids do not force refetches here, so the periodic refresh does the work.
    const { idp, app, sidecar } = await setup(ctx, { jwks: { refreshIntervalSeconds: 1 } });
    const oldKid = idp.signingKeys[0]!.kid;
    const old = await idp.getToken('orders', 'orders');
    expect((await probe(sidecar, 'old', old)).status).toBe(200);
    expect((await probe(sidecar, 'old', old)).status).toBe(200); // now a cache hit

    await idp.rotateKeys(); // rollover: the new key signs, the old one is still published
    const fresh = await idp.getToken('orders', 'orders');
    expect(fresh.split('.')[0]).not.toBe(old.split('.')[0]);
    const beforeAccept: Outcome[] = [];
    for (;;) {
      const o = await probe(sidecar, 'new', fresh);
      if (o.status === 200) break;
      beforeAccept.push(o);
      expect(beforeAccept.length, 'new kid accepted within a few refresh intervals').toBeLessThan(100);
      await sleep(50);
    }
    // Until the refresh sees the new kid, it is simply unknown: 401, never a 5xx.
    for (const o of beforeAccept) expect(`${o.status} ${o.reason}`).toBe('401 unknown_key');
    expect((await probe(sidecar, 'old', old)).status).toBe(200);

    await idp.rotateKeys({ keepOld: false }); // the old keys are withdrawn (e.g. compromised)
    const forgedWithOldKid = tamperHeader(fresh, { kid: oldKid });
    const trail: Outcome[] = [];
    for (;;) {
      const o = await probe(sidecar, 'old', old);
      trail.push(o);
      if (o.status !== 200) break;
      expect(trail.length, 'old kid refused within a few refresh intervals').toBeLessThan(100);
      await sleep(50);
    }
    expect(`${trail.at(-1)!.status} ${trail.at(-1)!.reason}`).toBe('401 unknown_key');
    const removal = await sidecar.waitForLog((l) => l.event === 'jwks_updated' && Array.isArray(l.kids) && !(l.kids as string[]).includes(oldKid));
    expect(removal.kids).toHaveLength(1);
    // Once refused, refused for good: the cache entry was dropped with the old key set.
    for (let i = 0; i < 20; i++) expect((await probe(sidecar, 'old', old)).reason).toBe('unknown_key');
    expect((await probe(sidecar, 'forged', forgedWithOldKid)).reason).toBe('unknown_key');
    const newest = await idp.getToken('orders', 'orders');
    for (let i = 0; ; i++) {
      if ((await probe(sidecar, 'newest', newest)).status === 200) break;
      expect(i).toBeLessThan(100);
      await sleep(50);
    }
    // old twice, fresh once, old once more during the rollover, old until the refresh removed it, newest once.
    expect(app.requests).toHaveLength(2 + 1 + 1 + (trail.length - 1) + 1);
    await flushLogs(sidecar);
    expect(tokenLeaks(sidecar.output(), [old, fresh, newest, forgedWithOldKid])).toEqual([]);
  });

  it('emergency withdrawal of a stolen key: it keeps passing until the next refresh (the documented window), and SIGHUP closes the window at once', async (ctx) => {
    const { idp, sidecar } = await setup(ctx, {}); // default jwks.refreshIntervalSeconds: 300
    const stolen = idp.signingKeys[0]!;
    const now = Math.floor(Date.now() / 1000);
    const minted = signRaw({ alg: stolen.alg, typ: 'at+jwt', kid: stolen.kid }, { iss: idp.issuer, sub: 'deployer', aud: 'orders', iat: now, exp: now + 300 }, stolen.private);
    expect((await probe(sidecar, 'stolen', minted)).status).toBe(200);

    await idp.rotateKeys({ keepOld: false });
    // The IdP no longer publishes the key, but nothing tells the sidecar before its next refresh: the window SECURITY.md describes.
    const another = signRaw({ alg: stolen.alg, typ: 'at+jwt', kid: stolen.kid }, { iss: idp.issuer, sub: 'deployer', aud: 'orders', iat: now, exp: now + 301 }, stolen.private);
    expect((await probe(sidecar, 'stolen, still in the window', another)).status).toBe(200);

    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded');
    for (const t of [minted, another]) expect(await probe(sidecar, 'stolen after SIGHUP', t)).toMatchObject({ status: 401, reason: 'unknown_key' });
    expect((await probe(sidecar, 'new key', await idp.getToken('orders', 'orders'))).status).toBe(200);
  });

  it('emergency withdrawal with no replacement key: a JWKS with nothing usable in it withdraws the held keys at SIGHUP, and usable keys bring them back', async (ctx) => {
    const { idp, sidecar } = await setup(ctx, {});
    const token = await idp.getToken('orders', 'orders');
    expect((await probe(sidecar, 'before', token)).status).toBe(200);

    // The IdP's only key is withdrawn and nothing replaces it yet: an empty set, then a set whose only key is for
    // encryption. Each is the IdP's word that it vouches for no signing key, not an outage.
    const encryptionKey = { ...createPublicKey(idp.signingKeys[0]!.private).export({ format: 'jwk' }), kid: idp.signingKeys[0]!.kid, use: 'enc' };
    const withdrawn = (l: LogLine) => l.event === 'jwks_keys_withdrawn';
    const loaded = (l: LogLine) => l.event === 'jwks_updated' && l.msg === 'issuer keys loaded';
    const nth = (pred: (l: LogLine) => boolean, n: number) => sidecar.waitForLog((l) => pred(l) && sidecar.logs.filter(pred).length >= n);
    for (const [i, published] of [{ keys: [] }, { keys: [encryptionKey] }].entries()) {
      idp.publishJwks(published);
      sidecar.signal('SIGHUP');
      await nth(withdrawn, i + 1);
      expect(await probe(sidecar, 'withdrawn', token)).toMatchObject({ status: 503, reason: 'keys_unavailable' });
      expect((await fetch(`${sidecar.admin}/readyz`)).status).toBe(503);
      idp.publishJwks(undefined);
      sidecar.signal('SIGHUP');
      await nth(loaded, i + 2);
      expect((await probe(sidecar, 'keys back', token)).status).toBe(200);
    }
  });
});
