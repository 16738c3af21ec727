import type { Dispatcher } from 'undici';
import type { CaBundle } from '../../config/ca-bundle.js';
import { TokenUnavailableError } from '../../errors.js';
import { discover, downgradesToCleartext } from '../../oidc/discovery.js';
import { createIdpAgent, IdpHttpError, requestJson, retryAfterMs, shownUrl } from '../../oidc/http.js';
import type { ClientAuth } from './client-auth.js';
import { sentSecrets, withoutSecrets, type SentSecrets } from './sent-secrets.js';
import { assertBearerToken, assertIssuedFor, LASTING, toIssuedToken } from './token-format.js';
import type { IssuedToken, SourceDeps } from './types.js';

export interface TokenEndpointConfig {
  issuer?: string | undefined;
  tokenEndpoint?: string | undefined;
  /** The CA bundle the config loaded from `caFile`. */
  ca?: CaBundle | undefined;
}

/** One OAuth token endpoint and the dispatcher that talks to it. */
export interface TokenEndpoint {
  /** The endpoint URL: configured, or found once by OIDC discovery (then kept for the life of the source). */
  url(): Promise<string>;
  /**
   * POSTs a token request (RFC 6749 §4.4.2 / RFC 8693 §2.1) with client
   * authentication and returns the token. `tokenTypes` are the accepted
   * `token_type` values, lower-case (absent is accepted). `audience`: the
   * audience the form names (audienceParam resource or audience), which the
   * token must then be for.
   */
  request(form: URLSearchParams, auth: ClientAuth, tokenTypes: readonly string[], audience?: string): Promise<IssuedToken>;
  close(): Promise<void>;
}

/** Builds the token endpoint client for a client_credentials or token_exchange source. */
export function createTokenEndpoint(cfg: TokenEndpointConfig, deps: SourceDeps): TokenEndpoint {
  const owned = deps.dispatcher ? undefined : createIdpAgent({ ca: cfg.ca, timeoutMs: deps.timeoutMs });
  const dispatcher: Dispatcher = deps.dispatcher ?? owned!;
  let resolved: Promise<string> | undefined = cfg.tokenEndpoint ? Promise.resolve(cfg.tokenEndpoint) : undefined;

  const url = (): Promise<string> => {
    if (!resolved) {
      const issuer = cfg.issuer!;
      resolved = discover(issuer, dispatcher, deps.timeoutMs).then(
        (meta) => {
          const endpoint = meta.token_endpoint;
          if (typeof endpoint !== 'string' || !/^https?:\/\//.test(endpoint)) {
            throw new TokenUnavailableError(`issuer ${issuer} publishes no usable token_endpoint in its discovery document`);
          }
          if (downgradesToCleartext(issuer, endpoint)) {
            // The client secret or assertion would cross the network in cleartext.
            throw new TokenUnavailableError(`issuer ${issuer} publishes token_endpoint ${shownUrl(endpoint)}, which is not https although the issuer is; client credentials are never sent over cleartext`);
          }
          return endpoint;
        },
        (err: unknown) => {
          // A 503 or 429 from the discovery endpoint may say when to come back, as the token endpoint's does.
          const retryAfter = err instanceof IdpHttpError ? retryAfterMs(err.retryAfter, deps.clock.now()) : undefined;
          throw new TokenUnavailableError(`token endpoint discovery failed: ${errorText(err)}`, undefined, { cause: err, retryAfterMs: retryAfter });
        },
      );
      // A failed discovery is retried by the next fetch (the cache's backoff paces it).
      resolved.catch(() => (resolved = undefined));
    }
    return resolved;
  };

  return {
    url,
    async request(form, auth, tokenTypes, audience) {
      const endpoint = await url();
      const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
      await auth.apply(form, headers, endpoint);
      let res;
      const sentAt = deps.clock.now();
      try {
        res = await requestJson(dispatcher, endpoint, { method: 'POST', headers, body: form.toString(), timeoutMs: deps.timeoutMs });
      } catch (err) {
        throw new TokenUnavailableError(`token request failed: ${errorText(err)}`, undefined, { cause: err });
      }
      const body = (res.body && typeof res.body === 'object' ? res.body : {}) as Record<string, unknown>;
      // What the IdP says goes to logs and to the app's 503: an IdP (or a gateway before it) that echoes the
      // request back must not make it say the client secret, the assertion, the subject token or the endpoint's query.
      // Gathered only for an answer about to be quoted: a token that is fine never needs them.
      const secrets = () => sentSecrets(form, headers, endpoint);
      if (res.status < 200 || res.status > 299) throw oauthError(res.status, body, secrets(), retryAfterMs(res.headers['retry-after'], deps.clock.now()));
      const what = `token endpoint ${shownUrl(endpoint)}`;
      assertBearerToken(body.access_token, what);
      // Absent is taken for bearer (some IdPs leave it out); anything present must be a string naming an accepted
      // type, so `123` or `["DPoP"]` is refused like "DPoP" rather than taken for absent.
      if (body.token_type !== undefined) {
        const type = typeof body.token_type === 'string' ? body.token_type.toLowerCase() : undefined;
        if (type === undefined || !tokenTypes.includes(type)) {
          const shown = type !== undefined ? `"${safeText(withoutSecrets(body.token_type as string, secrets()).toLowerCase(), 32)}"` : jsonKind(body.token_type);
          // Lasting: the type comes from how the client is set up at the IdP, so every retry mints one more (see LASTING).
          throw new TokenUnavailableError(`${what}: token_type ${shown} is not a bearer token`, undefined, LASTING);
        }
      }
      const issued = toIssuedToken(body.access_token, body.expires_in, deps.clock.now(), what, sentAt);
      return audience === undefined ? issued : assertIssuedFor(issued, audience, what, AUDIENCE_HINT);
    },
    async close() {
      // Destroy, not close: close() would wait for a token request in flight, up to tokenRequestTimeoutSeconds against
      // a hanging IdP, and a shutdown (or a reload given up for one) would wait with it. Cutting it loses nothing.
      await owned?.destroy().catch(() => {});
    },
  };
}

