import { createHmac, KeyObject, sign } from 'node:crypto';
import fc from 'fast-check';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { KeysUnavailableError, TokenRejectedError } from '../../src/errors.js';
import { checkLifetime, checkTimes, createAuthenticator, MAX_CLAIMS_DEPTH } from '../../src/inbound/authenticator.js';
import { fromJoseError } from '../../src/inbound/jose-errors.js';
import { checkShape } from '../../src/inbound/extractor.js';
import { createIdentityBuilder, type Identity } from '../../src/inbound/identity.js';
import { createKeyStore } from '../../src/inbound/key-store.js';
import { createVerifyCache } from '../../src/inbound/verify-cache.js';
import { algNoneToken, b64url, corruptSignature, rawToken, signToken, testKeyPair, unusableJwks, type TestKeyPair } from '../support/tokens.js';
import { captureLogger, counterValue, inboundConfig, manualClock, manualScheduler, startJwksServer, testMetrics } from './inbound-support.js';

const ISS = 'http://idp.test'; // plain http like its local JWKS server (an https issuer needs an https jwksUri)
const cleanups: Array<() => Promise<unknown> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function setup(inbound: Record<string, unknown> = {}, opts: { keys?: TestKeyPair[]; jwksFront?: unknown[]; cacheEntries?: number } = {}) {
  const rsa = await testKeyPair('RS256', 'rsa-1');
  const ec = await testKeyPair('ES256', 'ec-1');
  const keys = opts.keys ?? [rsa, ec];
  const server = await startJwksServer({ keys: [...(opts.jwksFront ?? []), ...keys.map((k) => k.publicJwk)] });
  cleanups.push(() => server.close());
  const config = inboundConfig({
    issuers: [{ issuer: ISS, jwksUri: server.url }, { issuer: 'http://other.test', jwksUri: server.url, algorithms: ['ES256'] }],
    ...inbound,
    cache: { maxEntries: opts.cacheEntries ?? 100 },
  });
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'));
  const metrics = testMetrics();
  const keyStore = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics, clock, scheduler: manualScheduler() });
  cleanups.push(() => keyStore.close());
  const auth = createAuthenticator(config, {
    keyStore,
    cache: createVerifyCache<Identity>({ maxEntries: config.cache.maxEntries, clock, metrics }),
    clock,
    buildIdentity: createIdentityBuilder(config.forward),
  });
  const now = () => Math.floor(clock.now() / 1000);
  const claims = (over: Record<string, unknown> = {}) => {
    const c: Record<string, unknown> = { iss: ISS, sub: 'orders', aud: 'orders', iat: now(), exp: now() + 300, ...over };
    for (const [k, v] of Object.entries(c)) if (v === undefined) delete c[k];
    return c;
  };
  const mint = (over: Record<string, unknown> = {}, o: { key?: TestKeyPair; kid?: string | null; header?: Record<string, unknown>; typ?: string | null } = {}) => {
    const key = o.key ?? rsa;
    return signToken(claims(over), {
      key: key.privateKey,
      alg: key.alg,
      kid: o.kid === null ? undefined : (o.kid ?? key.kid),
      ...(o.typ !== undefined ? { typ: o.typ } : {}),
      ...(o.header ? { header: o.header } : {}),
    });
  };
  const verify = (token: string) => auth.authenticate(checkShape(token));
  const reason = async (token: string) => {
    try {
      await verify(token);
    } catch (err) {
      if (err instanceof TokenRejectedError || err instanceof KeysUnavailableError) return err.code;
      throw err;
    }
    return 'accepted';
  };
  await keyStore.start();
  return { rsa, ec, server, config, clock, metrics, keyStore, auth, mint, verify, reason, claims, now };
}

