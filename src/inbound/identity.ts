import type { ForwardConfig } from '../config/schema.js';
import { CLIENT_INFO_HEADERS, cgiSpelling } from '../proxy/headers.js';
import type { Claims } from './policy.js';

/** A verified caller, with the identity headers for the app computed once (they are cached with it). */
export interface Identity {
  claims: Claims;
  issuer: string;
  /** Flat [name, value, ...] list of the headers to set on the forwarded request. */
  headers: readonly string[];
}

/**
 * Builds the identity headers of `inbound.forward` from verified claims:
 * subject, issuer, every claim as base64url(JSON) (RFC 4648 §5, so any value
 * survives a header), and the configured claim headers (strings as-is, other
 * JSON values JSON-encoded). A claim that is absent sets no header.
 */
export function createIdentityBuilder(forward: ForwardConfig): (claims: Claims, issuer: string) => Identity {
  const claimHeaders = Object.entries(forward.claimHeaders);
  return (claims, issuer) => {
    const headers: string[] = [];
    if (typeof claims.sub === 'string') headers.push(forward.subjectHeader, headerValue(claims.sub));
    headers.push(forward.issuerHeader, headerValue(issuer));
    headers.push(forward.claimsHeader, Buffer.from(JSON.stringify(claims)).toString('base64url'));
    for (const [name, claim] of claimHeaders) {
      // Own claims only: `constructor` or `__proto__` would otherwise read Object.prototype's (a header of "{}").
      const v = Object.hasOwn(claims, claim) ? claims[claim] : undefined;
      if (v === undefined) continue;
      headers.push(name, headerValue(typeof v === 'string' ? v : JSON.stringify(v)));
    }
    return { claims, issuer, headers };
  };
}

/**
 * About how many bytes an identity holds in memory, for the verified-token cache's budget: its header strings, and
 * its claims object, which takes about as much again as their base64url JSON (the largest header) does. Measured
 * (heap growth over 5,000 entries): 12.2 KB per identity of an 8.2 KB token (this says 16.1), 1.7 KB for a 0.9 KB
 * token (1.8), 1.0 KB for a 0.4 KB token (0.8).
 */
export function identityBytes(identity: Identity): number {
  let chars = 0;
  for (const h of identity.headers) chars += h.length;
  return 2 * chars + 256;
}

/**
 * Every header the sidecar sets for the app (and the token header unless
 * `keepToken`): removed from the incoming request first, on every route, so a
 * caller can never supply its own identity. Each name is listed also in its
 * cgiSpelling (punctuation as `-`), so with the proxy's comparison (isDropped)
 * every spelling an app could read as the same CGI variable is removed. A kept
 * token header is listed in its `_` spelling: it passes, but an `X_Token` or
 * `X.Token` beside `X-Token` (the same HTTP_X_TOKEN to a CGI-style app) does not.
 * With `forwardedHeaders: replace`, the caller's CLIENT_INFO_HEADERS are removed too.
 */
export function identityHeaderNames(forward: ForwardConfig, tokenHeader: string, forwardedHeaders: 'append' | 'replace'): Set<string> {
  const names = new Set([forward.subjectHeader, forward.issuerHeader, forward.claimsHeader, ...Object.keys(forward.claimHeaders)]);
  // The caller's, dropped here, are then not merged: buildUpstreamHeaders sends this hop's alone.
  if (forwardedHeaders === 'replace') for (const name of CLIENT_INFO_HEADERS) names.add(name);
  if (!forward.keepToken) names.add(tokenHeader);
  for (const name of names) {
    const dashed = cgiSpelling(name);
    if (dashed !== undefined) names.add(dashed);
  }
  if (forward.keepToken && tokenHeader.includes('-') && !tokenHeader.includes('_')) names.add(tokenHeader.replaceAll('-', '_'));
  return names;
}

const PLAIN = /^[\x21-\x24\x26-\x7e](?:[\x20-\x24\x26-\x7e]*[\x21-\x24\x26-\x7e])?$/;

/**
 * A claim value as a header value. Printable ASCII without `%` and without
 * edge spaces goes as-is; otherwise every byte outside printable ASCII, every
 * space and every `%` is percent-encoded (UTF-8), so CR/LF can never split a
 * header and an app may always apply decodeURIComponent to get the exact value.
 */
export function headerValue(value: string): string {
  if (value === '' || PLAIN.test(value)) return value;
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    out += byte > 0x20 && byte < 0x7f && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
