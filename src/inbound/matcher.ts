import { ConfigError } from '../errors.js';
import type { RuleConfig } from '../config/schema.js';
import { BadPathError, normalizePath, ruleSpelling } from './path.js';

/** One rule, compiled once when the component is built. */
export interface CompiledRule<T = RuleConfig> {
  /** Position in `inbound.rules` (for logs and the verify command). */
  index: number;
  /** The glob as configured. */
  pattern: string;
  /** Upper-case methods; undefined = every method. */
  methods: ReadonlySet<string> | undefined;
  glob: PathGlob;
  rule: T;
}

/** First-match rule lookup on a normalised path. */
export interface Matcher<T = RuleConfig> {
  /** The first rule matching the method and the path (normalised, in its rule spelling: see ruleSpelling), if any. */
  match(method: string, path: string): CompiledRule<T> | undefined;
  /**
   * The earlier rules than `exact` (what match() gave) that a spelling of the path many apps treat as the same one
   * matches: in other letter case (Express by default and ASP.NET Core route without regard to case; path and
   * patterns are compared in lower case) or with the trailing slash added or taken away (Express without `strict`,
   * Spring MVC before 6). Empty for most paths, and always when `exact` is undefined.
   */
  shadows(method: string, path: string, exact: CompiledRule<T> | undefined): readonly CompiledRule<T>[];
  readonly size: number;
}

/**
 * Compiles `inbound.rules` into a first-match matcher. A bad glob throws a
 * ConfigError naming the rule's key path, at construction time.
 */
export function createMatcher<T extends { match: { path: string; methods?: readonly string[] | undefined } }>(
  rules: readonly T[],
  keyPath = 'inbound.rules',
): Matcher<T> {
  const compiled = rules.map((rule, index): CompiledRule<T> => {
    let glob: PathGlob;
    try {
      glob = compileGlob(rule.match.path);
    } catch (err) {
      throw new ConfigError([{ path: `${keyPath}.${index}.match.path`, message: (err as Error).message }]);
    }
    return {
      index,
      pattern: rule.match.path,
      methods: rule.match.methods ? methodSet(rule.match.methods) : undefined,
      glob,
      rule,
    };
  });
  // The same rules with their patterns in lower case, for shadows(); only a pattern with an upper-case letter needs
  // its own glob (lower-casing the rest changes nothing). Folded in canonical form, so a letter written as an escape
  // (`/%41dmin/**` is `/Admin/**`) is folded as the letter it stands for, and an escape's hex is left as it is.
  const folded = compiled.map((r) => (hasUpperCase(withoutEscapes(r.glob.canonical)) ? { ...r, glob: compileGlob(foldCase(r.glob.canonical)) } : r));
  const patternsHaveUpperCase = folded.some((r, i) => r !== compiled[i]);
  /** The first of `list[0 .. before)` matching the method and path. */
  const firstMatch = (list: readonly CompiledRule<T>[], method: string, path: string, before = list.length): CompiledRule<T> | undefined => {
    // Split once per request, and only if a rule with a wildcard inside the path is reached.
    let segments: readonly string[] | undefined;
    for (let i = 0; i < before; i++) {
      const r = list[i]!;
      if (r.methods && !r.methods.has(method)) continue;
      const glob = r.glob;
      if (glob.bySegment ? glob.test(path, (segments ??= path.split('/'))) : glob.test(path)) return r;
    }
    return undefined;
  };
  return {
    size: compiled.length,
    match: (method, path) => firstMatch(compiled, method, path),
    shadows(method, path, exact) {
      // Only the rules before the exact match can shadow it; most requests have none of them for their method.
      const before = exact?.index ?? 0;
      let candidates = false;
      for (let i = 0; i < before && !candidates; i++) candidates = !compiled[i]!.methods || compiled[i]!.methods!.has(method);
      if (!candidates) return NO_RULES;
      let found: CompiledRule<T>[] | undefined;
      const consider = (r: CompiledRule<T> | undefined) => {
        if (r && !found?.some((f) => f.index === r.index)) (found ??= []).push(compiled[r.index]!);
      };
      const slashed = otherSlash(path);
      if (slashed !== undefined) consider(firstMatch(compiled, method, slashed, before));
      if (patternsHaveUpperCase || hasUpperCase(path)) {
        consider(firstMatch(folded, method, foldCase(path), before));
        if (slashed !== undefined) consider(firstMatch(folded, method, foldCase(slashed), before));
      }
      return found ?? NO_RULES;
    },
  };
}

