import { createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/admin/metrics.js';
import type { Decision } from '../../src/inbound/authorizer.js';
import { createInboundParts, type InboundParts } from '../../src/inbound/handler.js';
import { normalizePath } from '../../src/inbound/path.js';
import { createLogger } from '../../src/log.js';
import {
  applyMutation,
  b64urlSegment,
  confusionSecrets,
  fuzzRuns,
  hmacToken,
  mutationArb,
  rawHeadersArb,
  requestTargetArb,
  sameSignedToken,
  signRaw,
  tallyFuzzCases,
} from '../support/attacks.js';
import { b64url } from '../support/tokens.js';
import { inboundConfig, manualClock, manualScheduler, startJwksServer, type JwksServer } from './inbound-support.js';

/**
 * Property-based fuzzing of the whole inbound decision (path normalisation,
 * rule match, extraction, verification, policy) through the functions the
 * sidecar itself runs, with real keys behind a JWKS server on loopback and a
 * clock that stands still. The properties: never a throw or an unhandled
 * rejection, never an internal error, never an allow for anything that is not
 * a token one of the trusted keys really signed, and for tokens the trusted
 * keys did sign, exactly the decision an independent oracle predicts.
 * `FUZZ_RUNS` scales every property (npm test: a few thousand cases in all;
 * npm run test:hard: over a million).
 */

// Plain http like the local JWKS server both use (an https issuer needs an https jwksUri).
const A = 'http://idp-a.test';
const B = 'http://tenant-b.test/v2.0';
const SKEW = 30;
const MAX_LIFETIME = 3600;

interface Key {
  alg: 'RS256' | 'ES256' | 'EdDSA';
  kid: string;
  private: KeyObject;
}

let jwks: JwksServer;
/** JWKS requests after start-up: one per issuer. */
let startupFetches: number;
let parts: InboundParts;
let keys: Key[];
let attackerKeys: Key[];
const clock = manualClock(Date.parse('2031-05-01T12:00:00Z'));
const nowSeconds = () => clock.now() / 1000;

/** Log text is searched for the current case's secrets as each line is written. */
let needles: string[] = [];
const leaks: string[] = [];
let unhandled = 0;
const onUnhandled = () => void unhandled++;

function newKey(alg: Key['alg'], kid: string): Key {
  const { privateKey } =
    alg === 'RS256' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
  return { alg, kid, private: privateKey };
}

const publicJwk = (k: Key) => ({ ...createPublicKey(k.private).export({ format: 'jwk' }), kid: k.kid, alg: k.alg, use: 'sig' });

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  keys = [newKey('RS256', 'rsa-1'), newKey('ES256', 'ec-1'), newKey('EdDSA', 'ed-1')];
  attackerKeys = [newKey('RS256', 'rsa-1'), newKey('ES256', 'ec-1'), newKey('EdDSA', 'ed-1')];
  jwks = await startJwksServer({ keys: keys.map(publicJwk) });
  const config = inboundConfig({
    issuers: [
      { issuer: A, jwksUri: jwks.url },
      // Tenant B shares A's keys (multi-tenant IdP); only iss and its audience tell them apart.
      { issuer: B, jwksUri: jwks.url, audience: 'orders-b' },
    ],
    typ: 'at+jwt',
    maxTokenLifetimeSeconds: MAX_LIFETIME,
    cache: { maxEntries: 500 },
    rules: [
      { match: { path: '/public/**' }, public: true },
      { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
      { match: { path: '/api/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
    ],
  });
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = chunk.toString();
      for (const n of needles) if (n.length >= 16 && line.includes(n)) leaks.push(n);
      cb();
    },
  });
  parts = createInboundParts(config, {
    logger: createLogger({ level: 'info', destination: sink as never }),
    metrics: createMetrics({ processMetrics: false }),
    clock,
    service: 'orders',
    scheduler: manualScheduler(),
  });
  await parts.keyStore.start();
  expect(parts.keyStore.isReady()).toBe(true);
  startupFetches = jwks.count;
});

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await parts?.keyStore.close();
  await jwks?.close();
});

