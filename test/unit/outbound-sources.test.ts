import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jwtVerify, createLocalJWKSet, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCaBundle } from '../../src/config/ca-bundle.js';
import { tokenSourceSchema } from '../../src/config/schema.js';
import { TokenUnavailableError } from '../../src/errors.js';
import { FILE_RECHECK_MS } from '../../src/outbound/sources/file.js';
import { createTokenSource, type SourceDeps, type TokenSource } from '../../src/outbound/sources/index.js';
import { TOKEN_EXCHANGE_GRANT } from '../../src/outbound/sources/token-exchange.js';
import { selfSignedCert } from '../support/certs.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { rawToken } from '../support/tokens.js';
import { startStubTokenEndpoint, type StubTokenEndpoint } from './outbound-harness.js';

const dir = mkdtempSync(join(tmpdir(), 'outbound-sources-'));
const clock = { now: () => Date.now(), monotonic: () => performance.now() };
const deps = (extra: Partial<SourceDeps> = {}): SourceDeps => ({ clock, env: {}, timeoutMs: 5000, configPath: 'outbound.tokenSource', ...extra });
const sources: TokenSource[] = [];
function source(cfg: Record<string, unknown>, extra: Partial<SourceDeps> = {}): TokenSource {
  const parsed = tokenSourceSchema.parse(cfg);
  // parseConfig puts the CA bundle beside `caFile`; here the source block is parsed alone.
  const ca = 'caFile' in parsed && parsed.caFile ? { ca: readCaBundle(parsed.caFile, 'outbound.tokenSource.caFile') } : {};
  const s = createTokenSource({ ...parsed, ...ca }, deps(extra));
  sources.push(s);
  return s;
}
const jwtWith = (claims: Record<string, unknown>) => rawToken({ alg: 'RS256', typ: 'JWT' }, claims, 'c2lnbmF0dXJl');
const inSeconds = (s: number) => Math.floor(Date.now() / 1000) + s;

const pkjwtKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
let idp: TestIdp;

beforeAll(async () => {
  idp = await startIdp({
    clients: [
      { clientId: 'orders', clientSecret: 'orders s3cret:with+specials' },
      { clientId: 'poster', clientSecret: 'poster-secret', authMethod: 'client_secret_post' },
      { clientId: 'signer', privateKey: { key: pkjwtKey.privateKey, alg: 'ES256' } },
    ],
  });
});
afterAll(async () => {
  await Promise.all(sources.map((s) => s.close()));
  await idp.close();
});

async function verifyAtIdp(token: string) {
  const jwks = (await (await fetch(idp.jwksUri)).json()) as { keys: [] };
  return (await jwtVerify(token, createLocalJWKSet(jwks), { issuer: idp.issuer })).payload;
}