const NO_RULES: readonly never[] = [];

/** The path with its trailing slash taken away, or one added; undefined for `/`. */
function otherSlash(path: string): string | undefined {
  if (path === '/') return undefined;
  return path.endsWith('/') ? path.slice(0, -1) : `${path}/`;
}

/** A path in lower case but for its escapes, whose hex stays upper case as in every normalised path and rule (`/CAF%C3%A9` → `/caf%C3%A9`). */
function foldCase(path: string): string {
  const lower = path.toLowerCase();
  return lower.includes('%') ? lower.replace(/%[0-9a-f]{2}/g, (e) => e.toUpperCase()) : lower;
}

function withoutEscapes(canonical: string): string {
  return canonical.includes('%') ? canonical.replace(/%[0-9A-F]{2}/g, '') : canonical;
}

function hasUpperCase(text: string): boolean {
  return /[A-Z]/.test(text);
}

/**
 * A rule's methods, upper-case. GET brings HEAD with it: Express, Flask, Rails and Go's ServeMux answer a HEAD with
 * the GET handler (and Kubernetes RBAC reads HEAD as `get`), so a GET rule that left HEAD to a later, wider rule would
 * let a caller run that handler by asking HEAD.
 */
export function methodSet(methods: readonly string[]): ReadonlySet<string> {
  const set = new Set(methods.map((m) => m.toUpperCase()));
  if (set.has('GET')) set.add('HEAD');
  return set;
}

/** A compiled path glob. */
export interface PathGlob {
  /** Whether a normalised path matches; `segments` is that path split at `/`, when the caller has it already. */
  test(path: string, segments?: readonly string[]): boolean;
  /** Whether test() reads the path's segments (the matcher then splits a path once for all such rules). */
  readonly bySegment: boolean;
  /** The glob in the spelling request paths are matched in: two globs with the same canonical form match the same paths. */
  readonly canonical: string;
}

const SLASH = 0x2f;

/** A whole-segment `**`: any number of segments, including none. */
const ANY_SEGMENTS = null;
/** One segment: the literal pieces between the `*`s (a literal segment is one piece), and whether it may be empty. */
type SegmentGlob = { pieces: readonly string[]; nonEmpty: boolean };

/**
 * Compiles a path glob: `*` matches within one segment (a lone `*` needs at
 * least one character), a whole-segment `**` matches any number of segments
 * including none (`/a/**` matches `/a`, `/a/` and `/a/b/c`). Literal parts are
 * put in the same canonical form as request paths (see normalizePath), so
 * `/a%7Eb` and `/a~b` are the same rule. Dot segments are refused: a rule must
 * name a real path.
 *
 * Not a RegExp: rules are matched before the token is looked at, so the path
 * is any caller's to choose, and a backtracking regex for `*-*-*` costs the
 * cube of a segment's length (several `**`, of the segment count), so one long
 * path could hold the event loop for hours. Matching here is wildcard matching
 * that backtracks only to the last star, at both levels: at most (segments ×
 * glob parts) segment tests, each at most (segment length × its pieces).
 */