/** One decision; checks the invariants every input must keep, whatever it is. */
async function decide(method: string, url: string, rawHeaders: string[], secrets: string[] = []): Promise<Decision> {
  needles = secrets.flatMap((t) => [t, t.split('.')[2] ?? '', t.split('.')[1] ?? '']);
  const decision = await parts.authorizer.authorize({ method, url, rawHeaders, peer: '127.0.0.1' });
  needles = [];
  if (!decision.allowed) {
    expect(decision.error.code, `internal error for ${JSON.stringify({ method, url })}`).not.toBe('internal_error');
    expect([400, 401, 403, 503]).toContain(decision.error.status);
  }
  expect(leaks, 'token text written to the log').toEqual([]);
  return decision;
}

const bearer = (token: string) => ['Host', 'orders', 'Authorization', `Bearer ${token}`];
const claimsOf = (token: string): Record<string, unknown> => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));

/** What the rules allow for a verified subject on a path. */
function policyAllows(path: string, sub: unknown): boolean {
  if (path.startsWith('/admin')) return sub === 'deployer';
  if (path.startsWith('/api')) return sub === 'orders' || sub === 'deployer';
  return false;
}

function realToken(key: Key, claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  return signRaw({ alg: key.alg, typ: 'at+jwt', kid: key.kid, ...header }, claims, key.private);
}

/** Valid tokens of both tenants, every key, both subjects: the seeds for mutation. */
function seedTokens(): string[] {
  const now = Math.floor(nowSeconds());
  const out: string[] = [];
  for (const key of keys) {
    for (const sub of ['orders', 'deployer']) {
      out.push(realToken(key, { iss: A, sub, aud: 'orders', iat: now, exp: now + 600, jti: randomUUID() }));
      out.push(realToken(key, { iss: B, sub, aud: ['x', 'orders-b'], iat: now, exp: now + 600, scope: 'read' }));
    }
  }
  return out;
}

async function check(name: string, runs: number, property: fc.IAsyncProperty<any>): Promise<void> {
  const before = unhandled;
  await fc.assert(property, { numRuns: runs });
  expect(unhandled - before, 'unhandled rejections').toBe(0);
  await tallyFuzzCases(name, runs);
}

