import type { TokenSourceConfig } from '../../config/schema.js';
import { createClientAuth } from './client-auth.js';
import { readRuntimeFile } from './files.js';
import { askedAudience, oauthForm } from './oauth-form.js';
import { createTokenEndpoint } from './token-endpoint.js';
import type { SourceDeps, TokenSource } from './types.js';

type Config = Extract<TokenSourceConfig, { type: 'token_exchange' }>;

/** RFC 8693 §2.1 grant type. */
export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';

/**
 * RFC 8693 token exchange: trades a subject token (typically a projected
 * Kubernetes service-account token) for one bound to the called audience.
 * The subject token file is re-read at every exchange because its issuer
 * rotates it.
 */
export function createTokenExchangeSource(cfg: Config, deps: SourceDeps): TokenSource {
  const auth = createClientAuth(cfg, deps);
  const endpoint = createTokenEndpoint(cfg, deps);
  return {
    kind: 'token_exchange',
    credentialDigest: auth.credentialDigest,
    async fetch(req) {
      const subjectToken = await readRuntimeFile(cfg.subjectTokenFile, 'subjectTokenFile');
      const form = oauthForm(TOKEN_EXCHANGE_GRANT, req, cfg.audienceParam, cfg.params);
      form.set('subject_token', subjectToken);
      form.set('subject_token_type', cfg.subjectTokenType);
      if (cfg.requestedTokenType) form.set('requested_token_type', cfg.requestedTokenType);
      // RFC 8693 §2.2.1: token_type is "N_A" when the issued token is not an access token (e.g. an ID token).
      return endpoint.request(form, auth, ['bearer', 'n_a'], askedAudience(req, cfg.audienceParam));
    },
    close: () => endpoint.close(),
  };
}
