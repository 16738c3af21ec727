import { ConfigError } from '../errors.js';
import type { RuleConfig } from '../config/schema.js';
import { BadPathError, normalizePath } from './path.js';

/** One rule, compiled once when the component is built. */
export interface CompiledRule<T = RuleConfig> {
  /** Position in `inbound.rules` (for logs and the verify command). */
  index: number;
  /** The glob as configured. */
  pattern: string;
  /** Upper-case methods; undefined = every method. */
  methods: ReadonlySet<string> | undefined;
  regex: RegExp;
  rule: T;
}

/** First-match rule lookup on a normalised path. */
export interface Matcher<T = RuleConfig> {
  /** The first rule matching the method and the (already normalised) path, if any. */
  match(method: string, path: string): CompiledRule<T> | undefined;
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
    let regex: RegExp;
    try {
      regex = compileGlob(rule.match.path);
    } catch (err) {
      throw new ConfigError([{ path: `${keyPath}.${index}.match.path`, message: (err as Error).message }]);
    }
    return {
      index,
      pattern: rule.match.path,
      methods: rule.match.methods ? new Set(rule.match.methods.map((m) => m.toUpperCase())) : undefined,
      regex,
      rule,
    };
  });
  return {
    size: compiled.length,
    match(method, path) {
      for (const r of compiled) {
        if (r.methods && !r.methods.has(method)) continue;
        if (r.regex.test(path)) return r;
      }
      return undefined;
    },
  };
}

/**
 * A path glob as a RegExp: `*` matches within one segment (a lone `*` needs at
 * least one character), a whole-segment `**` matches any number of segments
 * including none (`/a/**` matches `/a`, `/a/` and `/a/b/c`). Literal parts are
 * put in the same canonical form as request paths (see normalizePath), so
 * `/a%7Eb` and `/a~b` are the same rule. Dot segments are refused: a rule must
 * name a real path.
 */
export function compileGlob(glob: string): RegExp {
  if (!glob.startsWith('/')) throw new Error('must start with "/"');
  const segments = glob.split('/').slice(1);
  if (segments.map((s) => s.replace(/%2e/gi, '.')).some((s) => s === '.' || s === '..')) {
    throw new Error('must not contain "." or ".." segments');
  }
  let canonical: string;
  try {
    // '*' is a legal path character (RFC 3986 sub-delim), so it survives normalisation unchanged.
    canonical = normalizePath(glob);
  } catch (err) {
    if (err instanceof BadPathError) throw new Error(err.message.replace(/^path/, 'glob'));
    throw err;
  }
  const parts = canonical === '/' ? [''] : canonical.split('/').slice(1);
  let source = '^';
  for (const part of parts) {
    if (part === '**') {
      source += '(?:/.*)?';
    } else if (part === '*') {
      source += '/[^/]+';
    } else {
      source += `/${part.split(/\*+/).map(escapeRegExp).join('[^/]*')}`;
    }
  }
  return new RegExp(`${source}$`);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
