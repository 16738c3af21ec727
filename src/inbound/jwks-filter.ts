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
 * The Ed25519 points of small order (RFC 8032 §5.1.3 encodings; the sign bit is masked off when comparing, and the
 * last two are non-canonical spellings of the first two), as libsodium refuses them. Such a public key has no private
 * key behind it: signatures of a few fixed forms verify under it for any message, so anyone could sign as the issuer.
 */
const SMALL_ORDER_ED25519 = [
  '0000000000000000000000000000000000000000000000000000000000000000', // order 4
  '0100000000000000000000000000000000000000000000000000000000000000', // the identity
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05', // order 8
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a', // order 8
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // order 2 (p - 1)
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // p, as 0
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // p + 1, as 1
].map((hex) => Buffer.from(hex, 'hex'));

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
  /** Its private key is published: whoever read the JWKS can sign with it. */
  compromised?: true;
}

/** A JWKS with nothing usable in it: the IdP vouches for no signing key. `dropped` says which keys were left out and why. */
export class NoUsableKeysError extends IdpHttpError {
  constructor(
    message: string,
    readonly dropped: readonly DroppedKey[],
  ) {
    super('jwks_no_usable_keys', message);
  }
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
 * fetch, and one that does not import (malformed), is an RSA key under 2048
 * bits or with an exponent anyone can sign for, or an Ed25519 point of small
 * order, is listed in `dropped`. So is a published private key, marked
 * `compromised`, with any public key of the set that is its other half. Jose would refuse such a key only when a token
 * tries it, and as an error rather than "not this key", so a key without a
 * `kid` in front of the real one broke every token without a `kid`. Throws
 * IdpHttpError when the document is not a JWKS or nothing usable is left.
 */
export async function filterJwks(body: unknown, algorithms: readonly string[]): Promise<FilteredJwks> {
  if (!isObject(body) || !Array.isArray(body.keys)) throw new IdpHttpError('jwks_invalid', 'JWKS document has no "keys" array');
  let keys: JWK[] = [];
  const dropped: DroppedKey[] = [];
  const listed = body.keys as unknown[];
  const kidOf = (k: Record<string, unknown>) => (typeof k.kid === 'string' ? shownKid(k.kid) : null);
  /** The public parts of every asymmetric key whose private parts the JWKS publishes. */
  const published = new Set<string>();
  for (const k of listed.slice(0, MAX_JWKS_KEYS)) {
    if (!isObject(k) || typeof k.kty !== 'string') continue;
    // Checked before use or alg: a published private key is compromised whatever it was meant for, and its public
    // half, listed beside it (or as the same entry), must not verify anything either.
    if (k.kty !== 'oct' && PRIVATE_MEMBERS.some((m) => k[m] !== undefined && k[m] !== null)) {
      published.add(publicPart(k));
      dropped.push({ kid: kidOf(k), reason: 'the JWKS publishes its private key: anyone who read it can sign with it', compromised: true });
      continue;
    }
    if (k.use !== undefined && k.use !== 'sig') continue;
    if (k.key_ops !== undefined && !(Array.isArray(k.key_ops) && k.key_ops.includes('verify'))) continue;
    if (k.alg !== undefined && !(typeof k.alg === 'string' && algorithms.includes(k.alg))) continue;
    if (k.kid !== undefined && typeof k.kid !== 'string') continue;
    const alg = typeof k.alg === 'string' ? k.alg : algorithms.find((a) => fits(k, a));
    if (alg === undefined || !fits(k, alg)) continue;
    const unusable = await whyUnusable(k as JWK, alg);
    if (unusable) dropped.push({ kid: kidOf(k), reason: unusable });
    else keys.push(k as JWK);
  }
  if (published.size > 0) {
    const twins = keys.filter((k) => published.has(publicPart(k as Record<string, unknown>)));
    for (const k of twins) dropped.push({ kid: kidOf(k as Record<string, unknown>), reason: 'the JWKS also publishes this key\'s private key: anyone who read it can sign with it', compromised: true });
    keys = keys.filter((k) => !twins.includes(k));
  }
  const ignored = Math.max(0, listed.length - MAX_JWKS_KEYS);
  if (keys.length === 0) {
    const named = dropped.slice(0, MAX_NAMED_DROPPED).map((d) => `${d.kid === null ? 'a key without kid' : `kid "${d.kid}"`}: ${d.reason}`);
    if (dropped.length > MAX_NAMED_DROPPED) named.push(`${dropped.length - MAX_NAMED_DROPPED} more unusable`);
    if (ignored > 0) named.push(`${ignored} keys past the first ${MAX_JWKS_KEYS} not looked at`);
    const why = named.join('; ');
    throw new NoUsableKeysError(`JWKS has no key usable with the allowed algorithms${why ? ` (${why})` : ''}`, dropped);
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
    // RFC 8017 §3.1: e is odd and at least 3. With e = 1 a "signature" is its own padded message, which anyone can
    // write; an even e is no RSA key at all.
    const e = Buffer.from(String(jwk.e), 'base64url');
    const odd = e.length > 0 && (e[e.length - 1]! & 1) === 1;
    if (!odd || e.every((byte, i) => (i === e.length - 1 ? byte < 3 : byte === 0))) return 'RSA public exponent is not an odd number of 3 or more: anyone could sign for this key';
  }
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') {
    const x = Buffer.from(String(jwk.x), 'base64url');
    if (x.length === 32 && SMALL_ORDER_ED25519.some((point) => point.every((byte, i) => byte === (i === 31 ? x[i]! & 0x7f : x[i])))) {
      return 'Ed25519 public key is a point of small order, with no private key behind it: anyone could sign for it';
    }
  }
  return undefined;
}

/** The members that make up an asymmetric key's public half, so a published private JWK finds its public twin. */
function publicPart(k: Record<string, unknown>): string {
  return JSON.stringify([k.kty, k.crv, k.n, k.e, k.x, k.y]);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
