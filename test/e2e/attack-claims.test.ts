import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyObject } from 'node:crypto';
import { bearerRequest, expectRefused, rawExchange, signRaw, startRecordingApp, type RecordingApp, type Refusal } from '../support/attacks.js';
import { clientAssertion, startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { tamperPayload, testKeyPair } from '../support/tokens.js';
import { metricsText, sample } from './inbound-support.js';

/**
 * Claim-level attacks, RFC 8725 §3.8, §3.9, §3.11 and §3.12, against two
 * trusted issuers that share one signing key (the multi-tenant case: every
 * tenant of a cloud IdP signs with the same keys, so only `iss` and `aud`
 * tell tenants apart). Tenant A is the real IdP; tenant B is configured with
 * the same JWKS URI and its own audience.
 */

// Plain http: its keys come from the local test IdP's http jwksUri (an https issuer needs an https one).
const TENANT_B = 'http://tenant-b.example/v2.0';
let idp: TestIdp;
let app: RecordingApp;
let sidecar: SidecarProcess;
let A: string;

beforeAll(async () => {
  idp = await startIdp({
    clients: [
      { clientId: 'orders', clientSecret: 's1' },
      { clientId: 'deployer', clientSecret: 's2' },
    ],
  });
  A = idp.issuer;
  app = await startRecordingApp();
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    inbound: {
      target: app.url,
      audience: 'orders',
      typ: 'at+jwt',
      issuers: [{ issuer: A }, { issuer: TENANT_B, jwksUri: idp.jwksUri, audience: 'orders-b' }],
      rules: [
        { match: { path: '/tenant-a/**' }, allow: [{ iss: A }] },
        { match: { path: '/tenant-b/**' }, allow: [{ iss: TENANT_B }] },
        { match: { path: '/admin/**' }, allow: [{ iss: A, sub: 'deployer' }] },
        { match: { path: '/**' }, allow: [{ iss: [A, TENANT_B] }] },
      ],
    },
  });
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), idp?.close()]);
});

const reject = (reason: string): Refusal => ({ status: 401, reason });
const deny: Refusal = { status: 403, reason: 'policy_denied' };
const refused = (label: string, token: string, want: Refusal, path = '/api/orders') => expectRefused(sidecar, app, label, bearerRequest(token, { path }), want, [token]);
const mintA = (claims: Record<string, unknown> = {}, opts: Parameters<TestIdp['mint']>[1] = {}) => idp.mint({ aud: 'orders', ...claims }, opts);
const mintB = (claims: Record<string, unknown> = {}, opts: Parameters<TestIdp['mint']>[1] = {}) => idp.mint({ aud: 'orders-b', iss: TENANT_B, ...claims }, opts);

async function accepted(token: string, path = '/api/orders'): Promise<Record<string, unknown>> {
  const before = app.requests.length;
  const res = (await rawExchange(sidecar.inbound!, bearerRequest(token, { path }))).responses[0]!;
  expect(res.status, `${path}: ${res.body}`).toBe(200);
  expect(app.requests.length).toBe(before + 1);
  return app.requests.at(-1)!.headers as Record<string, unknown>;
}

describe('control', () => {
  it('a real IdP token (tenant A) and a tenant B token signed with the shared key are both accepted on their own routes', async () => {
    expect((await accepted(await idp.getToken('orders', 'orders'), '/tenant-a/x'))['x-peer-iss']).toBe(A);
    expect((await accepted(await mintB(), '/tenant-b/x'))['x-peer-iss']).toBe(TENANT_B);
  });
});

