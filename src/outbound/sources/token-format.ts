import { decodeJwt } from 'jose';
import { TokenUnavailableError } from '../../errors.js';
import type { IssuedToken } from './types.js';
import { isoTimeOrNumber } from '../../time-text.js';

/**
 * RFC 6750 §2.1 b64token: the only characters a bearer token may carry. The
 * token goes into a request header, so anything else (spaces, CR/LF, control
 * bytes) is refused rather than risk header injection on the next hop.
 */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/**
 * For a token refused for what the IdP makes of every token of this client (too large, characters a header cannot
 * carry, no usable expiry, another audience): each retry would mint one more just like it, so the cache waits its
 * longest before asking again. A token that is missing or already expired may be a passing fault (an IdP's clock
 * stepped), and is retried at the usual pace.
 */
export const LASTING = { lasting: true } as const;

/** Tokens larger than this are refused (a peer's default header limit is 16 KiB). */
export const MAX_TOKEN_BYTES = 12 * 1024;

/** Throws a TokenUnavailableError unless `value` can be sent as a bearer token. `what` names where it came from. */
export function assertBearerToken(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) throw new TokenUnavailableError(`${what}: no token`);
  if (value.length > MAX_TOKEN_BYTES) throw new TokenUnavailableError(`${what}: token larger than ${MAX_TOKEN_BYTES} bytes`, undefined, LASTING);
  if (!B64TOKEN.test(value)) throw new TokenUnavailableError(`${what}: not a valid bearer token (RFC 6750 §2.1 characters only)`, undefined, LASTING);
}

/**
 * A token must still be good for this long when it arrives. Renewal runs at half the lifetime or later, so a token
 * that lives a millisecond (`expires_in: 0.001`, or a JWT whose issuer's clock is behind by nearly its lifetime) would
 * be renewed in a loop as fast as the token endpoint answers; refused, it goes through the cache's backoff instead.
 */
export const MIN_TOKEN_LIFETIME_MS = 1000;

/** The latest time a Date can hold (ECMA-262 §21.4.1.1); an expiry past it cannot be logged, compared or renewed. */
const MAX_TIME_MS = 8.64e15;

/** The JWT's payload if `token` is a JWS compact JWT, else undefined. Decoding only: the issuer vouches, the peer verifies. */
export function jwtClaims(token: string): Record<string, unknown> | undefined {
  if (token.split('.').length !== 3) return undefined;
  try {
    return decodeJwt(token) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/**
 * Throws unless a JWT that was asked for `audience` by name carries it in `aud` (RFC 7519 §4.1.3: a string or a
 * list). The token goes to the service of that audience; one issued for another audience is accepted by that other
 * service, so a peer holding it could replay it there (RFC 8707 §2, RFC 8725 §3.9): an IdP that ignored the request's
 * audience must not have its token sent on. An opaque token, or a JWT without `aud`, cannot be checked here and is
 * left to the peer. `hint` ends the message (what to change).
 */
export function assertIssuedFor(issued: IssuedToken, audience: string, what: string, hint = ''): IssuedToken {
  const aud = jwtClaims(issued.token)?.aud;
  if (aud === undefined) return issued;
  const list: unknown[] = Array.isArray(aud) ? aud : [aud];
  if (list.includes(audience)) return issued;
  const shown = list.slice(0, 3).map((a) => JSON.stringify(String(a).slice(0, 128))).join(', ') + (list.length > 3 ? ', …' : '');
  throw new TokenUnavailableError(`${what}: the token is for aud ${shown || '[]'}, not ${JSON.stringify(audience)} as asked${hint}`, undefined, LASTING);
}

/**
 * Expiry of a token: the JWT's `exp` or `expires_in` (seconds, RFC 6749
 * §5.1) counted from `requestedAtMs` (when the request was sent, default `nowMs`), the earlier of the two when it has
 * both. A token with neither is an error: without an expiry the cache could neither renew nor stop using it.
 */
export function toIssuedToken(token: string, expiresIn: unknown, nowMs: number, what: string, requestedAtMs = nowMs): IssuedToken {
  const claims = jwtClaims(token);
  const jti = typeof claims?.jti === 'string' ? claims.jti.slice(0, 128) : undefined;
  const issuer = typeof claims?.iss === 'string' ? claims.iss.slice(0, 256) : undefined;
  const fromExp = typeof claims?.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp * 1000 : undefined;
  // The lifetime runs from when the IdP issued the token, which is no earlier than the request was sent: counted from
  // the answer's arrival, a slow answer would stretch it, and the token would be sent for that long after it expired.
  let fromExpiresIn: number | undefined;
  if (typeof expiresIn === 'number' && Number.isFinite(expiresIn) && expiresIn > 0) fromExpiresIn = requestedAtMs + expiresIn * 1000;
  else if (typeof expiresIn === 'string' && /^\d+$/.test(expiresIn) && Number(expiresIn) > 0) fromExpiresIn = requestedAtMs + Number(expiresIn) * 1000;
  // With both, the earlier wins: expires_in is the AS's word on the lifetime (RFC 6749 §5.1) and is immune to its
  // clock being off from ours, while a JWT access token's exp is what resource servers check. Either one passed
  // means the token may be refused, so it is not used past either.
  const expiresAt = fromExp === undefined ? fromExpiresIn : fromExpiresIn === undefined ? fromExp : Math.min(fromExp, fromExpiresIn);
  if (expiresAt === undefined) {
    // An expires_in that is there but unusable (0, negative, not a number) is named: "neither" would send the
    // operator looking for a field the answer has.
    throw new TokenUnavailableError(
      expiresIn === undefined || expiresIn === null
        ? `${what}: the token has neither a JWT exp claim nor expires_in`
        : `${what}: the token has no JWT exp claim, and its expires_in (${describeExpiresIn(expiresIn)}) is not a positive number of seconds`,
      undefined,
      LASTING,
    );
  }
  // Garbage (exp: 1e300) rather than a real far-off expiry: refused, not a token the audit log cannot describe, even
  // beside a sane expires_in.
  const inRange = (t: number | undefined) => t === undefined || (t >= -MAX_TIME_MS && t <= MAX_TIME_MS);
  if (!inRange(fromExp) || !inRange(fromExpiresIn)) throw new TokenUnavailableError(`${what}: the token's expiry is out of range`, undefined, LASTING);
  // An expires_in too short to outlast the round trip (`0.001`) is a lifetime too short, below, not an expired token.
  if (expiresAt <= nowMs && expiresAt === fromExp) {
    throw new TokenUnavailableError(`${what}: the token expired at ${isoTimeOrNumber(expiresAt)}`);
  }
  if (expiresAt - nowMs < MIN_TOKEN_LIFETIME_MS) {
    throw new TokenUnavailableError(`${what}: the token expires in less than 1 s (at ${isoTimeOrNumber(expiresAt)}), too soon to use or renew`);
  }
  return { token, expiresAt, ...(jti === undefined ? {} : { jti }), ...(issuer === undefined ? {} : { issuer }) };
}

/** An expires_in the token endpoint sent, for an error: numbers as they are, anything else by kind (it is the IdP's text, not a secret, but may be long). */
function describeExpiresIn(value: unknown): string {
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return value.length <= 20 ? JSON.stringify(value) : 'a long string';
  return Array.isArray(value) ? 'a list' : typeof value;
}
