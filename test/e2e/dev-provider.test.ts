import { afterEach, describe, expect, it } from 'vitest';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import { rawExchange } from '../support/attacks.js';
import { clientAssertion, startIdp, type TestIdp } from '../support/idp.js';
import { algNoneToken, corruptSignature, decodeToken, tamperPayload, testKeyPair } from '../support/tokens.js';

const started: TestIdp[] = [];
async function idpWith(...args: Parameters<typeof startIdp>): Promise<TestIdp> {
  const idp = await startIdp(...args);
  started.push(idp);
  return idp;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((i) => i.close()));
});

async function jwksOf(idp: TestIdp): Promise<JSONWebKeySet> {
  const res = await fetch(idp.jwksUri);
  expect(res.status).toBe(200);
  return (await res.json()) as JSONWebKeySet;
}

/** Verifies with the IdP's published JWKS, the way a resource server would (RFC 9068 §4). */
async function verifyAt(idp: TestIdp, token: string, audience: string) {
  return jwtVerify(token, createLocalJWKSet(await jwksOf(idp)), { issuer: idp.issuer, audience, typ: 'at+jwt', requiredClaims: ['exp', 'iat'] });
}

describe('dev provider (oidc-provider) as the test IdP', () => {
  it('serves discovery naming the token endpoint and JWKS, and a JWKS with only public keys', async () => {
    const idp = await idpWith();
    const meta = (await (await fetch(idp.discoveryUrl)).json()) as Record<string, any>;
    expect(meta.issuer).toBe(idp.issuer);
    expect(meta.jwks_uri).toBe(idp.jwksUri);
    expect(meta.token_endpoint).toBe(idp.tokenEndpoint);
    expect(meta.grant_types_supported).toContain('client_credentials');
    expect(meta.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(['client_secret_basic', 'client_secret_post', 'private_key_jwt']));
    const jwks = await jwksOf(idp);
    expect(jwks.keys.map((k) => k.kid)).toEqual([idp.signingKeys[0]!.kid]);
    for (const k of jwks.keys) expect(k).not.toHaveProperty('d');
  });

  it('issues an at+jwt for client_secret_basic with iss, aud from `resource`, sub = client, exp = iat + ttl', async () => {
    const idp = await idpWith({ accessTokenTtlSeconds: 120 });
    const token = await idp.getToken('orders', 'payments', { scopes: ['read', 'write'] });
    const { payload, protectedHeader } = await verifyAt(idp, token, 'payments');
    expect(protectedHeader).toMatchObject({ typ: 'at+jwt', alg: 'RS256', kid: idp.signingKeys[0]!.kid });
    expect(payload).toMatchObject({ iss: idp.issuer, aud: 'payments', sub: 'orders', client_id: 'orders', scope: 'read write' });
    expect(payload.exp! - payload.iat!).toBe(120);
    expect(typeof payload.jti).toBe('string');
  });

  it('takes the audience from an `audience` parameter too, and keeps absolute-URI resources as they are', async () => {
    const idp = await idpWith();
    const viaAudience = await idp.getToken('payments', 'orders', { audienceParam: 'audience' });
    expect((await verifyAt(idp, viaAudience, 'orders')).payload.sub).toBe('payments');
    const viaUri = await idp.getToken('orders', 'https://payments.internal/api');
    expect((await verifyAt(idp, viaUri, 'https://payments.internal/api')).payload.aud).toBe('https://payments.internal/api');
  });

  it('authenticates client_secret_post clients', async () => {
    const idp = await idpWith({ clients: [{ clientId: 'batch', clientSecret: 'batch-secret', authMethod: 'client_secret_post' }] });
    const token = await idp.getToken('batch', 'payments');
    expect((await verifyAt(idp, token, 'payments')).payload.sub).toBe('batch');
    const wrong = await idp.tokenRequest({ grant_type: 'client_credentials', resource: 'payments', client_id: 'batch', client_secret: 'nope' });
    expect([wrong.status, wrong.body.error]).toEqual([401, 'invalid_client']);
  });

  it('authenticates private_key_jwt clients (RFC 7523) and refuses a replayed assertion', async () => {
    const key = await testKeyPair('ES256');
    const idp = await idpWith({ clients: [{ clientId: 'signer', privateKey: { key: key.privateKey, alg: 'ES256', kid: key.kid } }] });
    const token = await idp.getToken('signer', 'payments');
    expect((await verifyAt(idp, token, 'payments')).payload).toMatchObject({ sub: 'signer', aud: 'payments' });

    const assertion = await clientAssertion('signer', idp.tokenEndpoint, { key: key.privateKey, alg: 'ES256', kid: key.kid });
    const form = {
      grant_type: 'client_credentials',
      resource: 'payments',
      client_id: 'signer',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    };
    expect((await idp.tokenRequest(form)).status).toBe(200);
    const replay = await idp.tokenRequest(form);
    expect(replay.status).toBe(401);
    expect(replay.body.error).toBe('invalid_client');

    const stranger = await testKeyPair('ES256');
    const forged = await clientAssertion('signer', idp.tokenEndpoint, { key: stranger.privateKey, alg: 'ES256', kid: key.kid });
    expect((await idp.tokenRequest({ ...form, client_assertion: forged })).status).toBe(401);
  });

  it('accepts a reused assertion (a federated file token) for clients that allow it', async () => {
    const key = await testKeyPair('RS256');
    const idp = await idpWith({ clients: [{ clientId: 'pod', privateKey: { key: key.privateKey, alg: 'RS256', kid: key.kid }, allowAssertionReuse: true }] });
    const assertion = await clientAssertion('pod', idp.tokenEndpoint, { key: key.privateKey, alg: 'RS256', kid: key.kid }, 600);
    const form = {
      grant_type: 'client_credentials',
      audience: 'payments',
      client_id: 'pod',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    };
    expect((await idp.tokenRequest(form)).status).toBe(200);
    expect((await idp.tokenRequest(form)).status).toBe(200);
  });

  it('puts CI-shaped claims and a custom subject into the tokens of a CI client, without letting them replace iss/aud/exp', async () => {
    const idp = await idpWith({
      clients: [
        {
          clientId: 'github-main',
          clientSecret: 'ci-secret',
          subject: 'repo:acme/app:environment:production',
          extraClaims: {
            repository: 'acme/app',
            ref: 'refs/heads/main',
            environment: 'production',
            job_workflow_ref: 'acme/app/.github/workflows/deploy.yml@refs/heads/main',
            iss: 'https://evil.example',
            aud: 'everything',
          },
        },
      ],
    });
    const { payload } = await verifyAt(idp, await idp.getToken('github-main', 'deployer'), 'deployer');
    expect(payload).toMatchObject({
      iss: idp.issuer,
      aud: 'deployer',
      sub: 'repo:acme/app:environment:production',
      repository: 'acme/app',
      ref: 'refs/heads/main',
      environment: 'production',
      job_workflow_ref: 'acme/app/.github/workflows/deploy.yml@refs/heads/main',
    });
  });

  it('refuses bad requests with OAuth errors: wrong secret, unknown client, no audience, two audiences', async () => {
    const idp = await idpWith();
    const cc = { grant_type: 'client_credentials', resource: 'payments' };
    const wrong = await idp.tokenRequest(cc, { user: 'orders', password: 'nope' });
    expect([wrong.status, wrong.body.error]).toEqual([401, 'invalid_client']);
    const unknown = await idp.tokenRequest(cc, { user: 'ghost', password: 'x' });
    expect([unknown.status, unknown.body.error]).toEqual([401, 'invalid_client']);
    const none = await idp.tokenRequest({ grant_type: 'client_credentials' }, { user: 'orders', password: 'orders-secret' });
    expect([none.status, none.body.error]).toEqual([400, 'invalid_target']);
    // Said so that it arrives as written: an error_description cannot carry '"' (RFC 6749 §5.2).
    expect(none.body.error_description).toBe("name the audience with a 'resource' or 'audience' parameter");
    const two = await idp.tokenRequest({ grant_type: 'client_credentials', resource: ['a', 'b'] }, { user: 'orders', password: 'orders-secret' });
    expect([two.status, two.body.error]).toEqual([400, 'invalid_target']);
    const grant = await idp.tokenRequest({ grant_type: 'password', resource: 'payments' }, { user: 'orders', password: 'orders-secret' });
    expect(grant.status).toBe(400);
    // An empty or blank audience (`audience=$AUD`, AUD unset) names none: it was a token for aud "" (or " ").
    for (const [param, blank] of [['audience', ''], ['resource', ''], ['audience', ' ']] as const) {
      const r = await idp.tokenRequest({ grant_type: 'client_credentials', [param]: blank }, { user: 'orders', password: 'orders-secret' });
      expect([r.status, r.body], `${param}=${blank}`).toEqual([400, { error: 'invalid_target', error_description: 'the audience (or resource) is empty' }]);
    }
  });

  it('an empty audience does not fall back to a client\'s defaultAudience: it is refused', async () => {
    const idp = await idpWith({ clients: [{ clientId: 'ci', clientSecret: 'ci-secret', defaultAudience: 'deployer' }] });
    const r = await idp.tokenRequest({ grant_type: 'client_credentials', audience: '' }, { user: 'ci', password: 'ci-secret' });
    expect([r.status, r.body.error]).toEqual([400, 'invalid_target']);
    expect((await verifyAt(idp, await idp.getToken('ci', 'payments'), 'payments')).payload.aud).toBe('payments');
  });

  it('reads the audience on every path its router takes as the token endpoint (/Token, /token/), not only /token', async () => {
    const idp = await idpWith({ clients: [{ clientId: 'ci', clientSecret: 'ci-secret', defaultAudience: 'deployer' }] });
    for (const path of ['/Token', '/token/', '/TOKEN']) {
      const res = await fetch(`${idp.issuer}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from('ci:ci-secret').toString('base64')}` },
        body: new URLSearchParams({ grant_type: 'client_credentials', audience: 'payments' }),
      });
      const body = (await res.json()) as { access_token?: string };
      expect(res.status, path).toBe(200);
      // Not the client's default (deployer), which the provider gave when the audience was not rewritten.
      expect((await verifyAt(idp, body.access_token!, 'payments')).payload.aud, path).toBe('payments');
    }
    // And in absolute form (`POST http://host/token`), which its router takes by the path.
    const form = 'grant_type=client_credentials&audience=payments';
    const { host } = new URL(idp.issuer);
    const absolute = await rawExchange(
      idp.issuer,
      `POST ${idp.issuer}/token HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Basic ${Buffer.from('ci:ci-secret').toString('base64')}\r\n` +
        `Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\nConnection: close\r\n\r\n${form}`,
    );
    expect(absolute.responses[0]!.status).toBe(200);
    expect((await verifyAt(idp, absolute.responses[0]!.json().access_token, 'payments')).payload.aud).toBe('payments');
  });

  it('the GitHub Actions emulation keeps a client\'s claims from setting client_id, scope or cnf, as /token does', async () => {
    const idp = await idpWith({
      clients: [{ clientId: 'gh', clientSecret: 'gh-secret', extraClaims: { repository: 'acme/app', client_id: 'orders', scope: 'admin', cnf: { jkt: 'x' }, iss: 'https://evil.example' } }],
    });
    const res = await fetch(`${idp.issuer}/github-actions/token?client=gh&audience=deployer`, { headers: { authorization: 'bearer gh-secret' } });
    expect(res.status).toBe(200);
    const { value } = (await res.json()) as { value: string };
    const { payload } = await jwtVerify(value, createLocalJWKSet(await jwksOf(idp)), { issuer: idp.issuer, audience: 'deployer' });
    expect(payload).toMatchObject({ repository: 'acme/app', sub: 'gh' });
    expect([payload.client_id, payload.scope, payload.cnf]).toEqual([undefined, undefined, undefined]);
  });

  for (const alg of ['ES256', 'EdDSA', 'PS256'] as const) {
    it(`signs with ${alg} when asked`, async () => {
      const idp = await idpWith({ alg });
      const token = await idp.getToken('orders', 'payments');
      expect(decodeProtectedHeader(token).alg).toBe(alg);
      expect((await verifyAt(idp, token, 'payments')).payload.sub).toBe('orders');
    });
  }

  it('rotateKeys puts a new kid in front, keeps the old key published, and can drop it', async () => {
    const idp = await idpWith();
    const oldKid = idp.signingKeys[0]!.kid;
    const before = await idp.getToken('orders', 'payments');
    await idp.rotateKeys();
    const newKid = idp.signingKeys[0]!.kid;
    expect(newKid).not.toBe(oldKid);
    const after = await idp.getToken('orders', 'payments');
    expect(decodeProtectedHeader(after).kid).toBe(newKid);
    expect((await jwksOf(idp)).keys.map((k) => k.kid)).toEqual([newKid, oldKid]);
    await verifyAt(idp, before, 'payments');

    await idp.rotateKeys({ keepOld: false });
    expect((await jwksOf(idp)).keys.map((k) => k.kid)).toEqual([idp.signingKeys[0]!.kid]);
    await expect(verifyAt(idp, before, 'payments')).rejects.toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' });
  });

  it('mint() signs tokens with the real key; tampered, corrupted and alg:none tokens do not verify', async () => {
    const idp = await idpWith({ alg: 'ES256' });
    const token = await idp.mint({ aud: 'payments', sub: 'mallory', environment: 'dev' });
    expect((await verifyAt(idp, token, 'payments')).payload).toMatchObject({ sub: 'mallory', environment: 'dev', iss: idp.issuer });
    const noExp = await idp.mint({ aud: 'payments', exp: undefined });
    expect(decodeToken(noExp).payload).not.toHaveProperty('exp');

    await expect(verifyAt(idp, tamperPayload(token, { sub: 'admin' }), 'payments')).rejects.toMatchObject({ code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' });
    await expect(verifyAt(idp, corruptSignature(token), 'payments')).rejects.toMatchObject({ code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' });
    const none = algNoneToken({ iss: idp.issuer, aud: 'payments', sub: 'x', exp: 9_999_999_999 });
    expect(decodeToken(none).header.alg).toBe('none');
    await expect(verifyAt(idp, none, 'payments')).rejects.toThrow();
  });

  it('counts requests per endpoint and resets the counters', async () => {
    const idp = await idpWith();
    await fetch(idp.discoveryUrl);
    await fetch(idp.jwksUri);
    await fetch(idp.jwksUri);
    await idp.getToken('orders', 'payments');
    expect(idp.counts).toEqual({ discovery: 1, jwks: 2, token: 1, other: 0 });
    idp.resetCounts();
    expect(idp.counts).toEqual({ discovery: 0, jwks: 0, token: 0, other: 0 });
  });

  it("setDown('503'), 'reset' and 'hang' simulate outages; setDown(false) recovers", async () => {
    const idp = await idpWith();
    idp.setDown('503');
    expect((await fetch(idp.jwksUri)).status).toBe(503);
    await expect(idp.getToken('orders', 'payments')).rejects.toThrow(/HTTP 503/);

    idp.setDown('reset');
    await expect(fetch(idp.jwksUri)).rejects.toThrow();

    idp.setDown('hang');
    const pending = fetch(idp.discoveryUrl);
    const outcome = pending.then(() => 'answered', () => 'failed');
    await expect.poll(() => idp.counts.discovery).toBe(1);
    // Recovering releases (cuts) the hung request: it never got an answer.
    idp.setDown(false);
    expect(await outcome).toBe('failed');

    expect((await fetch(idp.jwksUri)).status).toBe(200);
    expect(idp.counts.jwks).toBe(3);
  });

  it('stop() refuses connections and restart() serves again on the same port with the same keys', async () => {
    const idp = await idpWith();
    const token = await idp.getToken('orders', 'payments');
    await idp.stop();
    await expect(fetch(idp.jwksUri)).rejects.toThrow();
    await idp.restart();
    const meta = (await (await fetch(idp.discoveryUrl)).json()) as { issuer: string };
    expect(meta.issuer).toBe(idp.issuer);
    await verifyAt(idp, token, 'payments');
  });
});
