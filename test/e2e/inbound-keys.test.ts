import { afterEach, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { accessTokenClaims, signToken, tamperHeader, testKeyPair, unusableJwks, type SigningKey } from '../support/tokens.js';
import { startJwksServer } from '../unit/inbound-support.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { call, eventually, inboundSidecarConfig, metricsText, sample } from './inbound-support.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function setup(inbound: Record<string, unknown> = {}, opts: { idpDown?: boolean; waitReady?: boolean } = {}) {
  const idp = await startIdp();
  cleanups.push(() => idp.close());
  if (opts.idpDown) idp.setDown('503');
  const app = await startUpstream();
  cleanups.push(() => app.close());
  const sidecar = await startSidecar(inboundSidecarConfig(app, [idp], inbound), { waitReady: opts.waitReady ?? !opts.idpDown });
  cleanups.push(() => sidecar.stop());
  return { idp, app, sidecar };
}

const readyz = async (s: SidecarProcess) => (await fetch(`${s.admin}/readyz`)).status;

describe('inbound keys: readiness, rotation, outages, kid floods', () => {
  it('/readyz is 503 and requests get 503 keys_unavailable until the IdP answers; then it serves', async () => {
    const { idp, app, sidecar } = await setup({ jwks: { retryMinSeconds: 0.1, retryMaxSeconds: 0.2 } }, { idpDown: true });
    expect(await readyz(sidecar)).toBe(503);
    await sidecar.waitForLog((l) => l.event === 'jwks_fetch_failed');
    const waiting = await (await fetch(`${sidecar.admin}/readyz`)).text();
    expect(waiting.startsWith(`not ready\n- waiting for inbound: keys for ${idp.issuer} (`)).toBe(true);
    expect(waiting.split('\n').filter(Boolean)).toHaveLength(2);
    const token = await idp.mint({ aud: 'orders' });
    const res = await call(sidecar.inbound!, '/x', { token });
    expect(res.status).toBe(503);
    expect(res.body).toEqual({ error: expect.any(String), reason: 'keys_unavailable' });
    expect(res.headers.get('www-authenticate')).toBeNull();
    expect(app.seen).toHaveLength(0);
    // The startup loop keeps retrying (backoff) while not ready.
    await eventually(async () => sample(await metricsText(sidecar.admin), 'oidc_sidecar_jwks_fetches_total', { issuer: idp.issuer, result: 'discovery_failed' }) >= 2);
    expect(sample(await metricsText(sidecar.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'error', reason: 'keys_unavailable' })).toBe(1);

    idp.setDown(false);
    await sidecar.waitReady();
    expect((await call(sidecar.inbound!, '/x', { token })).status).toBe(200);
  });

  it('key rotation: a token with a new kid is accepted after one refetch; a removed key stops passing, cached or not', async () => {
    // The shortest cooldown there is (1 s): within it an unknown kid is refused without a fetch, after it one refetch finds the key.
    const { idp, sidecar } = await setup({ jwks: { cooldownSeconds: 1 } });
    const oldToken = await idp.getToken('orders', 'orders');
    expect((await call(sidecar.inbound!, '/x', { token: oldToken })).status).toBe(200);
    expect((await call(sidecar.inbound!, '/x', { token: oldToken })).status).toBe(200); // now cached
    const acceptedAfterCooldown = (token: string) =>
      eventually(async () => {
        const res = await call(sidecar.inbound!, '/x', { token });
        if (res.status !== 200) expect(res.body.reason).toBe('unknown_key');
        return res.status === 200;
      }, 5000, 'the new kid accepted after the cooldown');

    const before = idp.counts.jwks;
    await idp.rotateKeys(); // new key in front, old one still published (rollover)
    const newToken = await idp.getToken('orders', 'orders');
    await acceptedAfterCooldown(newToken);
    expect(idp.counts.jwks - before).toBe(1);
    expect((await call(sidecar.inbound!, '/x', { token: oldToken })).status).toBe(200);

    await idp.rotateKeys({ keepOld: false }); // old keys withdrawn
    const newest = await idp.getToken('orders', 'orders');
    await acceptedAfterCooldown(newest);
    const res = await call(sidecar.inbound!, '/x', { token: oldToken });
    expect(res.status).toBe(401);
    expect(res.body.reason).toBe('unknown_key');
    await sidecar.waitForLog((l) => l.event === 'jwks_updated' && Array.isArray(l.kids) && (l.kids as unknown[]).length === 1 && l.msg === 'issuer keys changed');
  });

  it('key rotation, token without kid: one signed by the new key is accepted after one refetch; a forged one stays 401 bad_signature', async () => {
    const { idp, sidecar } = await setup({ jwks: { cooldownSeconds: 1 } });
    const kidless = (key: SigningKey = idp.signingKeys[0]!.private) => signToken(accessTokenClaims({ iss: idp.issuer, aud: 'orders' }), { key, alg: 'RS256' });
    expect((await call(sidecar.inbound!, '/x', { token: await kidless() })).status).toBe(200);

    const before = idp.counts.jwks;
    await idp.rotateKeys({ keepOld: false }); // the one RSA key replaced: the sidecar's old key is the only candidate it has
    const token = await kidless();
    await eventually(async () => {
      const res = await call(sidecar.inbound!, '/x', { token });
      if (res.status !== 200) expect(res.body.reason).toBe('bad_signature');
      return res.status === 200;
    }, 5000, 'the new key found for a token without kid after the cooldown');
    expect(idp.counts.jwks - before).toBe(1);

    const forged = await call(sidecar.inbound!, '/x', { token: await kidless((await testKeyPair('RS256')).privateKey) });
    expect(forged.status).toBe(401);
    expect(forged.body.reason).toBe('bad_signature');
  });

  it('JWKS outage: last good keys keep verifying within maxStaleSeconds, then 503 keys_unavailable, then recovery', async () => {
    const { idp, sidecar } = await setup({
      // maxStaleSeconds must outlive a refresh and a retry of up to 2 × timeoutSeconds each: 0.2 + 0.1 + 4 × 1 <= 5.
      jwks: { refreshIntervalSeconds: 0.2, retryMinSeconds: 0.1, retryMaxSeconds: 0.2, timeoutSeconds: 1, maxStaleSeconds: 5 },
    });
    idp.setDown('reset');
    await eventually(async () => {
      const text = await metricsText(sidecar.admin);
      return sample(text, 'oidc_sidecar_jwks_fetches_total', { issuer: idp.issuer, result: 'idp_unreachable' }) >= 2;
    }, 15_000, 'failed refreshes');
    // A token the sidecar has never seen (no cache) verifies with the stale keys.
    const token = await idp.mint({ aud: 'orders' });
    expect((await call(sidecar.inbound!, '/x', { token })).status).toBe(200);
    expect(await readyz(sidecar)).toBe(200);
    await sidecar.waitForLog((l) => l.event === 'jwks_fetch_failed' && l.keysUsable === true);

    // Past maxStaleSeconds the keys are no longer trusted: fail closed with 503, also for the cached token.
    await eventually(async () => (await readyz(sidecar)) === 503, 15_000, '/readyz 503 after maxStaleSeconds');
    const stale = await call(sidecar.inbound!, '/x', { token });
    expect(stale.status).toBe(503);
    expect(stale.body.reason).toBe('keys_unavailable');

    idp.setDown(false);
    await sidecar.waitReady();
    expect((await call(sidecar.inbound!, '/x', { token })).status).toBe(200);
    await sidecar.waitForLog((l) => l.event === 'jwks_fetch_recovered');
  });

  it('kid flood: 100 tokens with random kids cost at most one JWKS refetch (cooldown), all 401 unknown_key', async () => {
    const { idp, sidecar, app } = await setup();
    const valid = await idp.getToken('orders', 'orders');
    idp.resetCounts();
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => call(sidecar.inbound!, '/x', { token: tamperHeader(valid, { kid: `flood-${i}-${Math.random()}` }) })),
    );
    for (const r of results) {
      expect(r.status).toBe(401);
      expect(r.body.reason).toBe('unknown_key');
    }
    expect(idp.counts.jwks).toBeLessThanOrEqual(1);
    expect(idp.counts.discovery).toBe(0);
    expect(app.seen).toHaveLength(0);
  });
});

