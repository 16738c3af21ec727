import { jwtVerify, UnsecuredJWT, type JWTVerifyGetKey, type JWTVerifyOptions, type KeyObject, type CryptoKey } from 'jose';
import type { Clock } from '../clock.js';
import type { InboundConfig, IssuerConfig } from '../config/schema.js';
import { KeysUnavailableError, TokenRejectedError, withoutStackTraces } from '../errors.js';
import type { ExtractedToken } from './extractor.js';
import type { Identity } from './identity.js';
import { fromJoseError } from './jose-errors.js';
import type { IssuerKeys, KeyStore } from './key-store.js';
import type { Claims } from './policy.js';
import type { CacheEntry, VerifyCache } from './verify-cache.js';
import { isoTimestamp } from '../time-text.js';

/** Verifies one token against the issuer it names. */
export interface Authenticator {
  /** The verified identity; throws TokenRejectedError (401) or KeysUnavailableError (503). */
  authenticate(token: ExtractedToken): Promise<Identity>;
  /**
   * The identity if this token was verified before and its cache entry still holds (same keys, times
   * re-checked), else undefined; synchronous, so a repeat caller costs no promise. Throws like authenticate.
   */
  cached(token: ExtractedToken): Identity | undefined;
  /** Full verification without looking in the cache first (the caller just did, with cached()); caches the result. */
  verify(token: ExtractedToken): Promise<Identity>;
}

export interface AuthenticatorDeps {
  keyStore: KeyStore;
  cache: VerifyCache<Identity>;
  clock: Clock;
  buildIdentity: (claims: Claims, issuer: string) => Identity;
}

/** Header parameters that point at a key chosen by the sender: never followed (RFC 8725 §3.10, CVE-2018-0114). */
const KEY_BEARING_HEADERS = ['jwk', 'jku', 'x5u', 'x5c'] as const;

/** When several keys match a token without `kid`, at most this many are tried (bounds the work per token). */
const MAX_CANDIDATE_KEYS = 8;

