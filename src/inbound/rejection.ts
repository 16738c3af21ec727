import { SidecarError } from '../errors.js';

/** The status line, headers and body of a refusal, independent of how it is written (HTTP response or raw socket). */
export interface RejectionResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * Short fixed descriptions per reason code. The body never echoes anything
 * from the request (claims, header values): details go to the audit log only.
 */
const DESCRIPTIONS: Record<string, string> = {
  missing_token: 'a bearer token is required',
  malformed_token: 'the bearer token is malformed',
  unsupported_alg: 'the token algorithm is not accepted',
  unknown_issuer: 'the token issuer is not trusted',
  unknown_key: 'the token signing key is not known',
  bad_signature: 'the token signature is invalid',
  expired: 'the token has expired',
  not_yet_valid: 'the token is not valid yet',
  issued_in_future: 'the token is issued in the future',
  audience_mismatch: 'the token is not meant for this service',
  lifetime_too_long: 'the token lifetime is too long',
  missing_claim: 'the token lacks a required claim',
  policy_denied: 'this identity is not allowed here',
  keys_unavailable: 'the issuer keys are unavailable; try again later',
  bad_path: 'the request path is not acceptable',
  internal_error: 'internal error',
};

/**
 * What the caller gets for a refused request: 401 with
 * `WWW-Authenticate: Bearer error="invalid_token"` for token problems and 403
 * `insufficient_scope` for rule denials (RFC 6750 §3, §3.1), 503 when keys are
 * unavailable, 400 for a bad path; body `{"error","reason"}`. The reason code
 * is in `error_description` for every 401, including a missing token (RFC 6750
 * §3.1 suggests no error code there; the product contract asks for one
 * uniform shape).
 */
export function rejectionResponse(err: SidecarError): RejectionResponse {
  const reason = err.code;
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  if (err.status === 401) headers['www-authenticate'] = `Bearer error="invalid_token", error_description="${reason}"`;
  else if (err.status === 403) headers['www-authenticate'] = `Bearer error="insufficient_scope", error_description="${reason}"`;
  else if (err.status === 503) headers['retry-after'] = '1';
  const body = JSON.stringify({ error: DESCRIPTIONS[reason] ?? reason.replaceAll('_', ' '), reason });
  headers['content-length'] = String(Buffer.byteLength(body));
  return { status: err.status, headers, body };
}

/** An unexpected failure while deciding: answered 500 and counted, never let through. */
export class InternalError extends SidecarError {
  constructor(cause: unknown) {
    super('internal_error', 'internal error while authorizing', 500, { cause });
  }
}
