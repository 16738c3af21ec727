import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createMatcher } from '../../src/inbound/matcher.js';
import { unreachableRules } from '../../src/inbound/unreachable-rules.js';
import { fuzzRuns } from '../support/attacks.js';

const rule = (path: string, methods?: string[]) => ({ match: { path, ...(methods ? { methods } : {}) } });

describe('unreachableRules', () => {
  it('reports a rule under an earlier prefix/** for the same methods, naming the rule that decides instead', () => {
    expect(unreachableRules([rule('/api/**'), rule('/api/admin/**'), rule('/health')])).toEqual([{ index: 1, pattern: '/api/admin/**', coveredBy: [0] }]);
    expect(unreachableRules([rule('/**'), rule('/health'), rule('/a/*/b')])).toEqual([
      { index: 1, pattern: '/health', coveredBy: [0] },
      { index: 2, pattern: '/a/*/b', coveredBy: [0] },
    ]);
  });

  it('reports the same glob twice, in any spelling of it, and a literal path an earlier glob matches', () => {
    expect(unreachableRules([rule('/a%7Eb/*'), rule('/a~b/*')]).map((u) => u.index)).toEqual([1]);
    expect(unreachableRules([rule('/users/*/keys'), rule('/users/42/keys')]).map((u) => u.coveredBy)).toEqual([[0]]);
  });

  it('counts methods: a rule is unreachable only when every method it takes is taken earlier, by one rule or several', () => {
    // GET brings HEAD (methodSet), so a GET rule is covered only where HEAD is too.
    expect(unreachableRules([rule('/**', ['GET']), rule('/x', ['GET'])])).toHaveLength(1);
    expect(unreachableRules([rule('/**', ['HEAD']), rule('/x', ['GET'])])).toEqual([]);
    expect(unreachableRules([rule('/**', ['GET']), rule('/x', ['GET', 'POST'])])).toEqual([]);
    expect(unreachableRules([rule('/**', ['GET']), rule('/x/**', ['POST']), rule('/x/y', ['GET', 'POST'])])).toEqual([{ index: 2, pattern: '/x/y', coveredBy: [0, 1] }]);
    // A rule for every method after rules for some.
    expect(unreachableRules([rule('/**', ['GET', 'POST']), rule('/x')])).toEqual([]);
  });

  it('leaves alone what the globs do not prove: a wider rule after a narrower one, a sibling, a glob that is not a prefix', () => {
    expect(unreachableRules([rule('/api/admin/**'), rule('/api/**')])).toEqual([]);
    expect(unreachableRules([rule('/a/**'), rule('/ab'), rule('/a*')])).toEqual([]);
    expect(unreachableRules([rule('/*/x'), rule('/a/x/**')])).toEqual([]);
    expect(unreachableRules([])).toEqual([]);
  });

  it('is never wrong: on random rules, no path is matched by a reported rule without an earlier one matching it first', () => {
    const globSegment = fc.constantFrom('a', 'b', 'ab', '*', '**', 'a*', '*b', 'a%7E', 'a~');
    const glob = fc.array(globSegment, { maxLength: 4 }).map((s) => `/${s.join('/')}`);
    const methods = fc.option(fc.subarray(['GET', 'HEAD', 'POST', 'DELETE'], { minLength: 1 }), { nil: undefined });
    const rules = fc.array(fc.record({ path: glob, methods }), { minLength: 1, maxLength: 5 }).map((rs) => rs.map((r) => rule(r.path, r.methods)));
    const path = fc.tuple(fc.array(fc.constantFrom('a', 'b', 'ab', 'ba', 'a~', 'x', ''), { maxLength: 5 }), fc.boolean()).map(([s, slash]) => `/${s.join('/')}${slash && s.length ? '/' : ''}`);
    let reported = 0;
    fc.assert(
      fc.property(rules, fc.array(path, { minLength: 1, maxLength: 20 }), fc.constantFrom('GET', 'HEAD', 'POST', 'DELETE', 'PUT'), (rs, paths, method) => {
        const unreachable = new Set(unreachableRules(rs).map((u) => u.index));
        reported += unreachable.size;
        const matcher = createMatcher(rs);
        for (const p of paths) {
          const first = matcher.match(method, p);
          if (first) expect(unreachable.has(first.index), `${method} ${p} decided by reported rule ${first.index} of ${JSON.stringify(rs)}`).toBe(false);
        }
      }),
      { numRuns: fuzzRuns(10) },
    );
    // The property is only worth something if the random rules produce reports.
    expect(reported).toBeGreaterThan(100);
  });
});
