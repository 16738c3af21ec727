// The benchmark's IdP: the project's dev issuer (oidc-provider underneath) on loopback, counting token requests.
import { createServer } from 'node:http';
import { createDevIssuer } from '../../dist/dev/issuer.js';

/**
 * Starts the dev issuer with one client for the outbound sidecar. Tokens live `ttlSeconds`. `tokenRequestTimes`
 * holds when each token request arrived (ms, performance.now()), for the renewal check.
 */
export async function startBenchIdp({ clientId, clientSecret, ttlSeconds }) {
  const counts = { token: 0, discovery: 0, jwks: 0 };
  const tokenRequestTimes = [];
  let issuer;
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/token') {
      counts.token++;
      tokenRequestTimes.push(performance.now());
    }
    else if (path.endsWith('/openid-configuration')) counts.discovery++;
    else if (path.includes('jwks')) counts.jwks++;
    issuer.handle(req, res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  issuer = await createDevIssuer({ issuer: url, clients: [{ clientId, clientSecret }], accessTokenTtlSeconds: ttlSeconds, alg: 'ES256' });
  return {
    issuer: url,
    counts,
    tokenRequestTimes,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