describe('client_credentials against a real OpenID provider', () => {
  it('client_secret_basic with a secret full of specials, token endpoint from discovery, audience as RFC 8707 resource', async () => {
    const s = source({ type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders s3cret:with+specials' });
    const before = idp.counts.discovery;
    const sentAfter = Date.now();
    const t = await s.fetch({ audience: 'payments', scopes: ['read', 'write'] });
    const claims = await verifyAtIdp(t.token);
    expect(claims).toMatchObject({ aud: 'payments', client_id: 'orders', scope: 'read write' });
    // The earlier of exp and expires_in counted from when the request was sent: the IdP's exp is its whole second of
    // issue plus the lifetime, so when the request crosses into the next second, expires_in is the earlier one.
    const exp = (claims.exp as number) * 1000;
    expect(t.expiresAt).toBeLessThanOrEqual(exp);
    expect(t.expiresAt).toBeGreaterThanOrEqual(Math.min(exp, sentAfter + ((claims.exp as number) - (claims.iat as number)) * 1000));
    expect(t.jti).toBe(claims.jti);
    await s.fetch({ audience: 'ledger', scopes: [] });
    expect(idp.counts.discovery - before).toBe(1);
  });

  it('client_secret_post with a static tokenEndpoint and audienceParam: audience (Auth0 style)', async () => {
    const s = source({ type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'poster', clientSecret: 'poster-secret', authMethod: 'client_secret_post', audienceParam: 'audience' });
    expect(await verifyAtIdp((await s.fetch({ audience: 'payments', scopes: [] })).token)).toMatchObject({ aud: 'payments', client_id: 'poster' });
  });

  it('private_key_jwt with a PEM key (alg from the key)', async () => {
    const keyFile = join(dir, 'signer.pem');
    writeFileSync(keyFile, pkjwtKey.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const s = source({ type: 'client_credentials', issuer: idp.issuer, clientId: 'signer', privateKeyFile: keyFile });
    // Twice: each assertion must carry a fresh jti (the IdP refuses replays).
    for (const aud of ['payments', 'ledger']) expect(await verifyAtIdp((await s.fetch({ audience: aud, scopes: [] })).token)).toMatchObject({ aud, client_id: 'signer' });
  });

  it('surfaces the OAuth error (invalid_client) and never the secret', async () => {
    const s = source({ type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'wrong-secret-value' });
    const err = await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenUnavailableError);
    expect(err).toMatchObject({ code: 'token_unavailable', status: 503, oauthError: 'invalid_client' });
    expect((err as Error).message).toMatch(/^token endpoint refused the request \(HTTP 401\): invalid_client/);
    expect((err as Error).message).not.toContain('wrong-secret-value');
  });

  it('an unreachable IdP is a TokenUnavailableError with the failing step as cause code', async () => {
    const s = source({ type: 'client_credentials', issuer: 'http://127.0.0.1:1', clientId: 'orders', clientSecret: 'x' });
    const err = await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenUnavailableError);
    expect((err as Error).message).toMatch(/token endpoint discovery failed: .*connection refused/);
    expect(((err as Error).cause as { code: string }).code).toBe('idp_unreachable');
  });
});

describe('client_credentials request shape and response checks (stand-in token endpoint)', () => {
  let stub: StubTokenEndpoint;
  beforeAll(async () => {
    stub = await startStubTokenEndpoint(() => ({ body: { access_token: 'opaque-token', token_type: 'Bearer', expires_in: 300 } }));
  });
  afterAll(() => stub.close());
  const cc = (extra: Record<string, unknown> = {}) => source({ type: 'client_credentials', tokenEndpoint: stub.url, clientId: 'orders', clientSecret: 's', ...extra });

  it('audienceParam none sends scopes only (Entra .default style); params add fields but cannot replace the grant', async () => {
    await cc({ audienceParam: 'none', params: { grant_type: 'password', tenant: 't1' } }).fetch({ audience: 'payments', scopes: ['api://payments/.default'] });
    const form = stub.requests.at(-1)!.form;
    expect(Object.fromEntries(form)).toEqual({ tenant: 't1', grant_type: 'client_credentials', scope: 'api://payments/.default' });
  });

  it('refuses a JWT issued for another audience than the one the request named (an IdP that ignored resource/audience); with audienceParam none the IdP decides', async () => {
    const saved = stub.reply;
    const answer = (aud: unknown) => () => ({ body: { access_token: jwtWith({ sub: 'orders', aud, exp: inSeconds(300) }), token_type: 'Bearer', expires_in: 300 } });
    try {
      stub.reply = answer('payments');
      for (const audienceParam of ['resource', 'audience']) {
        const err = await cc({ audienceParam }).fetch({ audience: 'ledger', scopes: [] }).catch((e: unknown) => e);
        expect(err, audienceParam).toBeInstanceOf(TokenUnavailableError);
        expect((err as Error).message).toMatch(/: the token is for aud "payments", not "ledger" as asked; an IdP that sets aud itself .* needs audienceParam: none$/);
      }
      expect((await cc().fetch({ audience: 'payments', scopes: [] })).token.split('.')).toHaveLength(3);
      expect((await cc({ audienceParam: 'none' }).fetch({ audience: 'ledger', scopes: [] })).token.split('.')).toHaveLength(3);
      // A list that names it passes; one that does not is shown (capped) in the refusal.
      stub.reply = answer(['other', 'ledger']);
      expect((await cc().fetch({ audience: 'ledger', scopes: [] })).token.split('.')).toHaveLength(3);
      stub.reply = answer(['a', 'b', 'c', 'd']);
      await expect(cc().fetch({ audience: 'ledger', scopes: [] })).rejects.toThrow(/the token is for aud "a", "b", "c", …, not "ledger"/);
      // An opaque token, or a JWT without aud, cannot be checked here: the peer checks it.
      stub.reply = () => ({ body: { access_token: jwtWith({ sub: 'orders', exp: inSeconds(300) }), token_type: 'Bearer', expires_in: 300 } });
      expect((await cc().fetch({ audience: 'ledger', scopes: [] })).token.split('.')).toHaveLength(3);
    } finally {
      stub.reply = saved;
    }
  });

  it('expires_in gives the expiry of an opaque token', async () => {
    const before = Date.now();
    const t = await cc().fetch({ audience: 'payments', scopes: [] });
    expect(t.token).toBe('opaque-token');
    expect(t.expiresAt).toBeGreaterThanOrEqual(before + 300_000);
    expect(t.expiresAt).toBeLessThanOrEqual(Date.now() + 300_000);
  });

  it('expires_in counts from when the request was sent, not from a slow answer: the token is not used past its lifetime', async () => {
    let now = Date.UTC(2030, 0, 1);
    const s = source({ type: 'client_credentials', tokenEndpoint: stub.url, clientId: 'orders', clientSecret: 's' }, { clock: { now: () => now, monotonic: () => now } });
    const release = stub.hold();
    const asked = stub.requests.length;
    const pending = s.fetch({ audience: 'payments', scopes: [] });
    const sentAt = now;
    while (stub.requests.length === asked) await new Promise((r) => setTimeout(r, 5));
    // The IdP issues the token, then takes 8 s to answer.
    now += 8_000;
    release();
    expect((await pending).expiresAt).toBe(sentAt + 300_000);
  });

  it('a JWT access token whose exp and expires_in disagree expires at the earlier of the two', async () => {
    stub.reply = () => ({ body: { access_token: jwtWith({ exp: inSeconds(86_400) }), token_type: 'Bearer', expires_in: 60 } });
    const before = Date.now();
    const later = await cc().fetch({ audience: 'payments', scopes: [] });
    expect(later.expiresAt).toBeGreaterThanOrEqual(before + 60_000);
    expect(later.expiresAt).toBeLessThanOrEqual(Date.now() + 60_000);
    const exp = inSeconds(120);
    stub.reply = () => ({ body: { access_token: jwtWith({ exp }), token_type: 'Bearer', expires_in: 3600 } });
    expect((await cc().fetch({ audience: 'payments', scopes: [] })).expiresAt).toBe(exp * 1000);
    stub.reply = () => ({ body: { access_token: 'opaque-token', token_type: 'Bearer', expires_in: 300 } });
  });

  const badAnswers: Array<[string, { status?: number; body: unknown; contentType?: string }, RegExp]> = [
    ['a DPoP token', { body: { access_token: 'abc', token_type: 'DPoP', expires_in: 60 } }, /token_type "dpop" is not a bearer token/],
    ['a token_type that is a number', { body: { access_token: 'abc', token_type: 123, expires_in: 60 } }, /token_type a number is not a bearer token/],
    ['a token_type that is a list', { body: { access_token: 'abc', token_type: ['DPoP'], expires_in: 60 } }, /token_type a list is not a bearer token/],
    ['a token_type that is null', { body: { access_token: 'abc', token_type: null, expires_in: 60 } }, /token_type null is not a bearer token/],
    ['a token with CR/LF (header injection)', { body: { access_token: 'abc\r\nx-evil: 1', expires_in: 60 } }, /not a valid bearer token/],
    ['no access_token', { body: { token_type: 'Bearer', expires_in: 60 } }, /no token/],
    ['neither exp nor expires_in', { body: { access_token: 'abc', token_type: 'Bearer' } }, /the token has neither a JWT exp claim nor expires_in$/],
    ['no exp, and expires_in 0', { body: { access_token: 'abc', token_type: 'Bearer', expires_in: 0 } }, /no JWT exp claim, and its expires_in \(0\) is not a positive number of seconds$/],
    ['no exp, and expires_in negative', { body: { access_token: 'abc', token_type: 'Bearer', expires_in: -5 } }, /its expires_in \(-5\) is not/],
    ['no exp, and expires_in a word', { body: { access_token: 'abc', token_type: 'Bearer', expires_in: 'soon' } }, /its expires_in \("soon"\) is not/],
    ['an expired JWT', { body: { access_token: jwtWith({ exp: inSeconds(-10) }), token_type: 'Bearer', expires_in: 600 } }, /the token expired at/],
    ['HTML instead of JSON', { body: '<html>oops</html>', contentType: 'text/html' }, /not JSON/],
    ['a 500 without an OAuth error', { status: 500, body: 'boom' }, /answered HTTP 500 without an OAuth error/],
    ['an OAuth error with control characters', { status: 400, body: { error: 'invalid_scope\nx', error_description: 'bad "scope"\u0000' } }, /invalid_scope\?x \(bad \?scope\?\?\)/],
  ];
  for (const [what, answer, message] of badAnswers) {
    it(`refuses ${what}`, async () => {
      stub.reply = () => answer;
      const err = await cc().fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokenUnavailableError);
      expect((err as Error).message).toMatch(message);
      stub.reply = () => ({ body: { access_token: 'opaque-token', token_type: 'Bearer', expires_in: 300 } });
    });
  }
});

