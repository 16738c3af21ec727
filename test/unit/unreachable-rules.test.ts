import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createInboundParts } from '../../src/inbound/handler.js';
import type { Decision } from '../../src/inbound/authorizer.js';
import { describeUnreachable, unreachableRules } from '../../src/inbound/unreachable-rules.js';
import { fuzzRuns } from '../support/attacks.js';
import { signToken, testKeyPair } from '../support/tokens.js';
import { captureLogger, inboundConfig, manualClock, manualScheduler, startJwksServer, testMetrics, type JwksServer } from './inbound-support.js';

const rule = (path: string, methods?: string[]) => ({ match: { path, ...(methods ? { methods } : {}) } });

/** The same glob spelt otherwise: each letter or `~` written as its escape, or an escape of one as the character, where `picks` says so. */
const OTHER_SPELLING: Record<string, string> = { A: '%41', '%41': 'A', a: '%61', '%61': 'a', '~': '%7E', '%7E': '~' };
function respell(glob: string, picks: readonly boolean[]): string {
  let n = 0;
  // Every escape is one unit (the `A` of `%2A` is hex, not a letter); those of other characters stay as they are.
  return glob.replace(/%[0-9A-Fa-f]{2}|[Aa~]/g, (c) => (OTHER_SPELLING[c] && picks[n++ % picks.length] ? OTHER_SPELLING[c] : c));
}

/** The letters of a path or glob in upper or lower case; an escape's hex is not a letter of the path. */
function inCase(text: string, letterCase: 'same' | 'upper' | 'lower'): string {
  if (letterCase === 'same') return text;
  return text.replace(/%[0-9A-Fa-f]{2}|[A-Za-z]/g, (c) => (c.length > 1 ? c : letterCase === 'upper' ? c.toUpperCase() : c.toLowerCase()));
}

/** A request target a glob matches (`**` as two segments, `*` as a letter), then in upper or lower case, its trailing slash toggled, respelt. */
function filledIn(glob: string, how: { upper: boolean; lower: boolean; slash: boolean; respell: readonly boolean[] }): string {
  let path = inCase(glob.replaceAll('**', 'a/b').replaceAll('*', 'a'), how.upper ? 'upper' : how.lower ? 'lower' : 'same');
  if (how.slash) path = path.endsWith('/') ? path.slice(0, -1) || '/' : `${path}/`;
  return respell(path, how.respell);
}

