import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { applyMutation, fuzzRuns, mutationArb, signRaw } from '../support/attacks.js';
import { A, B, MAX_LIFETIME, SKEW, bearer, check, claimsOf, decide, keys, nowSeconds, policyAllows, seedTokens, useInboundFuzz } from './fuzz-inbound-harness.js';

/**
 * Fuzzing the inbound decision with real tokens: mutated (never allowed unless
 * the token is exactly as issued) and really signed with random claims (exactly
 * the decision an independent oracle predicts). Tokens an attacker built:
 * fuzz-inbound-forged.
 * The harness, its keys and its invariants: fuzz-inbound-harness.ts.
 * `FUZZ_RUNS` scales every property (npm test: a few thousand cases in all;
 * npm run test:hard: over a million, with fuzz-config and attack-fuzz).
 */
useInboundFuzz();

describe('fuzz: real tokens through the inbound decision, mutated or with random claims', () => {
  it('seeds: every seed token is allowed where its subject may go (so the properties below start from real passes)', async () => {
    for (const t of seedTokens()) {
      const d = await decide('GET', '/api/x', bearer(t), [t]);
      expect(d.allowed).toBe(true);
      if (d.allowed) expect(d.identity!.claims).toEqual(claimsOf(t));
    }
  });

  it('mutated real tokens: allowed only when the mutations left the token exactly as issued', async () => {
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
          // Exactly the issued text: a signature re-spelt through base64url's spare bits is refused too.
          if (token.replace(/^[ \t]+/, '') !== seed) assert.fail(`accepted a changed token: ${token}`);
          assert.ok(policyAllows(path, claimsOf(seed).sub), `allowed ${path} for ${String(claimsOf(seed).sub)}`);
        }
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
        const got = d.allowed ? 'allow' : d.error.code;
        if (d.allowed !== (valid && policyAllows(path, sub))) assert.fail(`${got}, expected the opposite: ${JSON.stringify({ header, claims, path })}`);
        if (!d.allowed) assert.equal(d.error.status, valid ? 403 : 401, got);
        else if (!isDeepStrictEqual(d.identity!.claims, claims)) expect(d.identity!.claims).toEqual(claims);
        outcomes[d.allowed ? 'allow' : valid ? 'deny' : 'reject']++;
      }),
    );
    // Not a hollow property: every outcome happened (with a hundred runs or more, each is all but certain).
    if (fuzzRuns(1) >= 100) for (const [k, n] of Object.entries(outcomes)) expect(n, k).toBeGreaterThan(0);
  });
});
