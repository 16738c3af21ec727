import { TokenRejectedError, type InboundReason } from '../errors.js';

/**
 * Maps an error thrown by jose's jwtVerify to the SPEC's reason codes. Every
 * path ends in a rejection: an error we do not recognise is a malformed token,
 * never a pass.
 */
export function fromJoseError(err: unknown): TokenRejectedError {
  if (err instanceof TokenRejectedError) return err;
  const e = err as { code?: string; claim?: string; reason?: string; message?: string };
  const message = e.message ?? String(err);
  const reject = (reason: InboundReason, msg = message) => new TokenRejectedError(reason, msg, { cause: err });
  switch (e.code) {
    case 'ERR_JWT_EXPIRED':
      return reject('expired');
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      // A missing `aud` is as much "not for us" as a wrong one.
      if (e.claim === 'aud') return reject('audience_mismatch');
      if (e.reason === 'missing') return reject('missing_claim');
      // A time claim that is not a number at all (`"nbf": "x"`) is a broken token, not one that is early or late.
      if (e.reason === 'invalid') return reject('malformed_token');
      if (e.claim === 'nbf') return reject('not_yet_valid');
      if (e.claim === 'iat') return reject('issued_in_future');
      if (e.claim === 'iss') return reject('unknown_issuer');
      // Wrong `typ` (e.g. an ID token where an RFC 9068 access token is required) or a non-numeric date.
      return reject('malformed_token');
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return reject('bad_signature');
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
    case 'ERR_JOSE_NOT_SUPPORTED':
      return reject('unsupported_alg');
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
    case 'ERR_JWK_INVALID':
    case 'ERR_JWKS_INVALID':
      return reject('unknown_key');
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
      return reject('malformed_token');
    default:
      // e.g. jose's TypeError for an RSA key under 2048 bits (RFC 7518 §3.3): the issuer's key is not acceptable.
      if (err instanceof TypeError && /key|modulus/i.test(message)) return reject('unknown_key');
      return reject('malformed_token', `token could not be verified: ${message}`);
  }
}
