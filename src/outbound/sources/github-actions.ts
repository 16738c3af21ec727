import type { Dispatcher } from 'undici';
import { TokenUnavailableError } from '../../errors.js';
import { createIdpAgent, requestJson, retryAfterMs } from '../../oidc/http.js';
import { assertBearerToken, assertIssuedFor, toIssuedToken } from './token-format.js';
import type { SourceDeps, TokenSource } from './types.js';

/**
 * GitHub Actions OIDC: the runner publishes a per-job request URL and bearer
 * token in ACTIONS_ID_TOKEN_REQUEST_URL / ACTIONS_ID_TOKEN_REQUEST_TOKEN (only
 * with `permissions: id-token: write`); `GET <url>&audience=<aud>` answers
 * `{"value": "<jwt>"}`. The variables are read at each fetch from the
 * injected environment, since they are the runner's, not our config.
 */
export function createGithubActionsSource(deps: SourceDeps): TokenSource {
  const owned = deps.dispatcher ? undefined : createIdpAgent({ timeoutMs: deps.timeoutMs });
  const dispatcher: Dispatcher = deps.dispatcher ?? owned!;
  return {
    kind: 'github_actions',
    async fetch(req) {
      const requestUrl = deps.env.ACTIONS_ID_TOKEN_REQUEST_URL;
      const requestToken = deps.env.ACTIONS_ID_TOKEN_REQUEST_TOKEN;
      if (!requestUrl || !requestToken) {
        throw new TokenUnavailableError(
          'ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set (does the job have `permissions: id-token: write`?)',
        );
      }
      let url: URL;
      try {
        url = new URL(requestUrl);
      } catch {
        throw new TokenUnavailableError('ACTIONS_ID_TOKEN_REQUEST_URL is not a URL');
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TokenUnavailableError('ACTIONS_ID_TOKEN_REQUEST_URL is not an http(s) URL');
      url.searchParams.set('audience', req.audience);
      const where = `${url.origin}${url.pathname}`;
      let res;
      try {
        res = await requestJson(dispatcher, url.href, { headers: { authorization: `bearer ${requestToken}` }, timeoutMs: deps.timeoutMs });
      } catch (err) {
        throw new TokenUnavailableError(`GitHub Actions token request to ${where} failed: ${(err as Error).message}`, undefined, { cause: err });
      }
      if (res.status !== 200) {
        // GitHub throttles the endpoint (429, or 403 for a secondary rate limit) and says when to come back.
        const retryAfter = retryAfterMs(res.headers['retry-after'], deps.clock.now());
        throw new TokenUnavailableError(`GitHub Actions token endpoint ${where} answered HTTP ${res.status}`, undefined, { retryAfterMs: retryAfter });
      }
      const value = (res.body as { value?: unknown } | undefined)?.value;
      const what = `GitHub Actions token endpoint ${where}`;
      assertBearerToken(value, what);
      // The request names the audience (`audience=`), and GitHub puts it in `aud`.
      return assertIssuedFor(toIssuedToken(value, undefined, deps.clock.now(), what), req.audience, what);
    },
    async close() {
      // As the token endpoint's: a request in flight is cut, not waited for (token-endpoint.ts).
      await owned?.destroy().catch(() => {});
    },
  };
}
