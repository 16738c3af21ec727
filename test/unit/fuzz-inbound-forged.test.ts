import assert from 'node:assert/strict';
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { confusionSecrets, fuzzRuns, hmacToken, signRaw } from '../support/attacks.js';
import { b64url } from '../support/tokens.js';
import { A, attackerKeys, bearer, check, decide, keys, nowSeconds, useInboundFuzz } from './fuzz-inbound-harness.js';

/**
 * Fuzzing the inbound decision with tokens an attacker built: any header (alg
 * `none`, HMAC, unknown kids, embedded keys), any claims, signed with the
 * attacker's own keys, with random bytes, or with HMAC keyed by the issuer's
 * public key. None may ever be allowed.
 * The harness, its keys and its invariants: fuzz-inbound-harness.ts.
 * `FUZZ_RUNS` scales the property (npm test: a few hundred cases;
 * npm run test:hard: over a hundred thousand).
 */
useInboundFuzz();

describe('fuzz: forged tokens through the inbound decision are never allowed', () => {
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
        if (d.allowed) assert.fail(`accepted an attacker token: ${token}`);
      }),
    );
  });
});