describe('token endpoint discovery never downgrades to cleartext', () => {
  it('an https issuer publishing an http token_endpoint gets no token request (the secret stays home); https to https works', async () => {
    const tls = selfSignedCert('token-idp');
    const cleartext = await startStubTokenEndpoint(() => ({ body: { access_token: 'over-http', token_type: 'Bearer', expires_in: 300 } }));
    let origin = '';
    let published = cleartext.url;
    const secure = createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, (req, res) => {
      const json = (body: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      if (req.url === '/.well-known/openid-configuration') json({ issuer: origin, jwks_uri: `${origin}/jwks`, token_endpoint: published });
      else if (req.url === '/token' && req.method === 'POST') req.resume().on('end', () => json({ access_token: 'over-https', token_type: 'Bearer', expires_in: 300 }));
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => secure.listen(0, '127.0.0.1', r));
    origin = `https://127.0.0.1:${(secure.address() as AddressInfo).port}`;
    try {
      const s = source({ type: 'client_credentials', issuer: origin, clientId: 'orders', clientSecret: 'never-over-http', caFile: tls.cert });
      const err = await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokenUnavailableError);
      expect((err as Error).message).toBe(
        `issuer ${origin} publishes token_endpoint ${cleartext.url}, which is not https although the issuer is; client credentials are never sent over cleartext`,
      );
      expect(cleartext.requests).toHaveLength(0);

      // The refusal is about the scheme, not the TLS setup: the same issuer naming an https endpoint is used (discovery is retried).
      published = `${origin}/token`;
      expect((await s.fetch({ audience: 'payments', scopes: [] })).token).toBe('over-https');
      expect(cleartext.requests).toHaveLength(0);
    } finally {
      secure.closeAllConnections();
      await new Promise<void>((r) => secure.close(() => r()));
      await cleartext.close();
    }
  });
});

