import { randomBytes } from 'node:crypto';
import Provider, { errors, type ClientMetadata, type Configuration } from 'oidc-provider';
import type { JWK } from 'jose';
import { audienceForResource, resourceForAudience } from './audience-param.js';
import type { DevSigningKey } from './keys.js';
import { createMemoryAdapterFactory } from './memory-adapter.js';

/** How a dev client authenticates at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2). */
export type DevClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

/** One OAuth client of the dev issuer; it may use the client_credentials grant only. */
export interface DevClient {
  clientId: string;
  /** Required for the client_secret_* methods. */
  clientSecret?: string;
  /** Default client_secret_basic, or private_key_jwt when `jwks`/`jwksUri` is given without a secret. */
  authMethod?: DevClientAuthMethod;
  /** Public keys that verify this client's private_key_jwt / jwt-bearer assertions. */
  jwks?: { keys: JWK[] };
  jwksUri?: string;
  /** Claims added to every access token of this client (e.g. GitHub-Actions-style `repository`, `ref`). */
  extraClaims?: Record<string, unknown>;
  /** Overrides `sub` (default: the client_id), e.g. `repo:acme/app:ref:refs/heads/main`. */
  subject?: string;
  /** Audience used when the request names none (`audienceParam: none`); without it such a request fails with invalid_target. */
  defaultAudience?: string;
  /** Accept the same client assertion more than once while it is valid (federated tokens such as projected service-account tokens are reused). Default false. */
  allowAssertionReuse?: boolean;
}

export interface DevProviderOptions {
  /** The issuer identifier, e.g. `http://127.0.0.1:9000` (no trailing slash). */
  issuer: string;
  clients: readonly DevClient[];
  /** Signing keys; the first one signs, every one is published in the JWKS. */
  signingKeys: readonly DevSigningKey[];
  /** Access token lifetime in seconds; default 300. */
  accessTokenTtlSeconds?: number;
}

/** Default access token lifetime of the dev issuer (seconds). */
export const DEV_ACCESS_TOKEN_TTL_SECONDS = 300;

/** Claims a client's `extraClaims` may not replace: they are what verifiers trust. */
const PROTECTED_CLAIMS: ReadonlySet<string> = new Set(['iss', 'aud', 'exp', 'iat', 'nbf', 'jti', 'client_id', 'scope', 'cnf']);

/** A client's `extraClaims` without the protected ones, as every token the dev issuer signs for it carries them. */
export function allowedExtraClaims(client: DevClient): Record<string, unknown> {
  return Object.fromEntries(Object.entries(client.extraClaims ?? {}).filter(([k]) => !PROTECTED_CLAIMS.has(k)));
}

/**
 * Builds an oidc-provider v9 Provider that issues client_credentials access
 * tokens as JWTs (`typ: at+jwt`, RFC 9068) whose `aud` comes from the
 * request's `resource` (RFC 8707) or `audience` parameter. Mount it behind
 * `withNormalizedAudience` so bare audiences like `payments` are accepted.
 */
export function createDevProvider(opts: DevProviderOptions): Provider {
  const signer = opts.signingKeys[0];
  if (!signer) throw new TypeError('createDevProvider: at least one signing key is required');
  const ttl = opts.accessTokenTtlSeconds ?? DEV_ACCESS_TOKEN_TTL_SECONDS;
  if (!Number.isInteger(ttl) || ttl <= 0) throw new TypeError('createDevProvider: accessTokenTtlSeconds must be a positive integer');
  const byId = new Map(opts.clients.map((c) => [c.clientId, c]));
  if (byId.size !== opts.clients.length) throw new TypeError('createDevProvider: client ids must be unique');

  const configuration: Configuration = {
    adapter: createMemoryAdapterFactory({
      reusableAssertionClients: new Set(opts.clients.filter((c) => c.allowAssertionReuse).map((c) => c.clientId)),
    }),
    clients: opts.clients.map((c) => toClientMetadata(c, signer.alg)),
    jwks: { keys: opts.signingKeys.map((k) => k.privateJwk) } as Configuration['jwks'],
    // Clients registered with EC/OKP-only keystores need a matching default alg (see FIELD-NOTES).
    clientDefaults: { id_token_signed_response_alg: signer.alg, grant_types: ['client_credentials'], response_types: [], redirect_uris: [] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientBasedCORS: () => false,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      userinfo: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client) => {
          const fallback = client ? byId.get(client.clientId)?.defaultAudience : undefined;
          if (fallback) return resourceForAudience(fallback);
          // error_description may not hold '"' (RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E); oidc-provider turns one into '?'.
          if (ctx.oidc.route === 'token') throw new errors.InvalidTarget("name the audience with a 'resource' or 'audience' parameter");
          return undefined as unknown as string;
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => ({
          audience: audienceForResource(resourceIndicator),
          // Any requested scope is granted: this is a development issuer, not a policy engine.
          scope: typeof ctx.oidc.params?.scope === 'string' ? ctx.oidc.params.scope : '',
          accessTokenFormat: 'jwt',
          accessTokenTTL: ttl,
          jwt: { sign: { alg: signer.alg, kid: signer.kid } },
        }),
      },
    },
    ttl: { ClientCredentials: ttl, AccessToken: ttl },
    formats: {
      customizers: {
        jwt: async (_ctx, token, jwt) => {
          const client = token.clientId ? byId.get(token.clientId) : undefined;
          if (!client) return;
          Object.assign(jwt.payload, allowedExtraClaims(client));
          if (client.subject) jwt.payload.sub = client.subject;
        },
      },
    },
    enabledJWA: {
      // Asymmetric only: client_secret_jwt (HS*) would put the shared secret to a second use.
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'Ed25519', 'EdDSA'],
    },
  };
  const provider = new Provider(opts.issuer, configuration);
  // An http issuer is reached directly (loopback, a compose network): a client's X-Forwarded-* headers are not
  // trusted. An https one is served by a proxy that terminates TLS in front of it (the dev issuer speaks plain HTTP),
  // whose X-Forwarded-Proto makes the endpoint URLs in discovery https too: the sidecar refuses an http jwks_uri or
  // token endpoint under an https issuer.
  provider.proxy = new URL(opts.issuer).protocol === 'https:';
  return provider;
}

function toClientMetadata(c: DevClient, alg: DevSigningKey['alg']): ClientMetadata {
  const hasKeys = c.jwks !== undefined || c.jwksUri !== undefined;
  const method = c.authMethod ?? (c.clientSecret === undefined && hasKeys ? 'private_key_jwt' : 'client_secret_basic');
  if (method === 'private_key_jwt' && !hasKeys) throw new TypeError(`dev client ${c.clientId}: private_key_jwt needs jwks or jwksUri`);
  if (method !== 'private_key_jwt' && !c.clientSecret) throw new TypeError(`dev client ${c.clientId}: ${method} needs a clientSecret`);
  return {
    client_id: c.clientId,
    ...(method === 'private_key_jwt' ? {} : { client_secret: c.clientSecret }),
    token_endpoint_auth_method: method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    id_token_signed_response_alg: alg,
    ...(c.jwks ? { jwks: c.jwks as ClientMetadata['jwks'] } : {}),
    ...(c.jwksUri ? { jwks_uri: c.jwksUri } : {}),
  };
}
