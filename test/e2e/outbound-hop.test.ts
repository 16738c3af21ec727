import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { metricsText, sample, send } from './outbound-support.js';

/**
 * Two workloads, each hop through both sidecars: the test plays app A, calls
 * sidecar A's outbound listener; sidecar A gets a token from the real IdP and
 * forwards to sidecar B's inbound listener, which verifies it and forwards to
 * app B with the verified identity.
 */
const dir = mkdtempSync(join(tmpdir(), 'outbound-hop-'));
const pkKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const federatedKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
let idp: TestIdp;
let appB: UpstreamApp;
let sidecarB: SidecarProcess;
const sidecarsA: Record<string, SidecarProcess> = {};

async function startA(name: string, tokenSource: Record<string, unknown>): Promise<SidecarProcess> {
  const s = await startSidecar({
    service: name,
    outbound: {
      tokenSource,
      routes: [
        { host: 'payments', target: sidecarB.inbound!, audience: 'payments' },
        // The same peer under an audience it does not accept: proves the audience binding is enforced end to end.
        { host: 'payments-wrong-aud', target: sidecarB.inbound!, audience: 'ledger' },
      ],
    },
  });
  sidecarsA[name] = s;
  return s;
}

beforeAll(async () => {
  idp = await startIdp({
    clients: [
      { clientId: 'orders', clientSecret: 'orders-secret' },
      { clientId: 'orders-pk', privateKey: { key: pkKey.privateKey, alg: 'ES256' } },
      { clientId: 'orders-fed', privateKey: { key: federatedKey.privateKey, alg: 'RS256' }, allowAssertionReuse: true },
    ],
  });
  appB = await startUpstream();
  sidecarB = await startSidecar({
    service: 'payments',
    inbound: {
      target: appB.url,
      audience: 'payments',
      issuers: [{ issuer: idp.issuer }],
      rules: [
        { match: { path: '/admin/**' }, allow: [{ sub: 'orders' }] },
        { match: { path: '/**' }, allow: [{ sub: ['orders', 'orders-pk', 'orders-fed'] }] },
      ],
    },
  });
  const pkFile = join(dir, 'orders-pk.pem');
  writeFileSync(pkFile, pkKey.privateKey.export({ type: 'sec1', format: 'pem' }));
  // A federated client assertion as a platform would project it (RFC 7523 §2.2), rotated by someone else.
  const assertionFile = join(dir, 'federated.jwt');
  const now = Math.floor(Date.now() / 1000);
  writeFileSync(
    assertionFile,
    await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setIssuer('orders-fed').setSubject('orders-fed').setAudience(idp.tokenEndpoint).setIssuedAt(now).setExpirationTime(now + 600).setJti(randomUUID()).sign(federatedKey.privateKey),
  );
  await Promise.all([
    startA('basic', { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' }),
    startA('pk', { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders-pk', privateKeyFile: pkFile }),
    startA('fed', { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'orders-fed', clientAssertionFile: assertionFile }),
  ]);
});

afterAll(async () => {
  await Promise.all([...Object.values(sidecarsA), sidecarB].filter(Boolean).map((s) => s.stop()));
  await appB?.close();
  await idp?.close();
});

describe('hop: app A → outbound sidecar A → inbound sidecar B → app B', () => {
  const cases = [
    ['client_secret_basic', 'basic', 'orders'],
    ['private_key_jwt (SEC1 PEM key)', 'pk', 'orders-pk'],
    ['federated clientAssertionFile', 'fed', 'orders-fed'],
  ] as const;
  for (const [auth, name, sub] of cases) {
    it(`${auth}: app B sees the verified identity, in both addressing modes`, async () => {
      const a = sidecarsA[name]!;
      const before = appB.seen.length;
      const viaProxy = await send(a.outbound!, { method: 'POST', target: 'http://payments/charges?n=1', host: 'payments', body: '{"amount":5}', headers: { 'content-type': 'application/json' } });
      const viaHost = await send(a.outbound!, { target: '/charges/7', host: 'payments' });
      expect([viaProxy.status, viaHost.status]).toEqual([200, 200]);
      const seen = appB.seen.slice(before);
      expect(seen.map((r) => `${r.method} ${r.url}`)).toEqual(['POST /charges?n=1', 'GET /charges/7']);
      for (const r of seen) {
        expect(r.headers['x-peer-sub']).toBe(sub);
        expect(r.headers['x-peer-iss']).toBe(idp.issuer);
        // The bearer token stops at sidecar B (keepToken: false).
        expect(r.headers.authorization).toBeUndefined();
      }
      expect(seen[0]!.bodyBytes).toBe(12);
    });
  }

  it('a token for the wrong audience is rejected by B (401 audience_mismatch) and app B sees nothing', async () => {
    const before = appB.seen.length;
    const r = await send(sidecarsA.basic!.outbound!, { target: '/charges', host: 'payments-wrong-aud' });
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toMatch(/error="invalid_token"/);
    expect(r.json()).toMatchObject({ reason: 'audience_mismatch' });
    expect(appB.seen.length).toBe(before);
  });

  it("B's rules apply to the identity A's sidecar obtained: orders-pk may not reach /admin", async () => {
    const denied = await send(sidecarsA.pk!.outbound!, { target: '/admin/settings', host: 'payments' });
    const allowed = await send(sidecarsA.basic!.outbound!, { target: '/admin/settings', host: 'payments' });
    expect([denied.status, allowed.status]).toEqual([403, 200]);
    expect(denied.json()).toMatchObject({ reason: 'policy_denied' });
  });

  it('a 5 MiB upload crosses both sidecars byte-identical', async () => {
    const body = randomBytes(5 * 1024 * 1024);
    const r = await send(sidecarsA.basic!.outbound!, { method: 'PUT', target: 'http://payments/blobs/1', host: 'payments', body, headers: { 'content-type': 'application/octet-stream' } });
    expect(r.status).toBe(200);
    const seen = appB.seen.at(-1)!;
    expect(seen.bodyBytes).toBe(body.length);
    expect(seen.bodySha256).toBe(createHash('sha256').update(body).digest('hex'));
  });

  it('with the IdP down, calls keep succeeding on the cached token and cached keys', async () => {
    idp.setDown('reset');
    try {
      idp.resetCounts();
      const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => send(sidecarsA.pk!.outbound!, { target: `/during-outage/${i}`, host: 'payments' })));
      expect(replies.map((r) => r.status)).toEqual(Array(20).fill(200));
      expect(idp.counts.token).toBe(0);
    } finally {
      idp.setDown(false);
    }
  });

  it('the token never appears in either sidecar log, and both sides count the hop', async () => {
    await send(sidecarsA.basic!.outbound!, { target: '/count-me', host: 'payments' });
    const a = sidecarsA.basic!;
    const issued = a.logs.find((l) => l.event === 'token_issued' && l.audience === 'payments')!;
    expect(issued).toMatchObject({ source: 'client_credentials', jti: expect.any(String) });
    const jwtShape = /eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\./;
    expect(a.output()).not.toMatch(jwtShape);
    expect(sidecarB.output()).not.toMatch(jwtShape);
    expect(sample(await metricsText(a.admin), 'oidc_sidecar_outbound_requests_total', { route: 'payments', status: '200' })).toBeGreaterThanOrEqual(1);
    expect(sample(await metricsText(sidecarB.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'allow' })).toBeGreaterThanOrEqual(1);
  });
});
