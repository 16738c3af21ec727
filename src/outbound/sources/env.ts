import type { TokenSourceConfig } from '../../config/schema.js';
import { TokenUnavailableError } from '../../errors.js';
import { assertBearerToken, assertIssuedFor, jwtClaims, toIssuedToken } from './token-format.js';
import type { SourceDeps, TokenSource } from './types.js';

type Config = Extract<TokenSourceConfig, { type: 'env' }>;

/**
 * A token handed to the process in an environment variable, e.g. GitLab CI
 * `id_tokens` (one variable per audience: `variable: "ID_TOKEN_{audience}"`).
 * The environment cannot change under a running process, so once the token
 * expires it stays unavailable: this source suits jobs shorter than the token.
 */
export function createEnvSource(cfg: Config, deps: SourceDeps): TokenSource {
  const read = (audience: string) => {
    const name = cfg.variable.replaceAll('{audience}', audience);
    const value = deps.env[name]?.trim();
    if (!value) throw new TokenUnavailableError(`environment variable ${name} is not set or empty`);
    const what = `environment variable ${name}`;
    assertBearerToken(value, what);
    if (!jwtClaims(value)) throw new TokenUnavailableError(`${what} does not hold a JWT (its exp claim gives the expiry)`);
    // A variable without {audience} may serve routes of several audiences: each gets the token only if it is for it.
    const hint = '; give each audience its own variable and put {audience} in variable';
    return assertIssuedFor(toIssuedToken(value, undefined, deps.clock.now(), what), audience, what, hint);
  };
  return {
    kind: 'env',
    readsIssuedTokens: true,
    async fetch(req) {
      try {
        return read(req.audience);
      } catch (err) {
        // What is wrong with the variable (unset, not a JWT, expired) stays wrong for the life of the process: asking
        // again at the short retry interval would only repeat the failure and its log line, so the cache waits its
        // longest (retryMaxSeconds) instead.
        if (err instanceof TokenUnavailableError && !err.lasting) throw new TokenUnavailableError(err.message, undefined, { cause: err, lasting: true });
        throw err;
      }
    },
    async close() {},
  };
}