describe('unreachableRules', () => {
  it('reports a rule under an earlier prefix/** for the same methods, naming the rule that decides instead', () => {
    expect(unreachableRules([rule('/api/**'), rule('/api/admin/**'), rule('/health')])).toEqual([{ index: 1, pattern: '/api/admin/**', coveredBy: [0] }]);
    expect(unreachableRules([rule('/**'), rule('/health'), rule('/a/*/b'), rule('/')])).toEqual([
      { index: 1, pattern: '/health', coveredBy: [0] },
      { index: 2, pattern: '/a/*/b', coveredBy: [0] },
      { index: 3, pattern: '/', coveredBy: [0] },
    ]);
  });

  it('reports the same glob twice, in any spelling of it, and a literal path an earlier glob matches', () => {
    expect(unreachableRules([rule('/a%7Eb/*'), rule('/a~b/*')]).map((u) => u.index)).toEqual([1]);
    expect(unreachableRules([rule('/%41dmin/**'), rule('/Admin/users')]).map((u) => u.index)).toEqual([1]);
    expect(unreachableRules([rule('/users/*/keys'), rule('/users/42/keys')]).map((u) => u.coveredBy)).toEqual([[0]]);
    expect(unreachableRules([rule('/a/b'), rule('/a/b')]).map((u) => u.coveredBy)).toEqual([[0]]);
  });

  it('counts methods: a rule is unreachable only when every method it takes is taken earlier, by one rule or several', () => {
    // GET brings HEAD (methodSet), so a GET rule is covered only where HEAD is too.
    expect(unreachableRules([rule('/**', ['GET']), rule('/x', ['GET'])])).toHaveLength(1);
    expect(unreachableRules([rule('/**', ['GET']), rule('/x', ['HEAD'])])).toHaveLength(1);
    expect(unreachableRules([rule('/**', ['HEAD']), rule('/x', ['GET'])])).toEqual([]);
    expect(unreachableRules([rule('/**', ['GET']), rule('/x', ['GET', 'POST'])])).toEqual([]);
    expect(unreachableRules([rule('/**', ['GET']), rule('/x/**', ['POST']), rule('/x/y', ['GET', 'POST'])])).toEqual([{ index: 2, pattern: '/x/y', coveredBy: [0, 1] }]);
    // A rule for every method after rules for some.
    expect(unreachableRules([rule('/**', ['GET', 'POST']), rule('/x')])).toEqual([]);
  });

  it('CONNECT never reaches the rules (the listener answers it 405): a rule for it alone is reported, and it is left out of the others', () => {
    expect(unreachableRules([rule('/tunnel', ['CONNECT'])])).toEqual([{ index: 0, pattern: '/tunnel', coveredBy: [] }]);
    expect(unreachableRules([rule('/**', ['GET']), rule('/x', ['GET', 'CONNECT'])])).toEqual([{ index: 1, pattern: '/x', coveredBy: [0] }]);
    expect(describeUnreachable({ index: 0, pattern: '/tunnel', coveredBy: [] }, [rule('/tunnel', ['CONNECT'])])).toBe(
      'inbound.rules.0 (/tunnel) is never used: it is for CONNECT alone, which the inbound listener answers 405 before the rules; remove it',
    );
  });

  it('says which earlier rules decide, with their methods and the HEAD a GET brings', () => {
    const rules = [rule('/**', ['GET']), rule('/x/**', ['post']), rule('/x/y', ['HEAD', 'POST'])];
    expect(unreachableRules(rules).map((u) => describeUnreachable(u, rules))).toEqual([
      'inbound.rules.2 (/x/y) is never used: rules 0 (/** for GET (and HEAD)) and 1 (/x/** for POST) match every request it would match and come first (the first matching rule decides); move it before them, or remove it',
    ]);
  });

  it('leaves alone what the globs do not prove: a wider rule after a narrower one, a sibling, a glob that is not a prefix', () => {
    expect(unreachableRules([rule('/api/admin/**'), rule('/api/**')])).toEqual([]);
    expect(unreachableRules([rule('/a/**'), rule('/ab'), rule('/a*')])).toEqual([]);
    expect(unreachableRules([rule('/a/b*/**'), rule('/a/bc/x')]).map((u) => u.index)).toEqual([1]);
    expect(unreachableRules([rule('/a/b*/**'), rule('/a/b/**')])).toEqual([]);
    expect(unreachableRules([rule('/*/x'), rule('/a/x/**')])).toEqual([]);
    expect(unreachableRules([])).toEqual([]);
  });

  it('finds the same among thousands of rules (looked up by glob and prefix, not each pair of rules)', () => {
    const many = Array.from({ length: 5000 }, (_, i) => rule(`/svc${i}/**`));
    const found = unreachableRules([...many, rule('/svc4999/admin'), rule('/svc12/*/x'), rule('/other')]);
    expect(found).toEqual([
      { index: 5000, pattern: '/svc4999/admin', coveredBy: [4999] },
      { index: 5001, pattern: '/svc12/*/x', coveredBy: [12] },
    ]);
  });
});

/**
 * Soundness through the authorizer itself: a reported rule is given a policy nobody passes and every other rule one
 * the caller passes, so a request decided by a reported rule, as the exact match or as a rule another spelling of the
 * path meets (letter case, trailing slash, escapes as sent), shows up as that rule in the decision.
 */
