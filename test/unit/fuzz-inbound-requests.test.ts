import assert from 'node:assert/strict';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { normalizePath } from '../../src/inbound/path.js';
import { b64urlSegment, fuzzRuns, rawHeadersArb, requestTargetArb } from '../support/attacks.js';
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
  it('random header lists and request targets: only public paths pass, nothing throws', async () => {
    await check(
      'inbound.random-requests',
      fuzzRuns(5),
      fc.asyncProperty(fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE', 'get', 'PATCH'), requestTargetArb, rawHeadersArb, async (method, url, rawHeaders) => {
        const d = await decide(method, url, rawHeaders);
        if (d.allowed) {
          assert.equal(d.reason, 'public');
          assert.ok(d.target.split('?')[0]!.startsWith('/public'), `allowed ${d.target}`);
        }
      }),
    );
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