describe('RFC 8725 §3.8: validate issuer and subject', () => {
  it('iss is matched exactly: near-misses and non-strings are unknown_issuer, a missing iss is missing_claim, none costs a network call', async () => {
    const before = { ...idp.counts };
    const u = new URL(A);
    const nearMisses: unknown[] = [
      `${A}/`, `${A} `, ` ${A}`, `${A}#`, `${A}?`, `${A}/.`, A.toUpperCase(), `https://${u.host}`, `http://localhost:${u.port}`,
      `${TENANT_B}/`, TENANT_B.replace('tenant-b', 'tenant-c'), [A], { iss: A }, 1, true, '',
    ];
    for (const iss of nearMisses) await refused(`iss ${JSON.stringify(iss)}`, await mintA({ iss }), reject('unknown_issuer'));
    await refused('iss null', await mintA({ iss: null }), reject('unknown_issuer'));
    await refused('no iss', await mintA({ iss: undefined }), reject('missing_claim'));
    expect(idp.counts).toEqual(before);
  });

  it('iss spoofing between tenants that share a key: rewriting iss breaks the signature (bad_signature)', async () => {
    await refused('A token claiming B', tamperPayload(await idp.getToken('orders', 'orders'), { iss: TENANT_B, aud: 'orders-b' }), reject('bad_signature'));
    await refused('B token claiming A', tamperPayload(await mintB(), { iss: A, aud: 'orders' }), reject('bad_signature'));
  });

  it('tenant confusion: a valid token of tenant B never reaches routes that rules pin to tenant A', async () => {
    const b = await mintB({ sub: 'deployer' });
    await refused('B on /tenant-a', b, deny, '/tenant-a/orders');
    await refused('B deployer on /admin', b, deny, '/admin/users');
    const a = await idp.getToken('orders', 'orders');
    await refused('A on /tenant-b', a, deny, '/tenant-b/orders');
  });

  it('sub is compared exactly: case, whitespace, NUL, lists and objects do not match a rule on sub', async () => {
    expect((await accepted(await mintA({ sub: 'deployer' }), '/admin/users'))['x-peer-sub']).toBe('deployer');
    for (const sub of ['Deployer', 'deployer ', ' deployer', 'deployer\u0000', 'deployer\n', ['deployer'], { sub: 'deployer' }, 'deployer@' + A]) {
      await refused(`sub ${JSON.stringify(sub)}`, await mintA({ sub }), deny, '/admin/users');
    }
  });

  it('a sub or claim holding a lone surrogate (no UTF-8 form: "a\\ud800" and "a\\udfff" would reach the app as one x-peer-sub) is malformed_token', async () => {
    for (const over of [{ sub: 'deployer\ud800' }, { sub: '\udfffdeployer' }, { roles: ['admin\udc00'] }]) {
      await refused(`claims ${JSON.stringify(over)}`, await mintA(over), reject('malformed_token'), '/admin/users');
    }
    // Control: a character outside the BMP is a surrogate pair, and goes through percent-encoded.
    expect(decodeURIComponent(String((await accepted(await mintA({ sub: 'deployer\u{1F511}' })))['x-peer-sub']))).toBe('deployer\u{1F511}');
  });
});

describe('RFC 8725 §3.9: use and validate audience', () => {
  it('a token of issuer A with the audience of B, and of B with the audience of A, are audience_mismatch', async () => {
    await refused('A with aud orders-b', await idp.getToken('orders', 'orders-b'), reject('audience_mismatch'));
    await refused('B with aud orders', await mintB({ aud: 'orders' }), reject('audience_mismatch'));
    // Each line names the audience that was checked: the issuer's own for B, inbound.audience for A.
    const line = (iss: string) => sidecar.waitForLog((l) => l.event === 'token_rejected' && l.reason === 'audience_mismatch' && l.issuer === iss);
    expect((await line(A)).audience).toBe('orders');
    expect((await line(TENANT_B)).audience).toBe('orders-b');
    await refused('B on /tenant-a', await mintB(), deny, '/tenant-a/orders');
    expect((await sidecar.waitForLog((l) => l.event === 'policy_denied' && l.issuer === TENANT_B)).audience).toBe('orders-b');
  });

  it('aud must contain the configured audience exactly: near-misses, wrong types and a missing aud are audience_mismatch', async () => {
    for (const aud of ['Orders', 'orders ', 'orders/', 'orders,payments', 'payments', ['payments'], [], [['orders']], { orders: true }, 1, null, '']) {
      await refused(`aud ${JSON.stringify(aud)}`, await mintA({ aud }), reject('audience_mismatch'));
    }
    await refused('no aud', await mintA({ aud: undefined }), reject('audience_mismatch'));
    // Control: a list that contains our audience is fine (RFC 7519 §4.1.3).
    await accepted(await mintA({ aud: ['payments', 'orders'] }));
  });

  it('a real token the IdP issued for another service (audience substitution) is audience_mismatch', async () => {
    await refused('token for payments', await idp.getToken('orders', 'payments'), reject('audience_mismatch'));
  });
});