describe('unreachableRules against the authorizer', () => {
  const ISS = 'http://idp.test';
  let jwks: JwksServer;
  let key: Awaited<ReturnType<typeof testKeyPair>>;
  let token: string;
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'));
  beforeAll(async () => {
    key = await testKeyPair('ES256', 'ec-1');
    jwks = await startJwksServer({ keys: [key.publicJwk] });
    const now = Math.floor(clock.now() / 1000);
    token = await signToken({ iss: ISS, sub: 'caller', aud: 'orders', iat: now, exp: now + 300 }, { key: key.privateKey, alg: key.alg, kid: key.kid });
  });
  afterAll(() => jwks?.close());

  it('no request is decided by a reported rule, on random rules and request targets', async () => {
    const globSegment = fc.constantFrom('a', 'A', '%41', 'b', 'ab', '*', '**', 'a*', '*b', 'A*', '%2A', 'a~', 'a%7E');
    const glob = fc.array(globSegment, { maxLength: 3 }).map((s) => `/${s.join('/')}`);
    const methods = fc.option(fc.subarray(['GET', 'HEAD', 'POST', 'DELETE'], { minLength: 1 }), { nil: undefined });
    // A rule is a fresh glob, or an earlier rule's glob spelt another way (letters as escapes and back), which is the
    // same glob: rules that share a glob in other spellings are what a fresh glob alone almost never gives.
    // Or in other letter case, which is another glob, but one the case-folded matching of shadows() takes as the same.
    const ruleSpec = fc.record({ fresh: glob, methods, copyOf: fc.option(fc.nat(), { nil: undefined }), respell: fc.array(fc.boolean(), { minLength: 1, maxLength: 4 }), letterCase: fc.constantFrom('same', 'upper', 'lower') });
    const rules = fc.array(ruleSpec, { minLength: 2, maxLength: 5 }).map((specs) => {
      const paths: string[] = [];
      for (const [i, spec] of specs.entries()) {
        paths.push(spec.copyOf !== undefined && i > 0 ? respell(inCase(paths[spec.copyOf % i]!, spec.letterCase), spec.respell) : spec.fresh);
      }
      return specs.map((spec, i) => rule(paths[i]!, spec.methods));
    });
    // A request is a random target, or one of the rules' globs filled in, in other letter case and slash, or respelt.
    const pathSegment = fc.constantFrom('a', 'A', '%41', '%61', 'b', 'ab', 'AB', 'a~', 'a%7E', '*', '%2A', '%2a', 'x', '', '.', '..');
    const randomTarget = fc.tuple(fc.array(pathSegment, { maxLength: 4 }), fc.boolean()).map(([s, slash]) => `/${s.join('/')}${slash && s.length ? '/' : ''}`);
    const fromRule = fc.record({ rule: fc.nat(), upper: fc.boolean(), lower: fc.boolean(), slash: fc.boolean(), respell: fc.array(fc.boolean(), { minLength: 1, maxLength: 4 }) });
    const request = fc.tuple(fc.constantFrom('GET', 'HEAD', 'POST', 'DELETE', 'PUT'), fc.oneof(randomTarget, fromRule));
    let reported = 0;
    await fc.assert(
      fc.asyncProperty(rules, fc.array(request, { minLength: 1, maxLength: 25 }), async (rs, requests) => {
        const unreachable = new Set(unreachableRules(rs).map((u) => u.index));
        reported += unreachable.size;
        const config = inboundConfig({
          issuers: [{ issuer: ISS, jwksUri: jwks.url }],
          rules: rs.map((r, i) => ({ ...r, allow: [{ sub: unreachable.has(i) ? 'nobody' : 'caller' }] })),
        });
        const parts = createInboundParts(config, { logger: captureLogger().logger, metrics: testMetrics(), clock, service: 'orders', scheduler: manualScheduler() });
        try {
          await parts.keyStore.start();
          for (const [method, spec] of requests) {
            const url = typeof spec === 'string' ? spec : filledIn(rs[spec.rule % rs.length]!.match.path, spec);
            const decision: Decision = await parts.authorizer.decide({ method, url, rawHeaders: ['Authorization', `Bearer ${token}`], peer: '127.0.0.1' });
            const by = decision.rule?.index;
            expect(by !== undefined && unreachable.has(by), `${method} ${url} decided by reported rule ${by} of ${JSON.stringify(rs)}`).toBe(false);
          }
        } finally {
          await parts.keyStore.close();
        }
      }),
      { numRuns: fuzzRuns(8) },
    );
    // The property is only worth something if the random rules produce reports.
    expect(reported).toBeGreaterThan(50);
  });
});
