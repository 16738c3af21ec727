import { createHmac, createPublicKey, sign } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { algNoneToken, b64url, corruptSignature, epochSeconds, rawToken, signToken, testKeyPair, type TestKeyPair } from '../support/tokens.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { call, eventually, inboundSidecarConfig, metricsText, rawRequest, sample, type RawResponse } from './inbound-support.js';

/**
 * The core attack catalogue (RFC 8725 and the advisories in FIELD-NOTES),
 * each sent to a sidecar started through the CLI in front of a real app.
 * Every case checks the status, the reason code in body and WWW-Authenticate,
 * that the app saw nothing, and at the end that no token text reached the logs.
 */
describe('inbound: rejects the attack catalogue before the app sees anything', () => {
  let idp: TestIdp;
  let idpEc: TestIdp;
  let app: UpstreamApp;
  let sidecar: SidecarProcess;
  let attacker: Server;
  let attackerHits = 0;
  let attackerUrl: string;
  let evilKey: TestKeyPair;
  const sentTokens: string[] = [];
  let jwksBefore: { rs: number; ec: number; discovery: number };

  beforeAll(async () => {
    idp = await startIdp();
    idpEc = await startIdp({ alg: 'ES256' });
    app = await startUpstream();
    attacker = createServer((_req, res) => {
      attackerHits++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [evilKey.publicJwk] }));
    });
    await new Promise<void>((r) => attacker.listen(0, '127.0.0.1', r));
    attackerUrl = `http://127.0.0.1:${(attacker.address() as AddressInfo).port}`;
    evilKey = await testKeyPair('RS256', 'evil');
    sidecar = await startSidecar(inboundSidecarConfig(app, [idp, idpEc], { typ: 'at+jwt', maxTokenLifetimeSeconds: 3600 }));
    jwksBefore = { rs: idp.counts.jwks, ec: idpEc.counts.jwks, discovery: idp.counts.discovery + idpEc.counts.discovery };
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
    await idp?.close();
    await idpEc?.close();
    await new Promise((r) => attacker?.close(r));
  });

  const now = () => epochSeconds();
  const mint = (claims: Record<string, unknown> = {}, opts: Parameters<TestIdp['mint']>[1] = {}) => idp.mint({ aud: 'orders', ...claims }, opts);
  const idpKey = () => idp.signingKeys[0]!;

  /** Sends a token (or raw request) and checks the refusal; returns the response. */
  async function expectRejected(send: { token?: string; raw?: string; path?: string }, status: number, reason: string): Promise<RawResponse> {
    const seenBefore = app.seen.length;
    const path = send.path ?? '/api/orders';
    if (send.token !== undefined) sentTokens.push(send.token);
    const head = send.raw ?? `GET ${path} HTTP/1.1\r\nHost: orders${send.token !== undefined ? `\r\nAuthorization: Bearer ${send.token}` : ''}`;
    const res = await rawRequest(sidecar.inbound!, head);
    expect(res.status).toBe(status);
    expect(res.json()).toEqual({ error: expect.any(String), reason });
    if (status === 401) expect(res.headers['www-authenticate']).toBe(`Bearer error="invalid_token", error_description="${reason}"`);
    expect(app.seen.length, 'the app must not see a rejected request').toBe(seenBefore);
    return res;
  }

  it('sanity: a real token from each IdP is accepted', async () => {
    for (const i of [idp, idpEc]) {
      const res = await call(sidecar.inbound!, '/api/orders', { token: await i.getToken('orders', 'orders') });
      expect(res.status).toBe(200);
    }
  });

  it('no token, another scheme, or a token only in the query string: missing_token', async () => {
    await expectRejected({}, 401, 'missing_token');
    await expectRejected({ raw: 'GET /api HTTP/1.1\r\nHost: orders\r\nAuthorization: Basic b3JkZXJzOnNlY3JldA==' }, 401, 'missing_token');
    const token = await idp.getToken('orders', 'orders');
    sentTokens.push(token);
    await expectRejected({ path: `/api?access_token=${token}` }, 401, 'missing_token');
  });

  it('CVE-2022-23540: alg none (any case) is unsupported_alg', async () => {
    const claims = { iss: idp.issuer, sub: 'orders', aud: 'orders', iat: now(), exp: now() + 60 };
    await expectRejected({ token: algNoneToken(claims) }, 401, 'unsupported_alg');
    await expectRejected({ token: algNoneToken(claims, { alg: 'nOnE' }) }, 401, 'unsupported_alg');
  });

  it('CVE-2015-9235: HS256 signed with the issuer public key as HMAC secret is unsupported_alg', async () => {
    const pem = createPublicKey(idpKey().private).export({ type: 'spki', format: 'pem' }) as string;
    const header = b64url({ alg: 'HS256', typ: 'at+jwt', kid: idpKey().kid });
    const payload = b64url({ iss: idp.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 60 });
    const sig = createHmac('sha256', pem).update(`${header}.${payload}`).digest('base64url');
    await expectRejected({ token: `${header}.${payload}.${sig}` }, 401, 'unsupported_alg');
  });

  it('CVE-2018-0114: an embedded jwk is never used', async () => {
    const claims = { iss: idp.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 60 };
    const token = await signToken(claims, { key: evilKey.privateKey, alg: 'RS256', kid: 'evil', header: { jwk: evilKey.publicJwk } });
    await expectRejected({ token }, 401, 'malformed_token');
  });

  it('jku and x5u are never followed: the attacker server sees zero requests', async () => {
    const claims = { iss: idp.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 60 };
    for (const header of [{ jku: `${attackerUrl}/jwks.json` }, { x5u: `${attackerUrl}/cert.pem` }, { x5c: ['MIIBIjANBg'] }]) {
      const token = await signToken(claims, { key: evilKey.privateKey, alg: 'RS256', kid: 'evil', header });
      await expectRejected({ token }, 401, 'malformed_token');
    }
    expect(attackerHits).toBe(0);
  });

  it('kid tricks: unknown, path traversal, SQL, a real kid with a forged signature', async () => {
    for (const kid of ['unknown-kid', '../../../../../../dev/null', "' OR '1'='1", 'x'.repeat(2000)]) {
      const token = await signToken(
        { iss: idp.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 60 },
        { key: evilKey.privateKey, alg: 'RS256', kid },
      );
      await expectRejected({ token }, 401, 'unknown_key');
    }
    const forged = await signToken({ iss: idp.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 60 }, { key: evilKey.privateKey, alg: 'RS256', kid: idpKey().kid });
    await expectRejected({ token: forged }, 401, 'bad_signature');
    await expectRejected({ token: corruptSignature(await mint()) }, 401, 'bad_signature');
  });

  it('CVE-2022-21449: a psychic ES256 signature (r = s = 0) is bad_signature', async () => {
    const kid = idpEc.signingKeys[0]!.kid;
    const token = rawToken(
      { alg: 'ES256', typ: 'at+jwt', kid },
      { iss: idpEc.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 60 },
      Buffer.alloc(64).toString('base64url'),
    );
    await expectRejected({ token }, 401, 'bad_signature');
  });

  it('time claims: expired, not yet valid, issued in the future, lifetime too long, no exp', async () => {
    await expectRejected({ token: await mint({ iat: now() - 7200, exp: now() - 3600 }) }, 401, 'expired');
    await expectRejected({ token: await mint({ nbf: now() + 3600, exp: now() + 3700 }) }, 401, 'not_yet_valid');
    await expectRejected({ token: await mint({ iat: now() + 3600, exp: now() + 3700 }) }, 401, 'issued_in_future');
    await expectRejected({ token: await mint({ iat: now(), exp: now() + 7200 }) }, 401, 'lifetime_too_long');
    await expectRejected({ token: await mint({ exp: undefined }) }, 401, 'missing_claim');
    // Not a number at all: malformed, as for exp, not a time the token is early or late for.
    await expectRejected({ token: await mint({ exp: String(now() + 60) }) }, 401, 'malformed_token');
    await expectRejected({ token: await mint({ nbf: 'yesterday' }) }, 401, 'malformed_token');
    await expectRejected({ token: await mint({ iat: 'now' }) }, 401, 'malformed_token');
  });

  it('audience and issuer confusion', async () => {
    // A real token from the IdP, but for another service.
    await expectRejected({ token: await idp.getToken('orders', 'payments') }, 401, 'audience_mismatch');
    // Signed by the second trusted issuer while claiming to be the first: the first's keys do not know it.
    const crossed = await idpEc.mint({ aud: 'orders', iss: idp.issuer });
    await expectRejected({ token: crossed }, 401, 'unknown_key');
    // An issuer that is not configured: refused with no network call at all.
    const counts = { ...idp.counts };
    await expectRejected({ token: await mint({ iss: 'https://evil.example' }) }, 401, 'unknown_issuer');
    await expectRejected({ token: await mint({ iss: `${idp.issuer}/` }) }, 401, 'unknown_issuer');
    expect(idp.counts).toEqual(counts);
  });

  it('RFC 9068 typ: an ID-token-style typ is refused where at+jwt is required', async () => {
    await expectRejected({ token: await mint({}, { typ: 'JWT' }) }, 401, 'malformed_token');
    await expectRejected({ token: await mint({}, { typ: null }) }, 401, 'malformed_token');
  });

  it('crit with an unknown extension, JWE, JSON serialization, garbage', async () => {
    const header = b64url({ alg: 'RS256', typ: 'at+jwt', kid: idpKey().kid, crit: ['urn:x:policy'], 'urn:x:policy': 1 });
    const payload = b64url({ iss: idp.issuer, sub: 'orders', aud: 'orders', iat: now(), exp: now() + 60 });
    const sig = sign('sha256', Buffer.from(`${header}.${payload}`), idpKey().private).toString('base64url');
    await expectRejected({ token: `${header}.${payload}.${sig}` }, 401, 'malformed_token');
    await expectRejected({ token: `${b64url({ alg: 'RSA-OAEP', enc: 'A256GCM' })}.a2V5.aXY.Y2lwaGVy.dGFn` }, 401, 'malformed_token');
    await expectRejected({ raw: `GET /api HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer {"payload":"e30","signatures":[]}` }, 401, 'malformed_token');
    await expectRejected({ token: 'not-a-jwt' }, 401, 'malformed_token');
  });

  it('a token over inbound.maxTokenBytes (8192) is refused though a trusted issuer signed it; one of 8192 bytes passes', async () => {
    // Padded with a claim to either side of the limit, each validly signed: only the size can refuse the larger one.
    let fits = '';
    let over = '';
    for (let pad = 5500; !over; pad++) {
      const token = await mint({ pad: 'x'.repeat(pad) });
      if (token.length <= 8192) fits = token;
      else over = token;
    }
    expect(fits.length).toBeGreaterThan(8180);
    expect(over.length).toBeGreaterThan(8192);
    expect((await call(sidecar.inbound!, '/api/orders', { token: fits })).status).toBe(200);
    await expectRejected({ token: over }, 401, 'malformed_token');
    await expectRejected({ token: '.'.repeat(8000) }, 401, 'malformed_token');
  });

  it('CVE-2025-64527: duplicate Authorization headers are refused, even when both tokens are valid', async () => {
    const a = await idp.getToken('orders', 'orders');
    sentTokens.push(a);
    await expectRejected({ raw: `GET /api HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${a}\r\nAuthorization: Bearer ${a}` }, 401, 'malformed_token');
    await expectRejected({ raw: `GET /api HTTP/1.1\r\nHost: orders\r\nauthorization: Basic eA==\r\nAuthorization: Bearer ${a}` }, 401, 'malformed_token');
  });

  it('a body on a rejected request is not read: the connection is closed instead', async () => {
    const res = await rawRequest(sidecar.inbound!, 'POST /api HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\nConnection: keep-alive', 'hello');
    expect(res.status).toBe(401);
    expect(res.headers.connection).toBe('close');
  });

  it('the kid tricks above cost at most one JWKS refetch per issuer (cooldown) and no extra discovery', async () => {
    expect(idp.counts.jwks - jwksBefore.rs).toBeLessThanOrEqual(1);
    expect(idpEc.counts.jwks - jwksBefore.ec).toBeLessThanOrEqual(1);
    expect(idp.counts.discovery + idpEc.counts.discovery).toBe(jwksBefore.discovery);
  });

  it('audits every rejection with reason, path, method, peer and unverified claims, and never logs a token', async () => {
    const expected = ['missing_token', 'malformed_token', 'unsupported_alg', 'unknown_issuer', 'unknown_key', 'bad_signature', 'expired', 'not_yet_valid', 'issued_in_future', 'audience_mismatch', 'lifetime_too_long', 'missing_claim'];
    const reasons = () => new Set(sidecar.logs.filter((l) => l.event === 'token_rejected').map((l) => l.reason));
    // The child writes logs asynchronously: wait for them to arrive, then assert.
    await eventually(() => expected.every((r) => reasons().has(r)), 5000, 'audit lines').catch(() => undefined);
    for (const r of expected) expect(reasons(), r).toContain(r);
    const rejected = sidecar.logs.filter((l) => l.event === 'token_rejected');
    const expired = rejected.find((l) => l.reason === 'expired')!;
    expect(expired).toMatchObject({ path: '/api/orders', method: 'GET', peer: expect.stringContaining('127.0.0.1'), issuer: idp.issuer });
    expect((expired.claims as Record<string, unknown>).verified).toBe(false);
    // An issuer the config does not trust is the caller's claim: inside `claims`, marked unverified, never top-level.
    const unknownIssuer = rejected.find((l) => l.reason === 'unknown_issuer')!;
    expect(unknownIssuer.issuer).toBeUndefined();
    expect(unknownIssuer.claims).toMatchObject({ verified: false, iss: expect.any(String) });
    // The query string (which carried a token) is not logged, only the path.
    expect(rejected.some((l) => l.reason === 'missing_token' && l.path === '/api')).toBe(true);
    expect(sidecar.output()).not.toContain('access_token=');

    const out = sidecar.output();
    for (const t of sentTokens) {
      const [, payload = '', signature = ''] = t.split('.');
      expect(out).not.toContain(t);
      if (payload.length > 16) expect(out).not.toContain(payload);
      if (signature.length > 16) expect(out).not.toContain(signature);
    }
    const text = await metricsText(sidecar.admin);
    expect(sample(text, 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'bad_signature' })).toBeGreaterThanOrEqual(3);
    expect(sample(text, 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'unsupported_alg' })).toBeGreaterThanOrEqual(3);
  });
});