export function compileGlob(glob: string): PathGlob {
  const canonical = canonicalGlob(glob);
  // Most rules are a literal path, or a literal prefix and `/**`: a comparison per request, with nothing allocated.
  if (!canonical.includes('*')) return { bySegment: false, canonical, test: (path) => path === canonical };
  const prefix = anyBelowPrefix(canonical);
  if (prefix !== undefined) {
    return { bySegment: false, canonical, test: (path) => path === prefix || (path.startsWith(prefix) && path.charCodeAt(prefix.length) === SLASH) };
  }
  const parts = (canonical === '/' ? [''] : canonical.split('/').slice(1)).map((part): SegmentGlob | typeof ANY_SEGMENTS =>
    part === '**' ? ANY_SEGMENTS : { pieces: part.split(/\*+/), nonEmpty: part === '*' },
  );
  return { bySegment: true, canonical, test: (path, segments = path.split('/')) => matchSegments(parts, segments) };
}

/** P for a canonical glob `P/**` whose P has no wildcard (`/**` gives ''): the glob matches P and every path under it. Else undefined. */
export function anyBelowPrefix(canonical: string): string | undefined {
  if (!canonical.endsWith('/**')) return undefined;
  const prefix = canonical.slice(0, -3);
  return prefix.includes('*') ? undefined : prefix;
}

/**
 * A glob in the spelling request paths are matched in (see normalizePath and ruleSpelling), or an Error saying why no
 * request path could match it.
 */
function canonicalGlob(glob: string): string {
  if (!glob.startsWith('/')) throw new Error('must start with "/"');
  // A request's path never holds a raw "?": the query is split off before rules are matched, so a rule written with
  // one (`/reports?format=csv`) could never match, and the next, wider rule would decide instead.
  if (glob.includes('?')) throw new Error('must not contain "?": rules match the path only, never the query string (a literal "?" in a path segment is written %3F)');
  const segments = glob.split('/').slice(1);
  if (segments.map((s) => s.replace(/%2e/gi, '.')).some((s) => s === '.' || s === '..')) {
    throw new Error('must not contain "." or ".." segments');
  }
  try {
    // '*' is a legal path character (RFC 3986 sub-delim), so it survives normalisation unchanged.
    return ruleSpelling(normalizePath(glob), true);
  } catch (err) {
    if (err instanceof BadPathError) throw new Error(err.message.replace(/^path/, 'glob'));
    throw err;
  }
}

/** `segments` is a path split at `/` (so `segments[0]` is the empty string before the leading `/`). */
function matchSegments(parts: readonly (SegmentGlob | typeof ANY_SEGMENTS)[], segments: readonly string[]): boolean {
  let p = 0;
  let s = 1;
  // The last `**` seen and the segment it was tried from: on a mismatch it takes one more segment.
  let anyPart = -1;
  let anyFrom = 0;
  while (s < segments.length) {
    const part = p < parts.length ? parts[p]! : undefined;
    if (part === ANY_SEGMENTS) {
      anyPart = p++;
      anyFrom = s;
    } else if (part !== undefined && matchSegment(part, segments[s]!)) {
      p++;
      s++;
    } else if (anyPart >= 0) {
      p = anyPart + 1;
      s = ++anyFrom;
    } else {
      return false;
    }
  }
  while (p < parts.length && parts[p] === ANY_SEGMENTS) p++;
  return p === parts.length;
}

/** One segment against `a*b*c`: the first piece is a prefix, the last a suffix, the others found in order in between. */
function matchSegment(glob: SegmentGlob, segment: string): boolean {
  const { pieces } = glob;
  if (pieces.length === 1) return segment === pieces[0];
  if (glob.nonEmpty && segment.length === 0) return false;
  const first = pieces[0]!;
  const last = pieces[pieces.length - 1]!;
  if (segment.length < first.length + last.length || !segment.startsWith(first) || !segment.endsWith(last)) return false;
  // Leftmost occurrences are enough between a fixed prefix and suffix: a later one never leaves more room.
  let at = first.length;
  const end = segment.length - last.length;
  for (let i = 1; i < pieces.length - 1; i++) {
    const found = segment.indexOf(pieces[i]!, at);
    if (found < 0 || found + pieces[i]!.length > end) return false;
    at = found + pieces[i]!.length;
  }
  return true;
}