describe('fuzz: the inbound decision never crashes and never lets an unsigned request through', () => {
  it('seeds: every seed token is allowed where its subject may go (so the properties below start from real passes)', async () => {
    for (const t of seedTokens()) {
      const d = await decide('GET', '/api/x', bearer(t), [t]);
      expect(d.allowed).toBe(true);
      if (d.allowed) expect(d.identity!.claims).toEqual(claimsOf(t));
    }
  });

  it('random header lists and request targets: only public paths pass, nothing throws', async () => {
    await check(
      'inbound.random-requests',
      fuzzRuns(5),
      fc.asyncProperty(fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE', 'get', 'PATCH'), requestTargetArb, rawHeadersArb, async (method, url, rawHeaders) => {
        const d = await decide(method, url, rawHeaders);
        if (d.allowed) {
          expect(d.reason).toBe('public');
          expect(d.target.split('?')[0]!.startsWith('/public')).toBe(true);
        }
      }),
    );
  });

  it('mutated real tokens: allowed only when the mutation left the signed bytes intact', async () => {
    const seeds = seedTokens();
    await check(
      'inbound.mutated-tokens',
      fuzzRuns(3),
      fc.asyncProperty(fc.nat(seeds.length - 1), fc.array(mutationArb, { minLength: 1, maxLength: 4 }), fc.constantFrom('/api/x', '/admin/x'), async (i, mutations, path) => {
        const seed = seeds[i]!;
        const token = mutations.reduce(applyMutation, seed);
        const d = await decide('GET', path, bearer(token), [token, seed]);
        if (d.allowed) {
          // Spaces between the scheme and the token are allowed (RFC 9110 §11.4: 1*SP), so compare what follows them.
          expect(sameSignedToken(token.replace(/^[ \t]+/, ''), seed), `accepted a changed token: ${token}`).toBe(true);
          expect(policyAllows(path, claimsOf(seed).sub)).toBe(true);
        }
      }),
    );
  });

  it('attacker-built tokens (any header, any claims, random or attacker signatures, HMAC with the public key): never allowed', async () => {
    const now = Math.floor(nowSeconds());
    const pems = keys.map((k) => confusionSecrets(k.private)['spki-pem']!);
    const header = fc.record(
      {
        alg: fc.constantFrom('RS256', 'ES256', 'EdDSA', 'PS256', 'none', 'HS256', 'RS512', 'ES512', ''),
        kid: fc.constantFrom('rsa-1', 'ec-1', 'ed-1', 'evil', '../../dev/null', ''),
        typ: fc.constantFrom('at+jwt', 'JWT', 'application/at+jwt'),
        extra: fc.dictionary(fc.constantFrom('jku', 'jwk', 'x5u', 'cty', 'b64', 'zip', 'x'), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 2 }),
      },
      { requiredKeys: ['alg'] },
    );
    const payload = fc.record({
      base: fc.constant({ iss: A, sub: 'deployer', aud: 'orders', iat: now, exp: now + 600 }),
      over: fc.dictionary(fc.constantFrom('iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'x'), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
    });
    const signer = fc.oneof(
      fc.constant({ kind: 'attacker' as const }),
      fc.constant({ kind: 'hmac' as const }),
      fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 260 }) }),
    );
    await check(
      'inbound.attacker-tokens',
      fuzzRuns(2),
      fc.asyncProperty(header, payload, signer, fc.constantFrom('/api/x', '/admin/x'), async (h, p, s, path) => {
        const { extra, ...rest } = h;
        const hdr = { ...extra, ...rest };
        const claims = { ...p.base, ...p.over };
        let token: string;
        if (s.kind === 'random') token = `${b64url(hdr)}.${b64url(claims)}.${Buffer.from(s.bytes).toString('base64url')}`;
        else if (s.kind === 'hmac') token = hmacToken('HS256', pems[claims.sub === 'deployer' ? 0 : 1]!, hdr, claims);
        else {
          const key = attackerKeys.find((k) => k.alg === hdr.alg) ?? attackerKeys[0]!;
          token = signRaw(hdr, claims, key.private);
        }
        const d = await decide('GET', path, bearer(token), [token]);
        expect(d.allowed, `accepted an attacker token: ${token}`).toBe(false);
      }),
    );
  });

  it('really signed tokens with random claims: the decision is exactly what an independent oracle predicts', async () => {
    const now = nowSeconds();
    const rel = (v: number | string | undefined) => (typeof v === 'number' ? Math.floor(now) + v : v);
    // Mostly valid values, so that both outcomes are common: each field is wrong about one time in six.
    const mostly = <T,>(valid: T[], invalid: T[]) => fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...valid) }, { weight: 1, arbitrary: fc.constantFrom(...invalid) });
    const claimsArb = fc.record({
      iss: mostly<unknown>([A, B], [`${A}/`, 'https://evil.test', undefined, 7]),
      aud: mostly<unknown>(['own', 'own-in-list'], ['orders', 'orders-b', 'x', undefined, 5, []]),
      exp: mostly<number | string | undefined>([600, 600.5, 3000], [-600, 7200, undefined, 'soon']),
      nbf: mostly<number | string | undefined>([undefined, -600], [600, 'x']),
      iat: mostly<number | string | undefined>([undefined, -600, 0], [600, 'x', -5000]),
      sub: fc.constantFrom<unknown>('orders', 'deployer', 'deployer', 'x', 1, undefined),
    });
    const headerArb = fc.record({
      key: fc.nat(keys.length - 1),
      kid: mostly<'real' | 'none' | 'other'>(['real', 'none'], ['other']),
      typ: mostly<string | undefined>(['at+jwt', 'application/at+jwt', 'AT+JWT'], ['JWT', undefined, 'dpop+jwt']),
    });
    const outcomes = { allow: 0, deny: 0, reject: 0 };
    await check(
      'inbound.oracle',
      fuzzRuns(1),
      fc.asyncProperty(claimsArb, headerArb, fc.constantFrom('/api/x', '/admin/x'), async (c, h, path) => {
        const claims: Record<string, unknown> = { jti: randomUUID() };
        // 'own' is the audience of the token's own issuer (B has its own); a fixed value is then the other tenant's or nobody's.
        const own = c.iss === B ? 'orders-b' : 'orders';
        const audience = c.aud === 'own' ? own : c.aud === 'own-in-list' ? ['x', own] : c.aud;
        for (const [k, v] of Object.entries({ ...c, aud: audience, exp: rel(c.exp), nbf: rel(c.nbf), iat: rel(c.iat) })) if (v !== undefined) claims[k] = v;
        const key = keys[h.key]!;
        const header: Record<string, unknown> = { alg: key.alg };
        if (h.kid === 'real') header.kid = key.kid;
        if (h.kid === 'other') header.kid = 'rotated-away';
        if (h.typ !== undefined) header.typ = h.typ;
        const token = signRaw(header, claims, key.private);

        const { exp, nbf, iat, iss, aud, sub } = claims;
        const wantAud = iss === B ? 'orders-b' : 'orders';
        const from = typeof iat === 'number' ? iat : typeof nbf === 'number' ? nbf : now;
        const valid =
          typeof h.typ === 'string' && h.typ.toLowerCase().replace(/^application\//, '') === 'at+jwt' &&
          h.kid !== 'other' &&
          (iss === A || iss === B) &&
          (aud === wantAud || (Array.isArray(aud) && aud.includes(wantAud))) &&
          typeof exp === 'number' && exp > now - SKEW &&
          (nbf === undefined || (typeof nbf === 'number' && nbf <= now + SKEW)) &&
          (iat === undefined || (typeof iat === 'number' && iat <= now + SKEW)) &&
          exp - from <= MAX_LIFETIME;
        const d = await decide('GET', path, bearer(token), [token]);
        expect(d.allowed, JSON.stringify({ header, claims, path, got: d.allowed ? 'allow' : d.error.code })).toBe(valid && policyAllows(path, sub));
        if (!d.allowed) expect(d.error.status).toBe(valid ? 403 : 401);
        else expect(d.identity!.claims).toEqual(claims);
        outcomes[d.allowed ? 'allow' : valid ? 'deny' : 'reject']++;
      }),
    );
    // Not a hollow property: every outcome happened (with a hundred runs or more, each is all but certain).
    if (fuzzRuns(1) >= 100) for (const [k, n] of Object.entries(outcomes)) expect(n, k).toBeGreaterThan(0);
  });

  it('paths: the rule that decides is the one for the path a WHATWG URL parser resolves; ambiguous paths are bad_path', async () => {
    const deployer = seedTokens()[3]!;
    expect(claimsOf(deployer).sub).toBe('deployer');
    const segment = fc.constantFrom('.', '..', '%2e', '%2E', '%2e%2e', '.%2e', '%2E.', 'admin', 'public', 'api', 'x', 'x%2e');
    await check(
      'inbound.paths',
      fuzzRuns(3),
      fc.asyncProperty(fc.array(segment, { minLength: 1, maxLength: 8 }), fc.boolean(), async (segments, trailing) => {
        const raw = `/${segments.join('/')}${trailing ? '/' : ''}`;
        const d = await decide('GET', raw, bearer(deployer), [deployer]);
        const first = new URL(`http://h${raw}`).pathname.split('/')[1];
        const want = first === 'public' ? 'public' : first === 'admin' || first === 'api' ? 'ok' : 'policy_denied';
        expect(d.allowed ? d.reason : d.error.code, raw).toBe(want);
        if (d.allowed) {
          expect(d.target.split('/')[1]).toBe(first);
          // What the app receives is canonical: normalising it again changes nothing.
          expect(normalizePath(d.target)).toBe(d.target);
        }
      }),
    );
    await check(
      'inbound.ambiguous-paths',
      fuzzRuns(1),
      fc.asyncProperty(
        fc.array(fc.oneof(segment, b64urlSegment(3)), { maxLength: 4 }),
        fc.constantFrom(';', ';x=1', '%2f', '%2F', '%5c', '%5C', '\\', '%00', '#', '%z', '%g0', '%0z', '\u0001', ' ', '\u00ff', '\u007f'),
        fc.array(fc.oneof(segment, b64urlSegment(3)), { maxLength: 4 }),
        async (before, bad, after) => {
          const raw = `/public/${before.join('/')}${bad}${after.join('/')}`;
          const d = await decide('GET', raw, bearer(deployer), [deployer]);
          expect(d.allowed ? d.reason : d.error.code, raw).toBe('bad_path');
        },
      ),
    );
  });

  it('a burst of unknown kids within the cooldown cost no JWKS refetch at all (the fuzzing above included)', () => {
    expect(startupFetches).toBe(2);
    expect(jwks.count).toBe(startupFetches);
  });
});