describe('RFC 8725 §3.11: use explicit typing (inbound.typ: at+jwt)', () => {
  it('any typ but at+jwt is malformed_token', async () => {
    for (const typ of ['JWT', 'jwt', null, 'dpop+jwt', 'logout+jwt', 'secevent+jwt', 'application/jwt', 'at+jwt ', 'at+jwt+jwt']) {
      await refused(`typ ${JSON.stringify(typ)}`, await mintA({}, { typ }), reject('malformed_token'));
    }
    await refused('typ list', await mintA({}, { header: { typ: ['at+jwt'] } }), reject('malformed_token'));
  });

  it('control: application/at+jwt (RFC 9068 §2.1) and another letter case (media types are case-insensitive) are accepted', async () => {
    await accepted(await mintA({}, { typ: 'application/at+jwt' }));
    await accepted(await mintA({}, { typ: 'AT+JWT' }));
  });
});

describe('RFC 8725 §3.12: mutually exclusive validation for different kinds of JWTs', () => {
  it('an ID token (typ JWT, nonce, at_hash, aud = a client that is also our audience) is malformed_token', async () => {
    const idToken = await mintA({ sub: 'deployer', aud: 'orders', azp: 'orders', nonce: 'n-0S6_WzA2Mj', at_hash: 'MTIzNDU2Nzg5MDEyMzQ1Ng', auth_time: 1 }, { typ: 'JWT' });
    await refused('ID token', idToken, reject('malformed_token'), '/admin/users');
  });

  it('a logout token and a private_key_jwt client assertion replayed as bearer tokens are refused', async () => {
    await refused('logout token', await mintA({ events: { 'http://schemas.openid.net/event/backchannel-logout': {} }, sid: 's' }, { typ: 'logout+jwt' }), reject('malformed_token'));
    const client = await testKeyPair('ES256');
    const assertion = await clientAssertion('orders', `${A}/token`, { key: client.privateKey, alg: 'ES256', kid: client.kid });
    await refused('client assertion', assertion, reject('unknown_issuer'));
  });

  it('without inbound.typ, audiences still separate kinds: an ID token for a client id is audience_mismatch (residual risk: see SECURITY.md)', async () => {
    const loose = await startSidecar({
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: A }] },
    });
    try {
      const idToken = await mintA({ aud: 'frontend-client', azp: 'frontend-client', nonce: 'n' }, { typ: 'JWT' });
      await expectRefused(loose, app, 'ID token for a client id', bearerRequest(idToken), reject('audience_mismatch'), [idToken]);
      // The residual risk, stated as a fact: with no typ configured, a JWT whose aud is our audience is judged on its claims alone.
      const before = app.requests.length;
      const sameAud = await mintA({ aud: 'orders', nonce: 'n' }, { typ: 'JWT' });
      expect((await rawExchange(loose.inbound!, bearerRequest(sameAud))).responses[0]!.status).toBe(200);
      expect(app.requests.length).toBe(before + 1);
    } finally {
      await loose.stop();
    }
  });
});

