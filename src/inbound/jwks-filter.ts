import { createLocalJWKSet, importJWK, type JWK } from 'jose';
import { IdpHttpError } from '../oidc/http.js';

/** Key types and curves each allowed algorithm can use (RFC 7518 §3, RFC 8037 §3.1). */
const KEY_SHAPE: Record<string, { kty: string; crv?: string }> = {
  RS256: { kty: 'RSA' }, RS384: { kty: 'RSA' }, RS512: { kty: 'RSA' },
  PS256: { kty: 'RSA' }, PS384: { kty: 'RSA' }, PS512: { kty: 'RSA' },
  ES256: { kty: 'EC', crv: 'P-256' }, ES384: { kty: 'EC', crv: 'P-384' }, ES512: { kty: 'EC', crv: 'P-521' },
  EdDSA: { kty: 'OKP', crv: 'Ed25519' }, Ed25519: { kty: 'OKP', crv: 'Ed25519' },
};

/** Private-key members (RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2): a JWKS publishing them is broken. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

/** RFC 7518 §3.3 and §3.5: RS* and PS* need a key of 2048 bits or larger (jose refuses a smaller one at verification). */
const MIN_RSA_BITS = 2048;

/**
 * At most this many entries of a JWKS are looked at. Identity providers publish a handful (a rotation keeps two or
 * three); an oversized set, broken or hostile, is cut here rather than imported at every refresh and listed in
 * every log line. The response itself is already limited to 1 MiB (oidc/http.ts), room for thousands of keys.
 */
export const MAX_JWKS_KEYS = 100;

/** A `kid` as a log line or an error shows it: the IdP chooses it, at any length. */
export const MAX_SHOWN_KID = 128;

/** How many unusable keys the "no usable key" error names, so that it stays one readable line. */
const MAX_NAMED_DROPPED = 5;

/** A signing key of the JWKS that cannot verify anything, and why (never key material). */
export interface DroppedKey {
  /** Capped to MAX_SHOWN_KID characters. */
  kid: string | null;
  reason: string;
}

/** The keys to verify with, the signing keys left out because they cannot be used, and how many entries past MAX_JWKS_KEYS were not looked at. */
export interface FilteredJwks {
  keys: JWK[];
  dropped: DroppedKey[];
  ignored: number;
}

/**
 * Keeps only the keys of a fetched JWKS that can verify a token we accept:
 * asymmetric (`oct` keys are dropped: an HMAC key in a JWKS is the first step
 * of an algorithm-confusion attack, CVE-2015-9235), `use` absent or `sig`,
 * `key_ops` absent or containing `verify`, `alg` absent or allowed, key type
 * and curve usable by an allowed algorithm, no private members, and the key
 * itself usable: each such key is imported once here, in the background
 * fetch, and one that does not import (malformed) or is an RSA key under 2048
 * bits is listed in `dropped`. Jose would refuse such a key only when a token
 * tries it, and as an error rather than "not this key", so a key without a
 * `kid` in front of the real one broke every token without a `kid`. Throws
 * IdpHttpError when the document is not a JWKS or nothing usable is left.
 */
export async function filterJwks(body: unknown, algorithms: readonly string[]): Promise<FilteredJwks> {
  if (!isObject(body) || !Array.isArray(body.keys)) throw new IdpHttpError('jwks_invalid', 'JWKS document has no "keys" array');
  const keys: JWK[] = [];
  const dropped: DroppedKey[] = [];
  const listed = body.keys as unknown[];
  for (const k of listed.slice(0, MAX_JWKS_KEYS)) {
    if (!isObject(k) || typeof k.kty !== 'string') continue;
    if (k.use !== undefined && k.use !== 'sig') continue;
    if (k.key_ops !== undefined && !(Array.isArray(k.key_ops) && k.key_ops.includes('verify'))) continue;
    if (k.alg !== undefined && !(typeof k.alg === 'string' && algorithms.includes(k.alg))) continue;
    if (k.kid !== undefined && typeof k.kid !== 'string') continue;
    if (PRIVATE_MEMBERS.some((m) => m in k)) continue;
    const alg = typeof k.alg === 'string' ? k.alg : algorithms.find((a) => fits(k, a));
    if (alg === undefined || !fits(k, alg)) continue;
    const unusable = await whyUnusable(k as JWK, alg);
    if (unusable) dropped.push({ kid: typeof k.kid === 'string' ? shownKid(k.kid) : null, reason: unusable });
    else keys.push(k as JWK);
  }
  const ignored = Math.max(0, listed.length - MAX_JWKS_KEYS);
  if (keys.length === 0) {
    const named = dropped.slice(0, MAX_NAMED_DROPPED).map((d) => `${d.kid === null ? 'a key without kid' : `kid "${d.kid}"`}: ${d.reason}`);
    if (dropped.length > MAX_NAMED_DROPPED) named.push(`${dropped.length - MAX_NAMED_DROPPED} more unusable`);
    if (ignored > 0) named.push(`${ignored} keys past the first ${MAX_JWKS_KEYS} not looked at`);
    const why = named.join('; ');
    throw new IdpHttpError('jwks_no_usable_keys', `JWKS has no key usable with the allowed algorithms${why ? ` (${why})` : ''}`);
  }
  try {
    createLocalJWKSet({ keys });
  } catch (err) {
    throw new IdpHttpError('jwks_invalid', `JWKS rejected: ${(err as Error).message}`, undefined, undefined, { cause: err });
  }
  return { keys, dropped, ignored };
}

/** A `kid` for a log line or an error: capped, since the IdP chooses its length. */
export function shownKid(kid: string): string {
  return kid.length > MAX_SHOWN_KID ? `${kid.slice(0, MAX_SHOWN_KID)}…` : kid;
}

function fits(k: Record<string, unknown>, alg: string): boolean {
  const shape = KEY_SHAPE[alg];
  return shape !== undefined && shape.kty === k.kty && (shape.crv === undefined || shape.crv === k.crv);
}

/** Undefined when the key imports for `alg` and is strong enough for it; else the reason, in our words. */
async function whyUnusable(jwk: JWK, alg: string): Promise<string | undefined> {
  let key: Awaited<ReturnType<typeof importJWK>>;
  try {
    key = await importJWK(jwk, alg);
  } catch (err) {
    // WebCrypto's and jose's messages name the problem ("Invalid keyData"), never the key's bytes; capped all the same.
    return `cannot be imported for ${alg}: ${String((err as Error)?.message ?? err).slice(0, 120)}`;
  }
  if (jwk.kty === 'RSA') {
    const bits = (key as { algorithm?: { modulusLength?: unknown } }).algorithm?.modulusLength;
    if (typeof bits !== 'number' || bits < MIN_RSA_BITS) return `RSA modulus of ${typeof bits === 'number' ? bits : 'unknown'} bits, under the ${MIN_RSA_BITS} that ${alg} requires`;
  }
  return undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
