import type { TokenSourceConfig } from '../../config/schema.js';
import { createClientCredentialsSource } from './client-credentials.js';
import { createEnvSource } from './env.js';
import { createFileSource } from './file.js';
import { createGithubActionsSource } from './github-actions.js';
import { createTokenExchangeSource } from './token-exchange.js';
import type { SourceDeps, TokenSource } from './types.js';

export type { IssuedToken, SourceDeps, TokenRequest, TokenSource } from './types.js';

/**
 * Builds the token source a `tokenSource` config block describes. Files it
 * needs up front (client secret, private key) are read now; a problem is a
 * ConfigError naming the key path under `deps.configPath`.
 */
export function createTokenSource(cfg: TokenSourceConfig, deps: SourceDeps): TokenSource {
  switch (cfg.type) {
    case 'client_credentials':
      return createClientCredentialsSource(cfg, deps);
    case 'token_exchange':
      return createTokenExchangeSource(cfg, deps);
    case 'file':
      return createFileSource(cfg, deps);
    case 'github_actions':
      return createGithubActionsSource(deps);
    case 'env':
      return createEnvSource(cfg, deps);
  }
}
