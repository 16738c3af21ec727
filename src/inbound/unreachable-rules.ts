import { METHODS } from 'node:http';
import { canonicalGlob, compileGlob, methodSet, type PathGlob } from './matcher.js';

/** A rule no request can reach, and the earlier rules that take every request it would match. */
export interface UnreachableRule {
  /** Position in the rule list. */
  index: number;
  /** Its glob, as configured. */
  pattern: string;
  /** The earlier rules that decide instead, in rule order. */
  coveredBy: readonly number[];
}

interface RuleShape {
  match: { path: string; methods?: readonly string[] | undefined };
}

/**
 * Every method a rule without `methods` is matched for: those Node's HTTP parser lets through, except CONNECT, which
 * the inbound listener answers 405 before the rules.
 */
const EVERY_METHOD: readonly string[] = METHODS.filter((m) => m !== 'CONNECT');

/**
 * The rules that can never decide a request. Rules are first-match, so an `/api/admin/**` rule placed after
 * `/api/**` (for the same methods or more) is never consulted: the policy written in it is not applied, and the
 * earlier, wider rule decides instead. That is almost always an ordering mistake in a security policy, so the sidecar
 * says so when it loads the rules, and `validate` prints it.
 *
 * A rule is reported when, for each method it is matched for, some earlier rule for that method matches every path
 * it matches. Only coverage that can be shown from the globs' text is counted: the same glob, a literal path an
 * earlier glob matches, or a glob under an earlier literal `prefix/**`. So a reported rule is always unreachable
 * (test/unit/unreachable-rules.test.ts checks that on random rules and paths), while a rule that only a combination
 * of patterns hides (`/a/*` after `/a/x*` and `/a/y*`…) is not reported.
 */
export function unreachableRules(rules: readonly RuleShape[]): UnreachableRule[] {
  const compiled = rules.map((rule) => {
    const canonical = canonicalGlob(rule.match.path);
    return { canonical, glob: compileGlob(rule.match.path), prefix: literalPrefixOfAnyBelow(canonical), methods: rule.match.methods ? methodSet(rule.match.methods) : undefined };
  });
  const found: UnreachableRule[] = [];
  compiled.forEach((later, index) => {
    // The paths first (each pair once), then the methods among the few rules that cover them.
    const covering: number[] = [];
    for (let i = 0; i < index; i++) if (covers(compiled[i]!, later)) covering.push(i);
    if (covering.length === 0) return;
    const coveredBy = new Set<number>();
    for (const method of later.methods ?? EVERY_METHOD) {
      const earlier = covering.find((i) => !compiled[i]!.methods || compiled[i]!.methods!.has(method));
      if (earlier === undefined) return;
      coveredBy.add(earlier);
    }
    found.push({ index, pattern: rules[index]!.match.path, coveredBy: [...coveredBy].sort((a, b) => a - b) });
  });
  return found;
}

interface Compiled {
  canonical: string;
  glob: PathGlob;
  /** For `P/**` with a literal `P` (`/**` gives ''), P; otherwise undefined. */
  prefix: string | undefined;
}

/** Whether every path `later` matches is matched by `earlier` too (as far as the globs' text shows it). */
function covers(earlier: Compiled, later: Compiled): boolean {
  if (earlier.canonical === later.canonical) return true;
  // A literal path is matched by exactly one path: itself.
  if (!later.canonical.includes('*')) return earlier.glob.test(later.canonical);
  // Every path a glob matches starts with its text up to its first `*`, less at most the slash before a `**` that
  // matches no segment (`/a/b/**` matches `/a/b`), so a glob whose text lies under `P/` matches only paths under P.
  const p = earlier.prefix;
  return p !== undefined && (later.canonical === p || later.canonical.startsWith(`${p}/`));
}

/** P for a canonical glob `P/**` whose P has no wildcard, else undefined. */
function literalPrefixOfAnyBelow(canonical: string): string | undefined {
  if (!canonical.endsWith('/**')) return undefined;
  const prefix = canonical.slice(0, -3);
  return prefix.includes('*') ? undefined : prefix;
}

/** One line for the log and `validate`: which rule, and which earlier rules decide instead. */
export function describeUnreachable(u: UnreachableRule, rules: readonly RuleShape[], keyPath = 'inbound.rules'): string {
  const named = u.coveredBy.map((i) => `${i} (${rules[i]!.match.path}${rules[i]!.match.methods ? ` for ${rules[i]!.match.methods!.join(', ')}` : ''})`);
  const which = named.length === 1 ? `rule ${named[0]} matches every request it would match and comes first` : `rules ${named.slice(0, -1).join(', ')} and ${named.at(-1)} match every request it would match and come first`;
  return `${keyPath}.${u.index} (${u.pattern}) is never used: ${which} (the first matching rule decides); move it before ${named.length === 1 ? 'that rule' : 'them'}, or remove it`;
}