describe('deeply nested claims: JSON.parse takes a nesting that JSON.stringify overflows the stack on', () => {
  // About 5,000 levels: a 13 KB token once maxTokenBytes allows it. The payload is written as text, since building
  // it as an object would overflow JSON.stringify here too.
  const DEEP = 5_000;
  let deep: SidecarProcess;
  beforeAll(async () => {
    deep = await startSidecar({
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      limits: { maxHeaderBytes: 65_536 },
      inbound: {
        target: app.url,
        audience: 'orders',
        maxTokenBytes: 32_768,
        issuers: [{ issuer: A }],
        rules: [
          { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
          { match: { path: '/**' }, allow: [{ iss: A }] },
        ],
      },
    });
  });
  afterAll(async () => {
    await deep?.stop();
  });

  const nested = (depth: number, leaf = '"deployer"') => '['.repeat(depth) + leaf + ']'.repeat(depth);
  /** A payload with `sub` (or `aud`) replaced by raw JSON text, signed with the IdP's real key or an attacker's. */
  const token = (raw: { sub?: string; aud?: string; iss?: string }, signer = idp.signingKeys[0]!.private) => {
    const now = Math.floor(Date.now() / 1000);
    const json = `{"iss":${raw.iss ?? JSON.stringify(A)},"sub":${raw.sub ?? '"orders"'},"aud":${raw.aud ?? '"orders"'},"iat":${now},"exp":${now + 300}}`;
    const key = idp.signingKeys[0]!;
    return signRaw({ alg: key.alg, typ: 'at+jwt', kid: key.kid }, Buffer.from(json).toString('base64url'), signer);
  };
  const refusedBy = async (label: string, t: string, want: Refusal, path = '/api/orders') => {
    const from = deep.logs.length;
    await expectRefused(deep, app, label, bearerRequest(t, { path }), want, [t]);
    const event = want.status === 403 ? 'policy_denied' : 'token_rejected';
    return deep.waitForLog((l) => deep.logs.indexOf(l) >= from && l.event === event);
  };

  it(`a ${DEEP}-level sub or aud gets its 401 with the reason it earns, audited with the claim cut short (was 500 internal_error)`, async () => {
    const attacker = KeyObject.from((await testKeyPair('RS256')).privateKey);
    const badSignatures = async () => sample(await metricsText(deep.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'bad_signature' });
    const rejectedBefore = await badSignatures();
    // Forged: the signature decides, and the audit line shows the claim as bounded JSON marked cut (…).
    const forged = await refusedBy('forged deep sub', token({ sub: nested(DEEP) }, attacker), reject('bad_signature'));
    expect(forged.claims).toMatchObject({ verified: false, iss: A, aud: 'orders', sub: `${'['.repeat(128)}…` });
    expect(await badSignatures()).toBe(rejectedBefore + 1);
    // Refused for its claims before any signature check: audience, then issuer.
    const aud = await refusedBy('deep aud', token({ aud: nested(DEEP, '"orders"') }), reject('audience_mismatch'));
    expect((aud.claims as { aud: string }).aud).toBe(`${'['.repeat(128)}…`);
    await refusedBy('deep sub, unknown iss', token({ sub: nested(DEEP), iss: '"http://unknown.example"' }, attacker), reject('unknown_issuer'));
    expect(deep.logs.filter((l) => l.event === 'authorize_failed' || l.event === 'inbound_failed')).toEqual([]);
  });

  it('a token the trusted IdP really signed with a claim nested past 64 levels is 401 malformed_token, audited, never 500', async () => {
    for (const depth of [DEEP, 64]) {
      const line = await refusedBy(`signed, sub ${depth} deep`, token({ sub: nested(depth) }), reject('malformed_token'));
      expect(line).toMatchObject({ reason: 'malformed_token', detail: 'token claims nest deeper than 64 levels', claims: { verified: false, sub: expect.stringMatching(/^\[{64}/) } });
    }
    expect(deep.logs.filter((l) => l.event === 'authorize_failed' || l.event === 'inbound_failed')).toEqual([]);
  });

  it('up to 64 levels (the payload counting as one) a signed token passes: claims as JSON to the app, a denial audited with the claim cut short', async () => {
    const before = app.requests.length;
    const res = (await rawExchange(deep.inbound!, bearerRequest(token({ sub: nested(63) })))).responses[0]!;
    expect(res.status, res.body).toBe(200);
    const claims = JSON.parse(Buffer.from(String(app.requests[before]!.headers['x-peer-claims']), 'base64url').toString('utf8'));
    expect(JSON.stringify(claims.sub)).toBe(nested(63));
    // The same sub on /admin/** (sub must be "deployer"): denied, and the policy_denied line carries a bounded sub.
    const denied = await refusedBy('signed, sub 63 deep, on /admin', token({ sub: nested(63) }), deny, '/admin/users');
    expect(denied.claims).toMatchObject({ verified: true, sub: `${'['.repeat(63)}"deployer"${']'.repeat(55)}…` });
  });
});
