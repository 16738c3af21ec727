import assert from 'node:assert/strict';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { normalizePath } from '../../src/inbound/path.js';
import { b64urlSegment, contractTarget, fuzzRuns, isPublicPath, rawHeadersArb, requestTargetArb } from '../support/attacks.js';
import { bearer, check, claimsOf, decide, seedTokens, useInboundFuzz } from './fuzz-inbound-harness.js';

/**
 * Fuzzing the inbound decision with what arrives before any token is judged:
 * random header lists and request targets, dot segments and ambiguous bytes in
 * paths. Only public paths pass without a token, and the rule that decides is
 * the one for the path a WHATWG URL parser resolves.
 * The harness, its keys and its invariants: fuzz-inbound-harness.ts.
 * `FUZZ_RUNS` scales every property (npm test: a few thousand cases in all;
 * npm run test:hard: over a million, with fuzz-config and attack-fuzz).
 */
useInboundFuzz();

describe('fuzz: requests and paths through the inbound decision', () => {
  it('random header lists and request targets: only public paths pass, the app gets the canonical one, nothing throws', async () => {
    // "Public" is judged from the target as requested, resolved by the README's path contract (contractTarget), not
    // from what the sidecar would forward: if the sidecar matched and forwarded a raw "/public/../admin/x", the
    // forwarded target would look public too, and a check on it could not fail.
    let admitted = 0;
    // Half the targets start inside the public tree, so the tricks that follow (dot segments, empty ones, escapes)
    // get to try to climb out of it: random targets alone almost never name /public.
    const target = fc.oneof(requestTargetArb, requestTargetArb.filter((t) => t.startsWith('/')).map((t) => `/public${t}`));
    await check(
      'inbound.random-requests',
      fuzzRuns(5),
      fc.asyncProperty(fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE', 'get', 'PATCH'), target, rawHeadersArb, async (method, url, rawHeaders) => {
        const d = await decide(method, url, rawHeaders);
        if (d.allowed) {
          admitted++;
          assert.equal(d.reason, 'public');
          const want = contractTarget(url);
          assert.ok(want, `allowed ${JSON.stringify(url)}, which the path contract refuses`);
          assert.ok(isPublicPath(want.path), `allowed ${JSON.stringify(url)}, which names ${want.path}`);
          assert.equal(d.target, want.path + want.query, `the app would receive another path for ${JSON.stringify(url)}`);
        }
      }),
      // Always tried, whatever the seed: traversal out of the public tree (plain, encoded, through empty segments,
      // absolute-form), and a public path the app must receive in its canonical spelling.
      ['/public/../admin/x', '/public/%2e%2e/admin/x', '/public//..//api/x?q=1', 'http://orders/public/./../admin', '/%70ublic//a/./b/%7e?x=%2e%2e'].map(
        (t): [string, string, string[]] => ['GET', t, []],
      ),
    );
    // Not hollow: some requests did pass and were checked (the last example, at least).
    expect(admitted).toBeGreaterThan(0);
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
        assert.equal(d.allowed ? d.reason : d.error.code, want, raw);
        if (d.allowed) {
          assert.equal(d.target.split('/')[1], first, raw);
          // What the app receives is canonical: normalising it again changes nothing.
          assert.equal(normalizePath(d.target), d.target, raw);
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
          assert.equal(d.allowed ? d.reason : d.error.code, 'bad_path', raw);
        },
      ),
    );
  });
});