/** Levels of objects and arrays a verified payload may nest, the payload object itself being the first. */
export const MAX_CLAIMS_DEPTH = 64;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The verifier: one token, one issuer (Envoy's authenticator). The issuer is
 * picked by exact match of the UNVERIFIED `iss` before anything else happens,
 * so an unknown issuer costs no network call; the header is checked before
 * any key is looked up; the claims are checked before the signature (as
 * Envoy does, so a token refused for its claims costs no key lookup); then
 * jose verifies signature and claims with the algorithms pinned to the
 * issuer's allowlist (RFC 8725 §3.1) and `exp` required (RFC 9068 §2.2).
 * Verified results are cached; a cache hit re-checks the time claims and the
 * issuer's key-set version.
 */
export function createAuthenticator(config: InboundConfig, deps: AuthenticatorDeps): Authenticator {
  const { keyStore, cache, clock, buildIdentity } = deps;
  const skew = config.clockSkewSeconds;
  const defaultAudience = listOf(config.audience);
  const required = ['exp', ...(config.requiredClaims ?? [])];
  const requiredByUs = config.requiredClaims ?? [];
  const issuers = new Map<string, IssuerConfig>(config.issuers.map((i) => [i.issuer, i]));
  const algorithms = new Map(config.issuers.map((i) => [i.issuer, new Set<string>(i.algorithms)]));

  const options = (issuer: IssuerConfig): JWTVerifyOptions => ({
    algorithms: [...issuer.algorithms],
    issuer: issuer.issuer,
    audience: issuer.audience !== undefined ? listOf(issuer.audience) : defaultAudience,
    clockTolerance: skew,
    requiredClaims: required,
    currentDate: new Date(clock.now()),
    ...(config.typ !== undefined ? { typ: config.typ } : {}),
  });

  const verifyWith = async (token: string, keySet: JWTVerifyGetKey, opts: JWTVerifyOptions): Promise<Claims> => {
    try {
      return (await jwtVerify(token, keySet, opts)).payload;
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
      // No `kid` and several candidate keys: try each, a bounded number (jose leaves this loop to the caller).
      let tried = 0;
      for await (const key of err as AsyncIterable<CryptoKey | KeyObject>) {
        if (++tried > MAX_CANDIDATE_KEYS) break;
        try {
          return (await jwtVerify(token, key, opts)).payload;
        } catch (inner) {
          if ((inner as { code?: string }).code !== 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') throw inner;
        }
      }
      throw new TokenRejectedError('bad_signature', 'signature does not verify with any key of the issuer');
    }
  };

  const verify = async (token: string, issuer: IssuerConfig, keys: IssuerKeys, opts: JWTVerifyOptions, hasKid: boolean): Promise<{ claims: Claims; version: number }> => {
    let version = keys.version;
    let keySet = keys.keySet();
    let failure: TokenRejectedError;
    let unknownKid: boolean;
    try {
      return { claims: await verifyWith(token, keySet, opts), version };
    } catch (err) {
      unknownKid = (err as { code?: string }).code === 'ERR_JWKS_NO_MATCHING_KEY';
      failure = fromJoseError(err);
    }
    // A token with a kid whose signature fails is refused as it is: its key is known, and a forged signature must cost
    // no network call. One without a kid that no candidate key verifies may be signed by a key we do not have yet.
    const kidlessBadSignature = !hasKid && failure.code === 'bad_signature';
    if (!unknownKid && !kidlessBadSignature) throw failure;
    // Unknown kid, or no kid and no key of the right type verifies it: maybe the issuer rotated. Refetch (rate-limited
    // per issuer, the same limit for both), then try once more if the keys changed.
    const reachable = await keys.refetchForUnknownKey();
    if (keys.version === version) {
      // The issuer may have rotated to a key we cannot fetch: that is "keys unobtainable", not a bad token (SPEC: 503).
      if (!reachable) {
        const what = unknownKid ? 'matches the token' : 'verifies the token (it has no kid)';
        throw new KeysUnavailableError(issuer.issuer, `no key of issuer ${issuer.issuer} ${what}, and its JWKS cannot be fetched to look for it`);
      }
      throw unknownKid ? new TokenRejectedError('unknown_key', 'no key of the issuer matches the token (kid)') : failure;
    }
    version = keys.version;
    keySet = keys.keySet();
    try {
      // Fresh options: the refetch took time, and currentDate is part of them.
      return { claims: await verifyWith(token, keySet, options(issuer)), version };
    } catch (err) {
      throw fromJoseError(err);
    }
  };

  /** Our checks on top of jose's: finite times, a future iat, the lifetime cap. */
  const checkClaims = (claims: Claims): void => {
    const now = clock.now() / 1000;
    for (const c of ['exp', 'nbf', 'iat'] as const) {
      if (claims[c] !== undefined && !Number.isFinite(claims[c])) throw new TokenRejectedError('malformed_token', `"${c}" is not a finite number`);
    }
    // jose counts a claim set to null as present; a token must carry a required claim with a value.
    for (const c of requiredByUs) if (claims[c] === null) throw new TokenRejectedError('missing_claim', `required "${c}" claim is null`);
    checkTimes(claims, now, skew);
    checkLifetime(claims, now, config.maxTokenLifetimeSeconds);
  };

  const isCurrent = (e: CacheEntry<Identity>) => keyStore.get(e.value.issuer)?.version === e.keyVersion;
  const cached = ({ token }: ExtractedToken): Identity | undefined => {
    const hit = cache.get(token, isCurrent);
    if (!hit) return undefined;
    const keys = keyStore.get(hit.value.issuer)!;
    keys.keySet(); // throws KeysUnavailableError once the keys are too stale, cached or not
    checkTimes(hit.value.claims, clock.now() / 1000, skew);
    return hit.value;
  };

  const verifyUncached = async ({ token, dot1, dot2 }: ExtractedToken): Promise<Identity> => {
    const header = decodeSegment(token.slice(0, dot1), 'header');
    const alg = header.alg;
    if (typeof alg !== 'string' || alg === '') throw new TokenRejectedError('malformed_token', 'token header has no "alg"');
    // RFC 8725 §3.1/§3.2: no unsigned tokens, no shared-secret algorithms with public keys (CVE-2015-9235, CVE-2022-23540).
    if (alg.toLowerCase() === 'none' || /^HS/i.test(alg)) throw new TokenRejectedError('unsupported_alg', `algorithm ${alg} is never accepted`);
    for (const h of KEY_BEARING_HEADERS) {
      if (h in header) throw new TokenRejectedError('malformed_token', `token header carries "${h}"; keys are only taken from the issuer's JWKS`);
    }
    // RFC 7515 §4.1.11: a recipient must reject extensions it does not understand, and we understand none.
    if (header.crit !== undefined) throw new TokenRejectedError('malformed_token', 'token header lists critical extensions (crit) that are not supported');
    if (header.kid !== undefined && typeof header.kid !== 'string') throw new TokenRejectedError('malformed_token', 'token header "kid" is not a string');

    const payload = decodeSegment(token.slice(dot1 + 1, dot2), 'payload');
    const iss = payload.iss;
    if (iss === undefined) throw new TokenRejectedError('missing_claim', 'token has no "iss" claim');
    const issuer = typeof iss === 'string' ? issuers.get(iss) : undefined;
    const keys = typeof iss === 'string' ? keyStore.get(iss) : undefined;
    if (!issuer || !keys) throw new TokenRejectedError('unknown_issuer', 'token issuer is not trusted');
    if (!algorithms.get(issuer.issuer)!.has(alg)) {
      throw new TokenRejectedError('unsupported_alg', `algorithm ${alg} is not allowed for this issuer`);
    }

    // Claims first, signature second (as Envoy's jwt_authn does): a token refused for its claims would be refused
    // after the signature check too, so a client retrying with an expired token, or calling the wrong audience,
    // costs no signature check, key lookup or JWKS refetch. Only ever refuses; what passes is verified in full below.
    const opts = options(issuer);
    let unverified: Claims;
    try {
      unverified = claimsBeforeSignature(header, token.slice(dot1 + 1, dot2), opts);
    } catch (err) {
      throw withTimes(err, payload, clock.now() / 1000, skew);
    }
    checkClaims(unverified);

    const { claims, version } = await verify(token, issuer, keys, opts, header.kid !== undefined);
    checkClaims(claims);
    // Verified claims go on as JSON (x-peer-claims, claim headers, `verify` output, the policy_denied line).
    // JSON.stringify overflows the stack a few thousand levels down, which a 13 KB token reaches, and apps'
    // parsers give up far sooner (Ruby's JSON at 100 levels, serde_json at 128): even a trusted issuer's token
    // nested that deep is refused, rather than answered 500 or handed to the app in a form it cannot read.
    // Checked after the signature, so a forged token still gets the reason its forgery earns.
    if (nestsDeeperThan(claims, MAX_CLAIMS_DEPTH)) throw new TokenRejectedError('malformed_token', `token claims nest deeper than ${MAX_CLAIMS_DEPTH} levels`);

    const identity = buildIdentity(claims, issuer.issuer);
    cache.set(token, { value: identity, expiresAt: ((claims.exp as number) + skew) * 1000, keyVersion: version });
    return identity;
  };

  return {
    cached,
    verify: verifyUncached,
    async authenticate(extracted) {
      return cached(extracted) ?? verifyUncached(extracted);
    },
  };
}

/**
 * jose's own claim validation (typ, required claims, aud, nbf, exp: the same code and order jwtVerify runs after
 * the signature) applied to a token's payload before its signature is checked: UnsecuredJWT.decode runs it on a
 * stand-in `alg: none` token that carries the original `typ` and payload segment. The claims it returns are
 * unverified and only decide refusals.
 */
function claimsBeforeSignature(header: Record<string, unknown>, payloadSegment: string, opts: JWTVerifyOptions): Claims {
  try {
    // Only a string `typ` can ever match (jose refuses any other when typ is configured, and ignores typ when it is
    // not), so nothing else is copied: JSON.stringify overflows the stack on deeply nested values JSON.parse took.
    const standIn = Buffer.from(JSON.stringify(typeof header.typ === 'string' ? { alg: 'none', typ: header.typ } : { alg: 'none' })).toString('base64url');
    // jose's refusal (JWTExpired, JWTClaimValidationFailed) becomes a TokenRejectedError at once, so its stack is
    // never read: capturing it was a sixth of the CPU of refusing an expired token. (Anything else thrown here is
    // refused as malformed_token by fromJoseError, whose line carries no stack either.) Synchronous, so nothing
    // else runs with the limit at 0.
    return withoutStackTraces(() => UnsecuredJWT.decode(`${standIn}.${payloadSegment}.`, opts).payload);
  } catch (err) {
    throw fromJoseError(err);
  }
}

/** exp, nbf and iat against now (seconds) with the allowed skew; the same rules as jose plus a future iat. */
export function checkTimes(claims: Claims, now: number, skew: number): void {
  const { exp, nbf, iat } = claims as { exp?: number; nbf?: number; iat?: number };
  // The details give the times and the skew, so a clock that is off (here or at the issuer) can be told from a stale token.
  const allowed = `${skew} s of clock skew allowed`;
  if (typeof exp === 'number' && exp <= now - skew) throw new TokenRejectedError('expired', `token expired at ${isoTime(exp)}, ${Math.round(now - exp)} s ago (${allowed})`);
  if (typeof nbf === 'number' && nbf > now + skew) throw new TokenRejectedError('not_yet_valid', `token is not valid before ${isoTime(nbf)}, ${Math.round(nbf - now)} s from now (nbf; ${allowed})`);
  if (typeof iat === 'number' && iat > now + skew) throw new TokenRejectedError('issued_in_future', `token is issued at ${isoTime(iat)}, ${Math.round(iat - now)} s in the future (iat; ${allowed})`);
}

/**
 * jose's refusal of a time claim says only `"exp" claim timestamp check failed`: the same refusal with checkTimes'
 * detail (the time, how far off, the skew), which names the same reason under the same rules. Anything else as is.
 */
function withTimes(err: unknown, payload: Claims, now: number, skew: number): unknown {
  if (!(err instanceof TokenRejectedError) || !['expired', 'not_yet_valid', 'issued_in_future'].includes(err.code)) return err;
  try {
    checkTimes(payload, now, skew);
  } catch (detailed) {
    if (detailed instanceof TokenRejectedError && detailed.code === err.code) return detailed;
  }
  return err;
}

/** A NumericDate (seconds) as an ISO time, or the number itself when no Date can hold it. */
function isoTime(seconds: number): string {
  return isoTimestamp(seconds * 1000)?.replace('.000Z', 'Z') ?? String(seconds);
}

/** exp minus iat (else nbf, else now) must not exceed `max` seconds. */
export function checkLifetime(claims: Claims, now: number, max: number | undefined): void {
  if (max === undefined) return;
  const { exp, nbf, iat } = claims as { exp: number; nbf?: number; iat?: number };
  const from = typeof iat === 'number' ? iat : typeof nbf === 'number' ? nbf : now;
  if (exp - from > max) throw new TokenRejectedError('lifetime_too_long', `token lifetime ${Math.round(exp - from)} s exceeds ${max} s`);
}

/** Whether a parsed JSON value nests objects and arrays more than `max` levels deep; iterative, since it may nest thousands. */
function nestsDeeperThan(value: unknown, max: number): boolean {
  const stack: Array<{ v: object; depth: number }> = typeof value === 'object' && value !== null ? [{ v: value, depth: 1 }] : [];
  for (let top = stack.pop(); top; top = stack.pop()) {
    if (top.depth > max) return true;
    for (const child of Array.isArray(top.v) ? top.v : Object.values(top.v)) {
      if (typeof child === 'object' && child !== null) stack.push({ v: child as object, depth: top.depth + 1 });
    }
  }
  return false;
}

function decodeSegment(segment: string, what: 'header' | 'payload'): Record<string, unknown> {
  let text: string;
  let value: unknown;
  try {
    text = utf8.decode(Buffer.from(segment, 'base64url'));
    value = JSON.parse(text);
  } catch {
    throw new TokenRejectedError('malformed_token', `token ${what} is not base64url JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TokenRejectedError('malformed_token', `token ${what} is not a JSON object`);
  }
  // The bytes are UTF-8 (decoded fatally above), so only a \u escape can make a lone surrogate.
  if (text.includes('\\u') && holdsLoneSurrogate(value)) {
    throw new TokenRejectedError('malformed_token', `token ${what} holds text that is not Unicode (an unpaired surrogate escape such as \\ud800)`);
  }
  // Only a run of 16 digits or an exponent can write an integer past 2^53.
  if (what === 'payload' && /\d{16}|\d[eE]/.test(text) && holdsInexactInteger(value)) {
    throw new TokenRejectedError('malformed_token', `token ${what} holds an integer beyond ±${Number.MAX_SAFE_INTEGER}, which no JSON number the sidecar forwards can keep exactly`);
  }
  return value as Record<string, unknown>;
}

/**
 * Whether a parsed JSON value holds an integer beyond Number.MAX_SAFE_INTEGER. JSON.parse rounds such a number
 * (9007199254740993 becomes 9007199254740992), and the claims reach the app re-encoded (x-peer-claims, claim headers):
 * two callers whose numeric ids differ in the last digit would reach it as one. An app that parses the payload itself
 * (Python's json, Go's json.Number) reads the digits exactly, so the sidecar would judge and forward another value
 * than the one signed. Refused, as a lone surrogate is, rather than forwarded rounded.
 */
function holdsInexactInteger(value: unknown): boolean {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'number') {
      if (Number.isInteger(v) && !Number.isSafeInteger(v)) return true;
    } else if (Array.isArray(v)) {
      for (const child of v) stack.push(child);
    } else if (typeof v === 'object' && v !== null) {
      for (const child of Object.values(v)) stack.push(child);
    }
  }
  return false;
}

/** A lone UTF-16 surrogate: with the `u` flag a regex reads a surrogate pair as one code point, so only lone ones match. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Whether a parsed JSON value holds a string (or a key) with a lone surrogate (RFC 8259 §8.2: such text has no UTF-8
 * form). An identity header's value is a claim's UTF-8 bytes, in which every lone surrogate reads as U+FFFD: "alice\ud800"
 * and "alice\udfff" would reach the app as one `x-peer-sub`, and a rule's comparison would not see what the app sees.
 */
function holdsLoneSurrogate(value: unknown): boolean {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'string') {
      if (LONE_SURROGATE.test(v)) return true;
    } else if (Array.isArray(v)) {
      for (const child of v) stack.push(child);
    } else if (typeof v === 'object' && v !== null) {
      for (const [k, child] of Object.entries(v)) stack.push(k, child);
    }
  }
  return false;
}

function listOf(v: string | readonly string[]): string[] {
  return typeof v === 'string' ? [v] : [...v];
}