/**
 * RFC 6749 §5.2 error response → a TokenUnavailableError carrying `error`
 * and `error_description`, which reach the logs and the app's 503 body. The
 * request's own secrets are never part of it: any the IdP quotes are masked.
 */
function oauthError(status: number, body: Record<string, unknown>, secrets: SentSecrets, retryAfter: number | undefined): TokenUnavailableError {
  const options = { retryAfterMs: retryAfter };
  if (typeof body.error === 'string' && body.error.length > 0) {
    const code = safeText(withoutSecrets(body.error, secrets), 64);
    const description = typeof body.error_description === 'string' ? safeText(withoutSecrets(body.error_description, secrets), 256) : '';
    return new TokenUnavailableError(`token endpoint refused the request (HTTP ${status}): ${code}${description ? ` (${description})` : ''}`, code, options);
  }
  return new TokenUnavailableError(`token endpoint answered HTTP ${status} without an OAuth error`, undefined, options);
}

/** What to change when the IdP names the audience its own way (README: Token sources). */
const AUDIENCE_HINT = '; an IdP that sets aud itself rather than from the request (Keycloak for client credentials) needs audienceParam: none';

/** RFC 6749 §5.2 allows only printable ASCII without `"` and `\` in error fields; anything else is masked and the length capped. */
export function safeText(s: string, max: number): string {
  const clean = s.replace(/[^\x20\x21\x23-\x5B\x5D-\x7E]/g, '?');
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

function errorText(err: unknown): string {
  if (err instanceof IdpHttpError || err instanceof TokenUnavailableError) return err.message;
  return err instanceof Error ? err.message : String(err);
}

/** What kind of JSON value something is, for a message that must not quote it: `null`, `a list`, `a number`, ... */
function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}