describe('the token endpoint never redirects the client credentials', () => {
  it('a 307 from the token endpoint is an error, and the place it names gets no request (no second copy of the secret)', async () => {
    // 307 keeps the method and body, so a client that followed it would POST the form (and Basic credentials) again
    // to /elsewhere, which answers a usable token: following it would make the fetch succeed.
    const hits = { token: 0, elsewhere: 0 };
    const server = createServer((req, res) => {
      if (req.url === '/token') {
        hits.token++;
        req.resume().on('end', () => res.writeHead(307, { location: '/elsewhere' }).end());
      } else if (req.url === '/elsewhere') {
        hits.elsewhere++;
        req.resume().on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'redirected', token_type: 'Bearer', expires_in: 300 })));
      } else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const tokenEndpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
      const s = source({ type: 'client_credentials', tokenEndpoint, clientId: 'orders', clientSecret: 'stays-home' });
      const err = await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokenUnavailableError);
      expect((err as Error).message).toBe('token endpoint answered HTTP 307 without an OAuth error');
      expect(hits).toEqual({ token: 1, elsewhere: 0 });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('token endpoint discovery', () => {
  it("passes on a 503's Retry-After from the discovery endpoint (seconds or a date), and finds the endpoint once it answers", async () => {
    let origin = '';
    let retryAfter: string | undefined = '17';
    const server = createServer((req, res) => {
      const json = (code: number, body: unknown, headers: Record<string, string> = {}) =>
        res.writeHead(code, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
      if (req.url !== '/.well-known/openid-configuration') {
        req.resume().on('end', () => json(200, { access_token: 'found', token_type: 'Bearer', expires_in: 300 }));
      } else if (retryAfter !== undefined) json(503, { message: 'maintenance' }, { 'retry-after': retryAfter });
      else json(200, { issuer: origin, jwks_uri: `${origin}/jwks`, token_endpoint: `${origin}/token` });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const s = source({ type: 'client_credentials', issuer: origin, clientId: 'orders', clientSecret: 'discovery-test-secret' });
      const first = await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e);
      expect(first).toBeInstanceOf(TokenUnavailableError);
      expect((first as Error).message).toMatch(/^token endpoint discovery failed: .*openid-configuration: HTTP 503$/);
      expect((first as TokenUnavailableError).retryAfterMs).toBe(17_000);
      retryAfter = new Date(Date.now() + 120_000).toUTCString();
      const second = (await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e)) as TokenUnavailableError;
      expect(second.retryAfterMs).toBeGreaterThan(110_000);
      expect(second.retryAfterMs).toBeLessThanOrEqual(120_000);
      retryAfter = undefined;
      expect((await s.fetch({ audience: 'payments', scopes: [] })).token).toBe('found');
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('token endpoint discovery naming another issuer', () => {
  it("quotes the document's issuer capped: the error reaches the app's 503 and every token_fetch_failed line", async () => {
    const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: 'x'.repeat(500_000) })));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const s = source({ type: 'client_credentials', issuer: origin, clientId: 'orders', clientSecret: 'discovery-test-secret' });
      const err = (await s.fetch({ audience: 'payments', scopes: [] }).catch((e: unknown) => e)) as Error;
      expect(err).toBeInstanceOf(TokenUnavailableError);
      expect(err.message).toMatch(/metadata names issuer "x{256}…", expected exactly/);
      expect(err.message.length).toBeLessThan(1000);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('token_exchange (RFC 8693)', () => {
  it('sends the subject token re-read from its file, its type, the requested type and the audience', async () => {
    const exchanged = jwtWith({ aud: 'payments', exp: inSeconds(300), jti: 'x-1' });
    const stub = await startStubTokenEndpoint(() => ({ body: { access_token: exchanged, issued_token_type: 'urn:ietf:params:oauth:token-type:jwt', token_type: 'N_A' } }));
    try {
      const subjectFile = join(dir, 'sa-token');
      writeFileSync(subjectFile, 'subject.one.sig\n');
      const s = source({
        type: 'token_exchange',
        tokenEndpoint: stub.url,
        clientId: 'orders',
        clientSecret: 'sec',
        audienceParam: 'audience',
        subjectTokenFile: subjectFile,
        requestedTokenType: 'urn:ietf:params:oauth:token-type:access_token',
      });
      const t = await s.fetch({ audience: 'payments', scopes: ['read'] });
      expect(t).toMatchObject({ token: exchanged, jti: 'x-1' });
      expect(Object.fromEntries(stub.requests[0]!.form)).toEqual({
        grant_type: TOKEN_EXCHANGE_GRANT,
        audience: 'payments',
        scope: 'read',
        subject_token: 'subject.one.sig',
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
        requested_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      });
      expect(stub.requests[0]!.headers.authorization).toMatch(/^Basic /);
      writeFileSync(subjectFile, 'subject.two.sig');
      await s.fetch({ audience: 'payments', scopes: [] });
      expect(stub.requests[1]!.form.get('subject_token')).toBe('subject.two.sig');
      rmSync(subjectFile);
      await expect(s.fetch({ audience: 'payments', scopes: [] })).rejects.toThrow(/cannot read subjectTokenFile .*sa-token: no such file/);
      expect(stub.requests).toHaveLength(2);
    } finally {
      await stub.close();
    }
  });
});

describe('file source', () => {
  it('re-reads when the file changes (kubelet-style atomic swap; in place with only ctime changed), at least every minute, and substitutes {audience}', async () => {
    let now = Date.now();
    const fakeClock = { now: () => now, monotonic: () => now };
    const path = join(dir, 'tokens-payments.jwt');
    const first = jwtWith({ aud: 'payments', exp: inSeconds(3600), jti: 'f-1' });
    writeFileSync(path, `${first}\n`);
    const s = source({ type: 'file', path: join(dir, 'tokens-{audience}.jwt') }, { clock: fakeClock });
    const t1 = await s.fetch({ audience: 'payments', scopes: [] });
    expect(t1).toMatchObject({ token: first, jti: 'f-1', recheckAt: now + FILE_RECHECK_MS });
    const second = jwtWith({ aud: 'payments', exp: inSeconds(7200), jti: 'f-2' });
    const tmp = join(dir, 'swap.tmp');
    writeFileSync(tmp, second);
    renameSync(tmp, path);
    expect(await s.fetch({ audience: 'payments', scopes: [] })).toMatchObject({ token: second, jti: 'f-2' });
    now += FILE_RECHECK_MS;
    expect((await s.fetch({ audience: 'payments', scopes: [] })).token).toBe(second);
    // Rewritten in place with the size and mtime kept (`cp -p`, `rsync --inplace -t`): only ctime tells.
    const third = jwtWith({ aud: 'payments', exp: inSeconds(7200), jti: 'f-3' });
    const wholeSecond = Math.floor(Date.now() / 1000) - 10; // utimes keeps whole seconds exactly
    utimesSync(path, wholeSecond, wholeSecond);
    expect((await s.fetch({ audience: 'payments', scopes: [] })).token).toBe(second);
    const before = statSync(path);
    writeFileSync(path, third);
    utimesSync(path, wholeSecond, wholeSecond);
    expect(statSync(path)).toMatchObject({ ino: before.ino, size: before.size, mtimeMs: before.mtimeMs });
    expect(await s.fetch({ audience: 'payments', scopes: [] })).toMatchObject({ token: third, jti: 'f-3' });
  });

  it('a missing, expired, empty or non-JWT file is an error', async () => {
    const s = source({ type: 'file', path: join(dir, 'f-{audience}') });
    writeFileSync(join(dir, 'f-expired'), jwtWith({ exp: inSeconds(-1) }));
    writeFileSync(join(dir, 'f-empty'), '');
    writeFileSync(join(dir, 'f-opaque'), 'not-a-jwt');
    await expect(s.fetch({ audience: 'missing', scopes: [] })).rejects.toThrow(/cannot read token file .*f-missing: no such file/);
    await expect(s.fetch({ audience: 'expired', scopes: [] })).rejects.toThrow(/the token expired at/);
    await expect(s.fetch({ audience: 'empty', scopes: [] })).rejects.toThrow(/is empty/);
    await expect(s.fetch({ audience: 'opaque', scopes: [] })).rejects.toThrow(/does not hold a JWT/);
  });
});

describe('a file or variable without {audience} serving routes of several audiences', () => {
  it("gives each audience the token only if its aud names that audience (a list counts; a JWT without aud is the peer's to judge)", async () => {
    const forPayments = jwtWith({ aud: ['payments', 'mesh'], exp: inSeconds(600) });
    writeFileSync(join(dir, 'mesh-token'), forPayments);
    const file = source({ type: 'file', path: join(dir, 'mesh-token') });
    expect((await file.fetch({ audience: 'payments', scopes: [] })).token).toBe(forPayments);
    // The second read comes from the snapshot of the unchanged file: it is checked all the same.
    const refused = file.fetch({ audience: 'ledger', scopes: [] });
    await expect(refused).rejects.toThrow(/token file .*mesh-token: the token is for aud "payments", "mesh", not "ledger" as asked; project one token per audience/);
    await expect(refused).rejects.toMatchObject({ lasting: true });
    expect((await file.fetch({ audience: 'mesh', scopes: [] })).token).toBe(forPayments);
    const variable = source({ type: 'env', variable: 'MESH_TOKEN' }, { env: { MESH_TOKEN: forPayments } });
    expect((await variable.fetch({ audience: 'payments', scopes: [] })).token).toBe(forPayments);
    await expect(variable.fetch({ audience: 'ledger', scopes: [] })).rejects.toThrow(/environment variable MESH_TOKEN: the token is for aud "payments", "mesh", not "ledger" as asked; give each audience its own variable/);
    const noAud = jwtWith({ exp: inSeconds(600) });
    const unchecked = source({ type: 'env', variable: 'ANY' }, { env: { ANY: noAud } });
    expect((await unchecked.fetch({ audience: 'ledger', scopes: [] })).token).toBe(noAud);
  });
});

describe('env source', () => {
  it('reads the variable named after the audience (GitLab id_tokens style)', async () => {
    const token = jwtWith({ aud: 'payments', exp: inSeconds(600), jti: 'e-1' });
    const s = source({ type: 'env', variable: 'ID_TOKEN_{audience}' }, { env: { ID_TOKEN_payments: token, ID_TOKEN_old: jwtWith({ exp: inSeconds(-5) }), ID_TOKEN_junk: 'a b' } });
    expect(await s.fetch({ audience: 'payments', scopes: [] })).toMatchObject({ token, jti: 'e-1' });
    await expect(s.fetch({ audience: 'ledger', scopes: [] })).rejects.toThrow(/environment variable ID_TOKEN_ledger is not set or empty/);
    await expect(s.fetch({ audience: 'old', scopes: [] })).rejects.toThrow(/expired/);
    await expect(s.fetch({ audience: 'junk', scopes: [] })).rejects.toThrow(/not a valid bearer token/);
    // None of these can change under a running process: the cache waits its longest before asking again.
    for (const audience of ['ledger', 'old', 'junk']) await expect(s.fetch({ audience, scopes: [] })).rejects.toMatchObject({ lasting: true });
  });
});

describe('github_actions source (stand-in for the Actions token endpoint)', () => {
  let seen: { url: string; headers: IncomingHttpHeaders }[];
  let base: string;
  let close: () => Promise<void>;
  let status = 200;
  /** When set, the stand-in issues its token for this audience instead of the one asked for. */
  let issuedFor: string | undefined;
  beforeAll(async () => {
    seen = [];
    const server = createServer((req, res) => {
      seen.push({ url: req.url!, headers: req.headers });
      const audience = new URL(req.url!, 'http://x').searchParams.get('audience');
      if (status !== 200) return void res.writeHead(status, status === 429 ? { 'retry-after': '42' } : {}).end('{"message":"nope"}');
      void new SignJWT({ repository: 'acme/app' })
        .setProtectedHeader({ alg: 'ES256' })
        .setAudience(issuedFor ?? audience!)
        .setExpirationTime('5m')
        .setJti(randomUUID())
        .sign(pkjwtKey.privateKey)
        .then((value) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ count: 1, value })));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () => new Promise((r) => server.close(() => r()));
  });
  afterAll(() => close());

  it('GETs the request URL with &audience= and the bearer request token, and returns the JWT with its exp', async () => {
    const env = { ACTIONS_ID_TOKEN_REQUEST_URL: `${base}/_apis/idtoken?api-version=2.0`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runner-request-token' };
    const s = source({ type: 'github_actions' }, { env });
    const t = await s.fetch({ audience: 'https://payments.example', scopes: [] });
    const { payload } = await jwtVerify(t.token, pkjwtKey.publicKey, { audience: 'https://payments.example' });
    expect(t.expiresAt).toBe(payload.exp! * 1000);
    expect(seen.at(-1)!.url).toBe('/_apis/idtoken?api-version=2.0&audience=https%3A%2F%2Fpayments.example');
    expect(seen.at(-1)!.headers.authorization).toBe('bearer runner-request-token');
  });

  it('refuses a token for another audience than the one asked for', async () => {
    const env = { ACTIONS_ID_TOKEN_REQUEST_URL: `${base}/_apis/idtoken?api-version=2.0`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runner-request-token' };
    issuedFor = 'https://other.example';
    try {
      await expect(source({ type: 'github_actions' }, { env }).fetch({ audience: 'https://payments.example', scopes: [] })).rejects.toThrow(
        /GitHub Actions token endpoint .*: the token is for aud "https:\/\/other\.example", not "https:\/\/payments\.example" as asked$/,
      );
    } finally {
      issuedFor = undefined;
    }
  });

  it('explains missing permissions and refuses non-200 answers', async () => {
    await expect(source({ type: 'github_actions' }).fetch({ audience: 'a', scopes: [] })).rejects.toThrow(/permissions: id-token: write/);
    status = 403;
    const env = { ACTIONS_ID_TOKEN_REQUEST_URL: `${base}/_apis/idtoken?api-version=2.0`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runner-request-token' };
    const err = await source({ type: 'github_actions' }, { env }).fetch({ audience: 'a', scopes: [] }).catch((e: unknown) => e);
    status = 200;
    expect(err).toBeInstanceOf(TokenUnavailableError);
    expect((err as Error).message).toMatch(/GitHub Actions token endpoint http:\/\/127\.0\.0\.1:\d+\/_apis\/idtoken answered HTTP 403/);
    expect((err as Error).message).not.toContain('runner-request-token');
    expect((err as TokenUnavailableError).retryAfterMs).toBeUndefined();
  });

  it("passes on a throttled answer's Retry-After, so the cache waits that long before asking again", async () => {
    status = 429;
    const env = { ACTIONS_ID_TOKEN_REQUEST_URL: `${base}/_apis/idtoken?api-version=2.0`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runner-request-token' };
    const err = await source({ type: 'github_actions' }, { env }).fetch({ audience: 'a', scopes: [] }).catch((e: unknown) => e);
    status = 200;
    expect((err as Error).message).toMatch(/answered HTTP 429$/);
    expect((err as TokenUnavailableError).retryAfterMs).toBe(42_000);
  });
});
