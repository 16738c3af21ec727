import { createLocalJWKSet, type JWK } from 'jose';
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

/**
 * Keeps only the keys of a fetched JWKS that can verify a token we accept:
 * asymmetric (`oct` keys are dropped: an HMAC key in a JWKS is the first step
 * of an algorithm-confusion attack, CVE-2015-9235), `use` absent or `sig`,
 * `key_ops` absent or containing `verify`, `alg` absent or allowed, key type
 * and curve usable by an allowed algorithm, no private members. Throws
 * IdpHttpError when the document is not a JWKS or nothing usable is left.
 */
export function filterJwks(body: unknown, algorithms: readonly string[]): JWK[] {
  if (!isObject(body) || !Array.isArray(body.keys)) throw new IdpHttpError('jwks_invalid', 'JWKS document has no "keys" array');
  const shapes = algorithms.map((a) => KEY_SHAPE[a]).filter((s) => s !== undefined);
  const keys: JWK[] = [];
  for (const k of body.keys as unknown[]) {
    if (!isObject(k) || typeof k.kty !== 'string') continue;
    if (k.use !== undefined && k.use !== 'sig') continue;
    if (k.key_ops !== undefined && !(Array.isArray(k.key_ops) && k.key_ops.includes('verify'))) continue;
    if (k.alg !== undefined && !(typeof k.alg === 'string' && algorithms.includes(k.alg))) continue;
    if (k.kid !== undefined && typeof k.kid !== 'string') continue;
    if (PRIVATE_MEMBERS.some((m) => m in k)) continue;
    if (!shapes.some((s) => s.kty === k.kty && (s.crv === undefined || s.crv === k.crv))) continue;
    keys.push(k as JWK);
  }
  if (keys.length === 0) throw new IdpHttpError('jwks_no_usable_keys', 'JWKS has no key usable with the allowed algorithms');
  try {
    createLocalJWKSet({ keys });
  } catch (err) {
    throw new IdpHttpError('jwks_invalid', `JWKS rejected: ${(err as Error).message}`, undefined, undefined, { cause: err });
  }
  return keys;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
