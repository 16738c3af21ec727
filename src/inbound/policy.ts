import type { AllowEntry } from '../config/schema.js';

/** Verified claims, as jose returns them. */
export type Claims = Readonly<Record<string, unknown>>;

/** True when the verified claims satisfy at least one allow entry. */
export type Policy = (claims: Claims) => boolean;

type Scalar = string | number | boolean;

/**
 * Claims whose string value is a space-delimited list (RFC 9068 §2.2.3 and
 * RFC 8693 §4.2 for `scope`; `scp` is the same thing in Azure AD and Okta), so
 * `claims: { scope: read }` matches `"scope": "read write"`. A configured value
 * is read the same way: `scope: "read write"` asks for both scopes.
 */
export const SPACE_DELIMITED: ReadonlySet<string> = new Set(['scope', 'scp']);

/**
 * Compiles an `allow` list: any entry matching allows, and every key of an
 * entry must match. `sub`, `iss`, `azp` and `client_id` take a string or a
 * list (membership). `claims` compares top-level claims by type (the number 1
 * is not the string "1"): a scalar claim must equal the value (or one of the
 * listed values), an array claim must contain it (or one of them). A missing
 * claim never matches. Claim names are taken literally (no dotted paths),
 * because namespaced claim names such as `https://example.com/roles` contain dots.
 */
export function compilePolicy(entries: readonly AllowEntry[]): Policy {
  const compiled = entries.map(compileEntry);
  return (claims) => compiled.some((entryMatches) => entryMatches(claims));
}

function compileEntry(entry: AllowEntry): Policy {
  const checks: Policy[] = [];
  for (const key of ['sub', 'iss', 'azp', 'client_id'] as const) {
    const want = entry[key];
    if (want === undefined) continue;
    const set = new Set(typeof want === 'string' ? [want] : want);
    checks.push((claims) => {
      const v = claims[key];
      return typeof v === 'string' && set.has(v);
    });
  }
  for (const [name, want] of Object.entries(entry.claims ?? {})) {
    const expected: readonly Scalar[] = Array.isArray(want) ? want : [want as Scalar];
    if (SPACE_DELIMITED.has(name)) {
      const wanted = expected.map((v) => (typeof v === 'string' ? v.split(' ').filter((w) => w !== '') : [v]));
      checks.push((claims) => scopesMatch(claims[name], wanted));
    } else {
      checks.push((claims) => claimMatches(claims[name], expected));
    }
  }
  return (claims) => checks.every((check) => check(claims));
}

function claimMatches(actual: unknown, expected: readonly Scalar[]): boolean {
  if (actual === undefined || actual === null) return false;
  if (Array.isArray(actual)) return actual.some((a) => expected.includes(a as Scalar));
  return (typeof actual === 'string' || typeof actual === 'number' || typeof actual === 'boolean') && expected.includes(actual);
}

/**
 * A scope claim (a space-delimited string, or an array of scopes) against the values configured: it matches when
 * it grants every scope of one of them. The schema refuses a value with no scope in it, which would match anything.
 */
function scopesMatch(actual: unknown, wanted: readonly (readonly Scalar[])[]): boolean {
  if (actual === undefined || actual === null) return false;
  const granted: readonly unknown[] = typeof actual === 'string' ? actual.split(' ') : Array.isArray(actual) ? actual : [actual];
  return wanted.some((scopes) => scopes.every((scope) => granted.includes(scope)));
}
