import type { TokenSourceConfig } from '../../config/schema.js';
import { createClientAuth } from './client-auth.js';
import { askedAudience, oauthForm } from './oauth-form.js';
import { createTokenEndpoint } from './token-endpoint.js';
import type { SourceDeps, TokenSource } from './types.js';

type Config = Extract<TokenSourceConfig, { type: 'client_credentials' }>;

/** OAuth 2.0 client credentials grant (RFC 6749 §4.4) for the workload's own client. */
export function createClientCredentialsSource(cfg: Config, deps: SourceDeps): TokenSource {
  const auth = createClientAuth(cfg, deps);
  const endpoint = createTokenEndpoint(cfg, deps);
  return {
    kind: 'client_credentials',
    credentialDigest: auth.credentialDigest,
    fetch: (req) => endpoint.request(oauthForm('client_credentials', req, cfg.audienceParam, cfg.params), auth, ['bearer'], askedAudience(req, cfg.audienceParam)),
    close: () => endpoint.close(),
  };
}