describe('authenticator', () => {
  it('accepts a valid token and builds the identity headers once', async () => {
    const { mint, verify, ec } = await setup();
    const id = await verify(await mint({ roles: ['a'] }));
    expect(id.issuer).toBe(ISS);
    expect(id.claims.sub).toBe('orders');
    const headers = Object.fromEntries(pairs(id.headers));
    expect(headers['x-peer-sub']).toBe('orders');
    expect(headers['x-peer-iss']).toBe(ISS);
    expect(JSON.parse(Buffer.from(headers['x-peer-claims']!, 'base64url').toString())).toMatchObject({ sub: 'orders', roles: ['a'] });
    expect((await verify(await mint({}, { key: ec }))).claims.sub).toBe('orders');
  });

  it('maps every time-claim problem to its reason code, with the configured skew', async () => {
    const { mint, reason, now } = await setup({ clockSkewSeconds: 30 });
    expect(await reason(await mint({ exp: now() - 31 }))).toBe('expired');
    expect(await reason(await mint({ exp: now() - 29 }))).toBe('accepted');
    expect(await reason(await mint({ nbf: now() + 31 }))).toBe('not_yet_valid');
    expect(await reason(await mint({ nbf: now() + 29 }))).toBe('accepted');
    expect(await reason(await mint({ iat: now() + 31 }))).toBe('issued_in_future');
    expect(await reason(await mint({ iat: now() + 29 }))).toBe('accepted');
    expect(await reason(await mint({ exp: undefined }))).toBe('missing_claim');
    expect(await reason(await mint({ exp: 'tomorrow' }))).toBe('malformed_token');
    expect(await reason(await mint({ nbf: 'yesterday' }))).toBe('malformed_token');
    expect(await reason(await mint({ iat: 'now' }))).toBe('malformed_token');
  });

  it('says when a token expired or becomes valid, how far off that is and the skew allowed, so a wrong clock can be told from a stale token', async () => {
    const { mint, verify, now } = await setup({ clockSkewSeconds: 30 });
    const detail = async (token: string) => {
      try {
        await verify(token);
      } catch (err) {
        if (err instanceof TokenRejectedError) return [err.code, err.message];
        throw err;
      }
      return ['accepted'];
    };
    const iso = (s: number) => new Date(s * 1000).toISOString().replace('.000Z', 'Z');
    const t = Math.floor(now());
    expect(await detail(await mint({ exp: t - 3600 }))).toEqual(['expired', `token expired at ${iso(t - 3600)}, ${Math.round(now() - (t - 3600))} s ago (30 s of clock skew allowed)`]);
    const nbf = await detail(await mint({ nbf: t + 600 }));
    expect(nbf[0]).toBe('not_yet_valid');
    expect(nbf[1]).toMatch(new RegExp(`^token is not valid before ${iso(t + 600)}, \\d+ s from now \\(nbf; 30 s of clock skew allowed\\)$`));
    const iat = await detail(await mint({ iat: t + 600 }));
    expect(iat[0]).toBe('issued_in_future');
    expect(iat[1]).toMatch(new RegExp(`^token is issued at ${iso(t + 600)}, \\d+ s in the future \\(iat; 30 s of clock skew allowed\\)$`));
  });

  it('a refusal carries no stack (an answer, not a fault: capturing stacks was a third of refusing an expired token), and leaves the stack limit as it found it', async () => {
    const { mint, verify, now } = await setup();
    const limit = Error.stackTraceLimit;
    const refusalOf = (token: string) => verify(token).then(() => undefined, (err: unknown) => err as Error);
    const expired = await refusalOf(await mint({ exp: Math.floor(now()) - 3600 }));
    expect(expired).toBeInstanceOf(TokenRejectedError);
    expect(expired!.stack).not.toMatch(/\n\s+at /);
    // Nor does jose's refusal it was made from, which stays its cause.
    const elsewhere = await refusalOf(await mint({ aud: 'payments' }));
    expect(elsewhere).toMatchObject({ code: 'audience_mismatch', cause: expect.objectContaining({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED' }) });
    expect((elsewhere!.cause as Error).stack).not.toMatch(/\n\s+at /);
    expect(Error.stackTraceLimit).toBe(limit);
  });

  it('refuses a non-finite exp (1e400 parses as Infinity and would never expire)', async () => {
    const { rsa, reason, claims } = await setup();
    const payload = JSON.stringify(claims()).replace(/"exp":\d+/, '"exp":1e400');
    const token = await signRaw(payload, rsa);
    expect(await reason(token)).toBe('malformed_token');
  });

  it('refuses a token whose header or claims hold a lone surrogate (no UTF-8 form: identity headers would merge "a\\ud800" and "a\\udfff"); a pair is text', async () => {
    const { rsa, mint, reason, verify, claims } = await setup();
    for (const over of [{ sub: 'alice\ud800' }, { sub: 'alice\udfff' }, { roles: ['a', { deep: ['x\udc00'] }] }, { ['key\ud800']: 1 }]) {
      expect(await reason(await mint(over)), JSON.stringify(over)).toBe('malformed_token');
    }
    expect(await reason(await mint({}, { header: { note: '\ud800' } }))).toBe('malformed_token');
    // A surrogate pair, escaped or as UTF-8, is one character: accepted, and its header value decodes to it.
    const escapedPair = await signRaw(JSON.stringify(claims()).replace('"sub":"orders"', '"sub":"\\ud83d\\ude00 \\u00e9"'), rsa);
    expect((await verify(escapedPair)).claims.sub).toBe('\u{1F600} é');
    expect(decodeURIComponent(Object.fromEntries(pairs((await verify(await mint({ sub: 'é\u{1F600}' }))).headers))['x-peer-sub']!)).toBe('é\u{1F600}');
  });

  it('refuses a token whose claims hold an integer past 2^53 (JSON.parse rounds it: two numeric ids would reach the app as one); safe ones pass', async () => {
    const { rsa, reason, verify, claims } = await setup();
    const withUid = (uid: string) => signRaw(JSON.stringify(claims()).replace('"sub":"orders"', `"sub":"orders","uid":${uid}`), rsa);
    for (const uid of ['9007199254740993', '9007199254740992', '-9007199254740993', '[1,{"n":12345678901234567890}]', '1e16']) {
      expect(await reason(await withUid(uid)), uid).toBe('malformed_token');
    }
    // The largest exact integers, long fractions and small exponents are numbers JSON.stringify gives back as the app reads them.
    for (const [uid, value] of [['9007199254740991', 9007199254740991], ['-9007199254740991', -9007199254740991], ['0.12345678901234567', 0.12345678901234567], ['1e3', 1000]] as const) {
      expect((await verify(await withUid(uid))).claims.uid, uid).toBe(value);
    }
  });

  it('checks audience (string or list, per-issuer override) and a missing aud', async () => {
    const { mint, reason } = await setup({ audience: ['orders', 'orders-v2'] });
    expect(await reason(await mint({ aud: 'payments' }))).toBe('audience_mismatch');
    expect(await reason(await mint({ aud: ['payments', 'orders-v2'] }))).toBe('accepted');
    expect(await reason(await mint({ aud: undefined }))).toBe('audience_mismatch');
  });

  it('picks the issuer by exact iss, with no network call for an unknown one', async () => {
    const { mint, reason, server } = await setup();
    const before = server.count;
    expect(await reason(await mint({ iss: 'https://evil.test' }))).toBe('unknown_issuer');
    expect(await reason(await mint({ iss: `${ISS}/` }))).toBe('unknown_issuer');
    expect(await reason(await mint({ iss: [ISS] }))).toBe('unknown_issuer');
    expect(await reason(await mint({ iss: undefined }))).toBe('missing_claim');
    expect(server.count).toBe(before);
  });

  it('pins algorithms per issuer and never accepts none or HS* (CVE-2015-9235, CVE-2022-23540)', async () => {
    const { mint, reason, rsa, claims, ec } = await setup();
    expect(await reason(algNoneToken(claims()))).toBe('unsupported_alg');
    expect(await reason(algNoneToken(claims(), { alg: 'None' }))).toBe('unsupported_alg');
    // HS256 "signed" with the issuer's public key as the HMAC secret: the classic confusion attack.
    const pem = KeyObject.from(rsa.publicKey as never).export({ type: 'spki', format: 'pem' }) as string;
    const h = b64url({ alg: 'HS256', kid: rsa.kid });
    const p = b64url(claims());
    const sig = createHmac('sha256', pem).update(`${h}.${p}`).digest('base64url');
    expect(await reason(`${h}.${p}.${sig}`)).toBe('unsupported_alg');
    // ES256 is allowed for idp.test, but other.test only allows ES256 so RS256 is refused there.
    expect(await reason(await mint({ iss: 'http://other.test' }))).toBe('unsupported_alg');
    expect(await reason(await mint({ iss: 'http://other.test' }, { key: ec }))).toBe('accepted');
    // An alg that is not a JWS alg at all.
    expect(await reason(rawToken({ alg: 'RSA-OAEP', kid: rsa.kid }, claims(), 'c2ln'))).toBe('unsupported_alg');
  });

  it('never follows jwk, jku, x5u or x5c headers (CVE-2018-0114)', async () => {
    const { mint, reason, server } = await setup();
    const attacker = await testKeyPair('RS256', 'attacker');
    const before = server.count;
    for (const header of [
      { jwk: attacker.publicJwk },
      { jku: 'http://127.0.0.1:1/jwks' },
      { x5u: 'http://127.0.0.1:1/cert.pem' },
      { x5c: ['MIIB'] },
    ]) {
      expect(await reason(await mint({}, { key: attacker, header })), Object.keys(header)[0]).toBe('malformed_token');
    }
    expect(server.count).toBe(before);
  });

  it('reports bad signatures, psychic ECDSA signatures (CVE-2022-21449) and unknown kids', async () => {
    const { mint, reason, ec, claims } = await setup();
    expect(await reason(corruptSignature(await mint()))).toBe('bad_signature');
    const psychic = rawToken({ alg: 'ES256', kid: ec.kid, typ: 'at+jwt' }, claims(), Buffer.alloc(64).toString('base64url'));
    expect(await reason(psychic)).toBe('bad_signature');
    const forged = await mint({}, { key: await testKeyPair('RS256', 'rsa-1') });
    expect(await reason(forged)).toBe('bad_signature');
    expect(await reason(await mint({}, { kid: 'nope' }))).toBe('unknown_key');
    expect(await reason(await mint({}, { kid: '../../../../dev/null' }))).toBe('unknown_key');
    expect(await reason(rawToken({ alg: 'RS256', kid: 7 }, claims(), 'c2ln'))).toBe('malformed_token');
  });

  it('tries each candidate key when a token has no kid (bounded), accepting the right one', async () => {
    // README: "A token without kid is tried against each matching key (at most 8)" (MAX_CANDIDATE_KEYS in
    // src/inbound/authenticator.ts). Nine published RS256 keys all match a kid-less RS256 token and are tried in JWKS
    // order, so the 8th verifies it and the 9th is past the bound. (With two keys, as this test once had, the bound
    // was never reached: removing it changed nothing.)
    const BOUND = 8;
    const keys = await Promise.all(Array.from({ length: BOUND + 1 }, (_, i) => testKeyPair('RS256', `k${i}`)));
    const { mint, reason } = await setup({}, { keys });
    expect(await reason(await mint({}, { key: keys[BOUND - 1], kid: null }))).toBe('accepted');
    // Signed by a key the issuer does publish, but past the bound: refused as if no key verified it.
    expect(await reason(await mint({}, { key: keys[BOUND], kid: null }))).toBe('bad_signature');
    // The same key named by its kid is fine: the refusal above is the bound, not the key.
    expect(await reason(await mint({ jti: 'with-kid' }, { key: keys[BOUND] }))).toBe('accepted');
    expect(await reason(await mint({}, { key: await testKeyPair('RS256'), kid: null }))).toBe('bad_signature');
  });

  it('a token without kid signed by a key the issuer just rotated to is accepted after one refetch; forged, it stays bad_signature at one refetch per cooldown', async () => {
    const a = await testKeyPair('RS256', 'a');
    const b = await testKeyPair('RS256', 'b');
    const { mint, reason, server, keyStore, clock } = await setup({ jwks: { cooldownSeconds: 1 } }, { keys: [a] });
    // The issuer rotates from a to b; the sidecar holds only a, the one key a token without kid can be tried with.
    server.set({ keys: [b.publicJwk] });
    clock.advance(1000);
    const before = server.count;
    expect(await reason(await mint({}, { key: b, kid: null }))).toBe('accepted');
    expect(server.count - before).toBe(1);
    expect(keyStore.get(ISS)!.version).toBe(2);
    // Forgeries without kid: the first refetch finds nothing new (bad_signature), the rest inside the cooldown fetch nothing.
    clock.advance(1000);
    const forger = await testKeyPair('RS256');
    for (let i = 0; i < 10; i++) expect(await reason(await mint({ jti: `f${i}` }, { key: forger, kid: null }))).toBe('bad_signature');
    expect(server.count - before).toBe(2);
    // A token with a kid whose signature fails costs no fetch, cooldown over or not: its key is known.
    clock.advance(1000);
    expect(await reason(corruptSignature(await mint({}, { key: b })))).toBe('bad_signature');
    expect(await reason(await mint({}, { key: await testKeyPair('RS256', 'b') }))).toBe('bad_signature');
    expect(server.count - before).toBe(2);
  });

  it('a token without kid that none of several candidate keys verifies refetches too, and gets 503 keys_unavailable when the JWKS cannot be fetched, as an unknown kid does', async () => {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((kid) => testKeyPair('RS256', kid)));
    const { mint, reason, server, clock } = await setup({ jwks: { cooldownSeconds: 1 } }, { keys: [a!, b!] });
    server.set({ keys: [b!.publicJwk, c!.publicJwk] });
    clock.advance(1000);
    expect(await reason(await mint({}, { key: c, kid: null }))).toBe('accepted');
    // The JWKS goes down: a token without kid that no key verifies may be signed by a key the sidecar cannot fetch.
    server.set({ status: 503 });
    clock.advance(1000);
    const before = server.count;
    expect(await reason(await mint({}, { key: await testKeyPair('RS256'), kid: null }))).toBe('keys_unavailable');
    expect(await reason(await mint({}, { kid: 'unknown' }))).toBe('keys_unavailable');
    expect(server.count - before).toBe(1);
    // A kid whose signature fails stays bad_signature (no fetch, so nothing is unobtainable); the held keys still verify.
    expect(await reason(corruptSignature(await mint({}, { key: c })))).toBe('bad_signature');
    expect(await reason(await mint({ jti: 'x' }, { key: b, kid: null }))).toBe('accepted');
    expect(server.count - before).toBe(1);
  });

  it('a token without kid verifies when keys that cannot be used (RSA under 2048 bits, malformed) come first in the JWKS', async () => {
    const a = await testKeyPair('RS256', 'a');
    for (const bad of await unusableJwks(() => null)) {
      // Each unusable key alone in front of the real one, without a kid, as the reviewer's JWKS [broken, good] had it.
      const { mint, reason } = await setup({}, { keys: [a], jwksFront: [bad] });
      expect(await reason(await mint({}, { key: a, kid: null })), JSON.stringify(bad).slice(0, 40)).toBe('accepted');
      expect(await reason(await mint({}, { key: await testKeyPair('RS256'), kid: null }))).toBe('bad_signature');
    }
  });

  it('refuses unknown crit, unencoded payloads (b64:false) and malformed segments', async () => {
    const { mint, reason, rsa, claims } = await setup();
    // jose refuses to sign an unknown crit, so sign by hand: a correctly signed token the verifier cannot understand.
    const critToken = rsaSign({ alg: 'RS256', kid: rsa.kid, crit: ['exp-policy'], 'exp-policy': 1 }, claims(), rsa);
    expect(await reason(critToken)).toBe('malformed_token');
    expect(await reason(rsaSign({ alg: 'RS256', kid: rsa.kid }, claims(), rsa))).toBe('accepted');
    expect(await reason(rawToken({ alg: 'RS256', kid: rsa.kid, b64: false, crit: ['b64'] }, claims(), 'c2ln'))).toBe('malformed_token');
    expect(await reason(rawToken('e30', claims(), 'c2ln'))).toBe('malformed_token');
    expect(await reason(rawToken('bm90IGpzb24', claims(), 'c2ln'))).toBe('malformed_token');
    expect(await reason(rawToken({ alg: 'RS256' }, 'WzFd', 'c2ln'))).toBe('malformed_token');
    expect(await reason(rawToken(b64url('[1]'), claims(), 'c2ln'))).toBe('malformed_token');
  });

  it('enforces typ, requiredClaims and maxTokenLifetimeSeconds when configured', async () => {
    const { mint, reason, verify, now } = await setup({ typ: 'at+jwt', requiredClaims: ['client_id'], maxTokenLifetimeSeconds: 600 });
    expect(await reason(await mint({ client_id: 'orders' }))).toBe('accepted');
    expect(await reason(await mint({ client_id: 'orders' }, { typ: 'JWT' }))).toBe('malformed_token');
    expect(await reason(await mint({ client_id: 'orders' }, { typ: 'application/at+jwt' }))).toBe('accepted');
    expect(await reason(await mint({}))).toBe('missing_claim');
    // null is no value: present to jose, missing to us.
    expect(await verify(await mint({ client_id: null })).catch((err: unknown) => err)).toMatchObject({ code: 'missing_claim', message: 'required "client_id" claim is null' });
    expect(await reason(await mint({ client_id: 'orders', exp: now() + 601 }))).toBe('lifetime_too_long');
    expect(await reason(await mint({ client_id: 'orders', iat: undefined, exp: now() + 601 }))).toBe('lifetime_too_long');
    expect(await reason(await mint({ client_id: 'orders', iat: undefined, nbf: now() - 100, exp: now() + 550 }))).toBe('lifetime_too_long');
  });

  it('takes a required claim only from the token itself, not from what every object has (constructor, toString)', async () => {
    const { mint, reason } = await setup({ requiredClaims: ['constructor', 'toString'] });
    expect(await reason(await mint({}))).toBe('missing_claim');
    expect(await reason(await mint({ constructor: 'c' }))).toBe('missing_claim');
    expect(await reason(await mint({ constructor: 'c', toString: 't' }))).toBe('accepted');
  });

  it('refuses a token for its claims before checking its signature: no key lookup, no JWKS refetch', async () => {
    const { mint, reason, now, server, rsa, clock } = await setup({ jwks: { cooldownSeconds: 1 } });
    clock.advance(2000);
    const before = server.count;
    // An unknown kid would refetch the issuer's JWKS (its cooldown is over); an expired token never gets that far.
    expect(await reason(await mint({ exp: now() - 60 }, { kid: 'rotated-away' }))).toBe('expired');
    expect(await reason(await mint({ aud: 'payments' }, { kid: 'rotated-away' }))).toBe('audience_mismatch');
    expect(server.count - before).toBe(0);
    expect(await reason(await mint({}, { kid: 'rotated-away' }))).toBe('unknown_key');
    expect(server.count - before).toBe(1);
    // A forged token is refused for its claims when they are wrong, and for its signature when they are right.
    const attacker = await testKeyPair('RS256', rsa.kid);
    expect(await reason(await mint({ exp: now() - 60 }, { key: attacker }))).toBe('expired');
    expect(await reason(corruptSignature(await mint({ nbf: now() + 600 })))).toBe('not_yet_valid');
    expect(await reason(await mint({}, { key: attacker }))).toBe('bad_signature');
  });

  it('takes a header typ of any shape without throwing: only a string typ is ever compared', async () => {
    // JSON.parse takes nesting that JSON.stringify cannot write back (it overflows the stack), and the header is the caller's.
    const deep = '['.repeat(5000) + ']'.repeat(5000);
    const signed = (typJson: string, key: TestKeyPair) => {
      const input = Buffer.from(`{"alg":"RS256","kid":"rsa-1","typ":${typJson}}`).toString('base64url');
      return (claims: Record<string, unknown>) => rsaSign(input, claims, key);
    };
    const open = await setup();
    const attacker = await testKeyPair('RS256', 'rsa-1');
    for (const typ of [deep, '{"a":1}', '7', 'null']) {
      expect(await open.reason(signed(typ, open.rsa)(open.claims())), typ.slice(0, 10)).toBe('accepted');
      expect(await open.reason(signed(typ, attacker)(open.claims())), typ.slice(0, 10)).toBe('bad_signature');
      expect(await open.reason(signed(typ, attacker)(open.claims({ exp: open.now() - 60 }))), typ.slice(0, 10)).toBe('expired');
    }
    const strict = await setup({ typ: 'at+jwt' });
    for (const typ of [deep, '{"a":1}', '7', 'null']) {
      expect(await strict.reason(signed(typ, strict.rsa)(strict.claims())), typ.slice(0, 10)).toBe('malformed_token');
      expect(await strict.reason(signed(typ, attacker)(strict.claims())), typ.slice(0, 10)).toBe('malformed_token');
    }
    expect(await strict.reason(signed('"application/AT+JWT"', strict.rsa)(strict.claims()))).toBe('accepted');
  });

  it('refuses really signed claims nested past MAX_CLAIMS_DEPTH as malformed_token (after the signature: a forgery stays bad_signature)', async () => {
    const { rsa, claims, reason, verify } = await setup();
    const attacker = await testKeyPair('RS256', 'rsa-1');
    // The payload object is level 1, so a claim may nest MAX_CLAIMS_DEPTH - 1 arrays.
    const withSub = (depth: number) => JSON.stringify(claims()).replace('"sub":"orders"', `"sub":${'['.repeat(depth)}"orders"${']'.repeat(depth)}`);
    for (const [depth, want] of [[MAX_CLAIMS_DEPTH - 1, 'accepted'], [MAX_CLAIMS_DEPTH, 'malformed_token'], [5_000, 'malformed_token']] as const) {
      expect(await reason(await signRaw(withSub(depth), rsa)), `signed, ${depth}`).toBe(want);
      expect(await reason(await signRaw(withSub(depth), attacker)), `forged, ${depth}`).toBe('bad_signature');
    }
    // Objects count like arrays, in any claim.
    const objects = (depth: number) => JSON.stringify(claims()).replace(/}$/, `,"x":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`);
    expect(await reason(await signRaw(objects(MAX_CLAIMS_DEPTH - 1), rsa))).toBe('accepted');
    expect(await reason(await signRaw(objects(MAX_CLAIMS_DEPTH), rsa))).toBe('malformed_token');
    await expect(verify(await signRaw(withSub(MAX_CLAIMS_DEPTH), rsa))).rejects.toThrow(`token claims nest deeper than ${MAX_CLAIMS_DEPTH} levels`);
  });

  it('gives every really signed or forged token the reason jose\'s full verification gives it (claims checked first)', async () => {
    const skew = 30;
    const max = 3600;
    const { rsa, mint, reason, now, clock, config } = await setup({ clockSkewSeconds: skew, typ: 'at+jwt', requiredClaims: ['sub'], maxTokenLifetimeSeconds: max }, { cacheEntries: 0 });
    const jwks = createLocalJWKSet({ keys: [rsa.publicJwk] });
    // The reference: jose verifying signature and claims in one call, as the authenticator did before it checked claims first.
    const expected = async (token: string): Promise<string> => {
      try {
        const { payload } = await jwtVerify(token, jwks, {
          algorithms: ['RS256'],
          issuer: ISS,
          audience: [config.audience].flat(),
          clockTolerance: skew,
          requiredClaims: ['exp', 'sub'],
          typ: 'at+jwt',
          currentDate: new Date(clock.now()),
        });
        const t = clock.now() / 1000;
        checkTimes(payload, t, skew);
        checkLifetime(payload, t, max);
        return 'accepted';
      } catch (err) {
        return fromJoseError(err).code;
      }
    };
    const rel = (v: number | string | undefined) => (typeof v === 'number' ? now() + v : v);
    const seen = new Set<string>();
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          exp: fc.constantFrom<number | string | undefined>(300, 3000, -29, -31, 7200, undefined, 'soon'),
          nbf: fc.constantFrom<number | string | undefined>(undefined, -600, 29, 31, 'x'),
          iat: fc.constantFrom<number | string | undefined>(undefined, 0, 29, 31, -5000, 'x'),
          aud: fc.constantFrom<unknown>('orders', ['x', 'orders'], 'payments', undefined, 5, []),
          sub: fc.constantFrom<string | undefined>('orders', undefined),
        }),
        fc.constantFrom<string | null>('at+jwt', 'application/at+jwt', 'JWT', null),
        fc.boolean(),
        async (c, typ, forged) => {
          const token = await mint({ exp: rel(c.exp), nbf: rel(c.nbf), iat: rel(c.iat), aud: c.aud, sub: c.sub }, { typ });
          const want = await expected(token);
          seen.add(want);
          if (!forged) expect(await reason(token), JSON.stringify({ c, typ })).toBe(want);
          else expect(await reason(corruptSignature(token)), JSON.stringify({ c, typ })).toBe(want === 'accepted' ? 'bad_signature' : want);
        },
      ),
      {
        numRuns: 300,
        // One case per outcome, so the coverage check below never rests on the random draws.
        examples: [
          [{ exp: 300, nbf: undefined, iat: undefined, aud: 'orders', sub: 'orders' }, 'at+jwt', false],
          [{ exp: -31, nbf: undefined, iat: undefined, aud: 'orders', sub: 'orders' }, 'at+jwt', true],
          [{ exp: 300, nbf: 31, iat: undefined, aud: 'orders', sub: 'orders' }, 'at+jwt', false],
          [{ exp: 300, nbf: undefined, iat: 31, aud: 'orders', sub: 'orders' }, 'at+jwt', true],
          [{ exp: 300, nbf: undefined, iat: undefined, aud: 'payments', sub: 'orders' }, 'at+jwt', false],
          [{ exp: 300, nbf: undefined, iat: undefined, aud: 'orders', sub: undefined }, 'at+jwt', true],
          [{ exp: 300, nbf: undefined, iat: undefined, aud: 'orders', sub: 'orders' }, 'JWT', false],
          [{ exp: 7200, nbf: undefined, iat: 0, aud: 'orders', sub: 'orders' }, 'at+jwt', true],
        ],
      },
    );
    // Not hollow: the cases covered acceptance and each kind of claims refusal.
    for (const r of ['accepted', 'expired', 'not_yet_valid', 'issued_in_future', 'audience_mismatch', 'missing_claim', 'malformed_token', 'lifetime_too_long']) {
      expect(seen, r).toContain(r);
    }
  });

  it('answers keys_unavailable (never a pass) when the issuer has no keys', async () => {
    const { mint, server, clock } = await setup();
    server.set({ status: 503 });
    const config = inboundConfig({ issuers: [{ issuer: ISS, jwksUri: server.url }] });
    const metrics = testMetrics();
    const empty = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics, clock, scheduler: manualScheduler() });
    cleanups.push(() => empty.close());
    await empty.start();
    const auth = createAuthenticator(config, { keyStore: empty, cache: createVerifyCache({ maxEntries: 10, clock, metrics }), clock, buildIdentity: createIdentityBuilder(config.forward) });
    const token = await mint();
    await expect(auth.authenticate(checkShape(token))).rejects.toBeInstanceOf(KeysUnavailableError);
  });

  it('serves repeat tokens from the cache, re-checking exp on every hit', async () => {
    const { mint, verify, reason, metrics, clock, now } = await setup({ clockSkewSeconds: 0 });
    const token = await mint({ exp: now() + 60 });
    const first = await verify(token);
    const second = await verify(token);
    expect(second).toBe(first);
    expect(await counterValue(metrics, 'verifyCacheLookups', { result: 'hit' })).toBe(1);
    clock.advance(60_000);
    expect(await reason(token)).toBe('expired');
  });

  it('answers a repeat token synchronously from the cache (cached), and nothing it has not verified', async () => {
    const { auth, mint, verify, clock, now } = await setup({ clockSkewSeconds: 0 });
    const token = checkShape(await mint({ exp: now() + 60 }));
    expect(auth.cached(token)).toBeUndefined();
    const identity = await verify(token.token);
    expect(auth.cached(token)).toBe(identity);
    expect(auth.cached(checkShape(await mint({ sub: 'someone-else' })))).toBeUndefined();
    // An expired entry is no answer: the full verification then says why.
    clock.advance(60_000);
    expect(auth.cached(token)).toBeUndefined();
    await expect(verify(token.token)).rejects.toMatchObject({ code: 'expired' });
  });

  it('drops cached entries verified against a key set that has since changed, so a removed key stops passing', async () => {
    const { mint, verify, reason, server, keyStore, clock } = await setup({ jwks: { cooldownSeconds: 1 } });
    const token = await mint();
    await verify(token);
    expect(await reason(token)).toBe('accepted');
    // The IdP rotates rsa-1 out; a token with a new kid triggers the refetch that notices it.
    const next = await testKeyPair('RS256', 'rsa-2');
    server.set({ keys: [next.publicJwk] });
    clock.advance(1000);
    expect(await reason(await mint({}, { key: next }))).toBe('accepted');
    expect(keyStore.get(ISS)!.version).toBe(2);
    expect(await reason(token)).toBe('unknown_key');
  });

  it('rate-limits unknown-kid refetches per issuer (kid flood)', async () => {
    const { mint, reason, server } = await setup({ jwks: { cooldownSeconds: 30 } });
    const before = server.count;
    for (let i = 0; i < 25; i++) expect(await reason(await mint({}, { kid: `random-${i}` }))).toBe('unknown_key');
    expect(server.count - before).toBe(0);
  });

  it('with the cache disabled every call verifies', async () => {
    const { mint, verify, metrics } = await setup({}, { cacheEntries: 0 });
    const token = await mint();
    await verify(token);
    await verify(token);
    expect(await counterValue(metrics, 'verifyCacheLookups', { result: 'hit' })).toBe(0);
  });
});

function pairs(flat: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
}

/** RS256 over arbitrary header/payload with node:crypto (no jose checks on the header). */
function rsaSign(header: Record<string, unknown> | string, payload: Record<string, unknown>, key: TestKeyPair): string {
  const input = `${typeof header === 'string' ? header : b64url(header)}.${b64url(payload)}`;
  const sig = sign('sha256', Buffer.from(input), KeyObject.from(key.privateKey as never));
  return `${input}.${sig.toString('base64url')}`;
}

/** Signs an exact payload string (for number forms JSON.stringify cannot produce). */
async function signRaw(payload: string, key: TestKeyPair): Promise<string> {
  const { CompactSign } = await import('jose');
  return new CompactSign(new TextEncoder().encode(payload)).setProtectedHeader({ alg: key.alg, kid: key.kid }).sign(key.privateKey);
}
