import { TokenRejectedError } from '../errors.js';

export interface ExtractorOptions {
  /** Lower-case header name the token travels in; default `authorization`. */
  header: string;
  /** Longest token accepted, in bytes; larger ones are refused before any parsing (default 8192). */
  maxTokenBytes: number;
}

/** A bearer token that has passed the cheap shape checks, with its segment boundaries. */
export interface ExtractedToken {
  token: string;
  /** Index of the first and second `.` in `token`. */
  dot1: number;
  dot2: number;
}

/** A function taking Node's flat rawHeaders list and returning the one bearer token in it. */
export type Extractor = (rawHeaders: readonly string[]) => ExtractedToken;

// Bytes allowed in a base64url segment (RFC 7515 §2, RFC 4648 §5), as a lookup table for a single linear scan:
// each character's 6-bit value plus one, 0 for a character outside the alphabet.
const BASE64URL = new Uint8Array(128);
[...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'].forEach((c, i) => (BASE64URL[c.charCodeAt(0)] = i + 1));
const DOT = 0x2e;

/**
 * Whether the segment `token[start, end)` is the one spelling an encoder writes (RFC 4648 §3.5): a length that
 * leaves 1 character over is no encoding at all, and the bits of the last character past the data must be zero.
 * Decoders ignore those bits, so without this check one signature could be written four or sixteen ways, and
 * anything keyed on the token's text (a deny list, a replay cache, a log search) would see different tokens.
 */
function isCanonicalSegment(token: string, start: number, end: number): boolean {
  const spare = (end - start) % 4;
  if (spare === 0) return true;
  if (spare === 1) return false;
  const last = BASE64URL[token.charCodeAt(end - 1)]! - 1;
  return (last & (spare === 2 ? 0x0f : 0x03)) === 0;
}

/**
 * Builds the token extractor. The token is taken only from the configured
 * header, never from the query string (RFC 6750 §2.3 is a MAY we decline: URLs
 * end up in access logs). For `authorization` the value must be
 * `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1, RFC 9110 §11.1);
 * a custom header may carry the bare token or `Bearer <token>`.
 */
export function createExtractor(opts: ExtractorOptions): Extractor {
  const header = opts.header.toLowerCase();
  const requireScheme = header === 'authorization';
  const max = opts.maxTokenBytes;

  return (rawHeaders) => {
    let value: string | undefined;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      if (rawHeaders[i]!.length !== header.length || rawHeaders[i]!.toLowerCase() !== header) continue;
      // Node keeps only the first duplicate in req.headers; two credentials are ambiguous, so refuse (CVE-2025-64527 class).
      if (value !== undefined) throw new TokenRejectedError('malformed_token', `more than one ${header} header`);
      value = rawHeaders[i + 1]!;
    }
    if (value === undefined || value.length === 0) throw new TokenRejectedError('missing_token', `no ${header} header`);

    let start = 0;
    if (value.length >= 7 && value.slice(0, 6).toLowerCase() === 'bearer' && (value.charCodeAt(6) === 0x20 || value.charCodeAt(6) === 0x09)) {
      start = 7;
      while (start < value.length && (value.charCodeAt(start) === 0x20 || value.charCodeAt(start) === 0x09)) start++;
    } else if (requireScheme) {
      throw new TokenRejectedError('missing_token', `${header} header does not carry a Bearer token`);
    }
    const length = value.length - start;
    if (length === 0) throw new TokenRejectedError('missing_token', 'empty bearer token');
    // Node decodes header bytes as latin1, so string length is the byte count.
    if (length > max) throw new TokenRejectedError('malformed_token', `token is larger than ${max} bytes`);
    return checkShape(start === 0 ? value : value.slice(start));
  };
}

/**
 * Compact JWS shape (RFC 7515 §7.1): exactly three base64url segments, each in
 * its canonical spelling, header and payload non-empty. One pass, no
 * allocation per dot, so a token full of dots costs O(n) time and O(1) memory
 * (CVE-2025-30204). An empty signature is let through so that `alg: none` is
 * reported as `unsupported_alg`.
 */
export function checkShape(token: string): ExtractedToken {
  let dot1 = -1;
  let dot2 = -1;
  let dots = 0;
  for (let i = 0; i < token.length; i++) {
    const c = token.charCodeAt(i);
    if (c === DOT) {
      dots++;
      if (dots === 1) dot1 = i;
      else if (dots === 2) dot2 = i;
    } else if (c >= 128 || BASE64URL[c] === 0) {
      throw new TokenRejectedError('malformed_token', 'token is not a compact JWS (invalid character)');
    }
  }
  // Five segments is the JWE compact form (RFC 7516 §7.1); we verify signatures, we do not decrypt.
  if (dots === 4) throw new TokenRejectedError('malformed_token', 'encrypted tokens (JWE) are not accepted');
  if (dots !== 2) throw new TokenRejectedError('malformed_token', 'token is not a compact JWS (expected three segments)');
  if (dot1 === 0 || dot2 === dot1 + 1) throw new TokenRejectedError('malformed_token', 'token has an empty header or payload');
  if (!isCanonicalSegment(token, 0, dot1) || !isCanonicalSegment(token, dot1 + 1, dot2) || !isCanonicalSegment(token, dot2 + 1, token.length)) {
    throw new TokenRejectedError('malformed_token', 'token is not a compact JWS (a segment is not canonical base64url)');
  }
  return { token, dot1, dot2 };
}