describe('keys in the JWKS that cannot be used', () => {
  it('an RSA key under 2048 bits or a malformed key ahead of the real one: a token without kid still passes, in the sidecar and in verify', async () => {
    const good = await testKeyPair('RS256');
    const { kid: _kid, ...goodWithoutKid } = good.publicJwk;
    const bad = await unusableJwks();
    const jwks = await startJwksServer({ keys: [...bad, goodWithoutKid] });
    cleanups.push(() => jwks.close());
    const app = await startUpstream();
    cleanups.push(() => app.close());
    const iss = 'http://issuer.example';
    const config = { service: 'orders', lifecycle: { watchConfig: false }, inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: iss, jwksUri: jwks.url }] } };
    const sidecar = await startSidecar(config);
    cleanups.push(() => sidecar.stop());
    const token = await signToken(accessTokenClaims({ iss, aud: 'orders' }), { key: good.privateKey, alg: 'RS256' });

    const res = await call(sidecar.inbound!, '/x', { token });
    expect(res.status).toBe(200);
    expect(app.seen.map((r) => r.headers['x-peer-iss'])).toEqual([iss]);
    const forged = await call(sidecar.inbound!, '/x', { token: await signToken(accessTokenClaims({ iss, aud: 'orders' }), { key: (await testKeyPair('RS256')).privateKey, alg: 'RS256' }) });
    expect([forged.status, forged.body.reason]).toEqual([401, 'bad_signature']);
    const logged = await sidecar.waitForLog((l) => l.event === 'jwks_keys_dropped');
    expect(logged.dropped).toEqual([
      { kid: 'rsa-1024', reason: 'RSA modulus of 1024 bits, under the 2048 that RS256 requires' },
      { kid: 'rsa-broken', reason: 'RSA modulus of 0 bits, under the 2048 that RS256 requires' },
      { kid: 'ec-off-curve', reason: expect.stringMatching(/^cannot be imported for ES256: /) },
    ]);
    expect(sidecar.output()).not.toContain(bad[0]!.n);

    const v = await runCli(['verify', '--config', writeConfig(config), '--token', token, '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout)).toMatchObject({ decision: 'allow', reason: 'ok', issuer: iss });
  });
});

