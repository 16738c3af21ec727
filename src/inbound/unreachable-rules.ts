import { METHODS } from 'node:http';
import { anyBelowPrefix, compileGlob, methodSet, type PathGlob } from './matcher.js';

/** A rule no request can reach, and the earlier rules that take every request it would match. */
export interface UnreachableRule {
  /** Position in the rule list. */
  index: number;
  /** Its glob, as configured. */
  pattern: string;
  /** The earlier rules that decide instead, in rule order; empty for a rule for CONNECT alone. */
  coveredBy: readonly number[];
}

interface RuleShape {
  match: { path: string; methods?: readonly string[] | undefined };
}

/**
 * Every method a rule is matched for: those Node's HTTP parser lets through, except CONNECT, which the inbound
 * listener answers 405 before the rules.
 */
const EVERY_METHOD: readonly string[] = METHODS.filter((m) => m !== 'CONNECT');

interface Compiled {
  glob: PathGlob;
  methods: ReadonlySet<string> | undefined;
}

/**
 * The rules that can never decide a request. Rules are first-match, so an `/api/admin/**` rule placed after
 * `/api/**` (for the same methods or more) is never consulted: the policy written in it is not applied, and the
 * earlier, wider rule decides instead. That is almost always an ordering mistake in a security policy, so the sidecar
 * logs it when it loads the rules, and `validate` prints it.
 *
 * A rule is reported when, for each method it is matched for, some earlier rule for that method matches every path
 * it matches. Only coverage that can be shown from the globs' text is counted: the same glob, a literal path an
 * earlier glob matches, or a glob under an earlier literal `prefix/**`. So a reported rule is never the one that
 * decides a request, in any spelling of its path the authorizer looks at (test/unit/unreachable-rules.test.ts checks
 * that through the authorizer, on random rules and paths), while a rule that only a combination of globs hides
 * (`/a/*` after `/a/x*` and `/a/y*`) is not reported. A rule for CONNECT alone is reported too: it is never reached.
 *
 * Indexed, so that thousands of rules cost milliseconds: each rule looks up the earlier rules of its own glob and
 * those of each `prefix/**` above it, and tests only the other wildcard globs, against literal paths alone.
 */
export function unreachableRules(rules: readonly RuleShape[]): UnreachableRule[] {
  const sameGlob = new Map<string, number[]>();
  const anyBelow = new Map<string, number[]>();
  const otherWildcards: number[] = [];
  const compiled: Compiled[] = [];
  const found: UnreachableRule[] = [];
  rules.forEach((rule, index) => {
    const later: Compiled = { glob: compileGlob(rule.match.path), methods: rule.match.methods ? methodSet(rule.match.methods) : undefined };
    const { canonical } = later.glob;
    const covering = coveringRules(later, compiled, sameGlob, anyBelow, otherWildcards);
    const coveredBy = firstForEachMethod(later, covering, compiled);
    if (coveredBy) found.push({ index, pattern: rule.match.path, coveredBy });

    compiled.push(later);
    push(sameGlob, canonical, index);
    const prefix = anyBelowPrefix(canonical);
    if (prefix !== undefined) push(anyBelow, prefix, index);
    else if (canonical.includes('*')) otherWildcards.push(index);
  });
  return found;
}

/** The earlier rules whose glob matches every path `later`'s does, in rule order. */
function coveringRules(later: Compiled, earlier: readonly Compiled[], sameGlob: Map<string, number[]>, anyBelow: Map<string, number[]>, otherWildcards: readonly number[]): number[] {
  const { canonical } = later.glob;
  const out = [...(sameGlob.get(canonical) ?? [])];
  // Every path a glob matches starts with its text up to its first `*`, less at most the slash before a `**` that
  // matches no segment (`/a/b/**` matches `/a/b`), so a glob whose text is P or lies under `P/` matches only paths
  // P/** matches (dot segments and `//` are normalised away in both). The candidates for P: the text before each `/`
  // up to the first `*` (the first is '', for `/**`), and a literal glob's whole text.
  const firstStar = canonical.indexOf('*');
  const literalEnd = firstStar < 0 ? canonical.length : firstStar;
  for (let slash = canonical.indexOf('/'); slash >= 0 && slash < literalEnd; slash = canonical.indexOf('/', slash + 1)) {
    out.push(...(anyBelow.get(canonical.slice(0, slash)) ?? []));
  }
  if (firstStar < 0) {
    out.push(...(anyBelow.get(canonical) ?? []));
    // A literal path is matched by exactly one path, itself: any other wildcard glob that matches it covers it.
    for (const i of otherWildcards) if (earlier[i]!.glob.test(canonical)) out.push(i);
  }
  return [...new Set(out)].sort((a, b) => a - b);
}

/** For each method `later` is matched for, the first of `covering` matched for it too; undefined when one has none. */
function firstForEachMethod(later: Compiled, covering: readonly number[], compiled: readonly Compiled[]): number[] | undefined {
  const methods = later.methods ? [...later.methods].filter((m) => m !== 'CONNECT') : EVERY_METHOD;
  if (methods.length === 0) return [];
  if (covering.length === 0) return undefined;
  const coveredBy = new Set<number>();
  for (const method of methods) {
    const first = covering.find((i) => !compiled[i]!.methods || compiled[i]!.methods!.has(method));
    if (first === undefined) return undefined;
    coveredBy.add(first);
  }
  return [...coveredBy].sort((a, b) => a - b);
}

function push(map: Map<string, number[]>, key: string, index: number): void {
  const list = map.get(key);
  if (list) list.push(index);
  else map.set(key, [index]);
}

/** One line for the log and `validate`: which rule, and which earlier rules decide instead. */
export function describeUnreachable(u: UnreachableRule, rules: readonly RuleShape[], keyPath = 'inbound.rules'): string {
  const rule = `${keyPath}.${u.index} (${u.pattern})`;
  if (u.coveredBy.length === 0) return `${rule} is never used: it is for CONNECT alone, which the inbound listener answers 405 before the rules; remove it`;
  const named = u.coveredBy.map((i) => `${i} (${rules[i]!.match.path}${methodsText(rules[i]!.match.methods)})`);
  const which = named.length === 1 ? `rule ${named[0]} matches every request it would match and comes first` : `rules ${named.slice(0, -1).join(', ')} and ${named.at(-1)} match every request it would match and come first`;
  return `${rule} is never used: ${which} (the first matching rule decides); move it before ${named.length === 1 ? 'that rule' : 'them'}, or remove it`;
}

/** ` for GET, POST (and HEAD)`: the methods as configured, and the HEAD a GET brings with it (methodSet). */
function methodsText(methods: readonly string[] | undefined): string {
  if (!methods) return '';
  const upper = methods.map((m) => m.toUpperCase());
  return ` for ${upper.join(', ')}${upper.includes('GET') && !upper.includes('HEAD') ? ' (and HEAD)' : ''}`;
}