describe('inbound lifecycle: reload and drain', () => {
  it('SIGHUP reloads the inbound config (new audience, new keys fetched first); a bad config is refused and the old one keeps serving', async () => {
    const { idp, sidecar, app } = await setup();
    const forOrders = await idp.getToken('orders', 'orders');
    const forPayments = await idp.getToken('orders', 'payments');
    expect((await call(sidecar.inbound!, '/x', { token: forOrders })).status).toBe(200);

    const next = inboundSidecarConfig(app, [idp], { audience: 'payments' });
    // Same listen value as before (port 0 as written by startSidecar), so the socket is kept across the reload.
    sidecar.rewriteConfig(next);
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded');
    expect((await call(sidecar.inbound!, '/x', { token: forPayments })).status).toBe(200);
    const old = await call(sidecar.inbound!, '/x', { token: forOrders });
    expect(old.status).toBe(401);
    expect(old.body.reason).toBe('audience_mismatch');

    sidecar.rewriteConfig({ ...next, inbound: { ...next.inbound, rule: [] } });
    sidecar.signal('SIGHUP');
    const refused = await sidecar.waitForLog((l) => l.event === 'config_reload_refused');
    expect(JSON.stringify(refused.errors)).toContain('inbound.rule');
    expect((await call(sidecar.inbound!, '/x', { token: forPayments })).status).toBe(200);
  });

  it('SIGTERM lets an in-flight verified request finish and exits 0', async () => {
    const idp = await startIdp();
    cleanups.push(() => idp.close());
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const app: UpstreamApp = await startUpstream((_req, res) => {
      void released.then(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('done'));
    });
    cleanups.push(() => app.close());
    const sidecar = await startSidecar(inboundSidecarConfig(app, [idp]));
    const token = await idp.getToken('orders', 'orders');
    const inflight = call(sidecar.inbound!, '/slow', { token });
    await eventually(() => app.seen.length === 1, 10_000, 'the app to receive the request');
    sidecar.signal('SIGTERM');
    await sidecar.waitForLog((l) => l.event === 'shutdown');
    expect(await readyz(sidecar).catch(() => 503)).toBe(503);
    release();
    const res = await inflight;
    expect(res.status).toBe(200);
    expect(res.text).toBe('done');
    expect(await sidecar.exited).toBe(0);
  });
});
