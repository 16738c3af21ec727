import { randomUUID, timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SignJWT } from 'jose';
import type { Logger } from '../log.js';
import type { DevSigningKey } from './keys.js';
import { allowedExtraClaims, type DevClient } from './provider.js';

/** Path of the GitHub Actions OIDC request emulation on the dev issuer. */
export const GITHUB_ACTIONS_PATH = '/github-actions/token';

/**
 * Emulates the GitHub Actions OIDC token request service, so a workflow step
 * using `tokenSource: { type: github_actions }` can run on a laptop or in a
 * test. Set `ACTIONS_ID_TOKEN_REQUEST_URL` to
 * `{issuer}/github-actions/token?client=<clientId>` and
 * `ACTIONS_ID_TOKEN_REQUEST_TOKEN` to that client's secret; the step appends
 * `&audience=...` and gets `{"value": "<jwt>"}` (FIELD-NOTES: GitHub Actions OIDC).
 * The token is an ID token like GitHub's (`typ: JWT`), signed with the issuer's
 * current key and carrying the client's claims.
 */
export function handleGithubActionsRequest(
  req: IncomingMessage,
  res: ServerResponse,
  ctx: { issuer: string; clients: ReadonlyMap<string, DevClient>; signingKey: DevSigningKey; ttlSeconds: number; logger?: Logger | undefined },
): void {
  const url = new URL(req.url ?? '/', 'http://dev-issuer');
  const send = (status: number, body: unknown) =>
    void res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(body));
  if (req.method !== 'GET') return send(405, { message: 'use GET' });
  const client = ctx.clients.get(url.searchParams.get('client') ?? '');
  const presented = /^bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1]?.trim();
  if (!client?.clientSecret || !presented || !sameSecret(presented, client.clientSecret)) {
    // Only a known client is named, as on /token: the `client` parameter is whatever the request put there, and a
    // request token pasted into it by mistake (`?client=<secret>`) would be written to the log.
    const error = client ? 'invalid_client' : 'unknown_client';
    ctx.logger?.warn({ event: 'dev_token_refused', ...(client ? { client: client.clientId } : {}), error, source: 'github_actions' }, 'token refused');
    return send(401, { message: 'unknown client or bad request token (ACTIONS_ID_TOKEN_REQUEST_TOKEN must be the client secret)' });
  }
  const audience = url.searchParams.get('audience') || `https://github.com/${String(client.extraClaims?.repository_owner ?? client.clientId)}`;
  const now = Math.floor(Date.now() / 1000);
  // The same claims a client's `claims` can never set as on /token: the ones the issuer itself sets, and client_id,
  // scope and cnf, which a sidecar or app may read as the caller's identity or its rights.
  const claims = { ...allowedExtraClaims(client), jti: randomUUID() };
  new SignJWT(claims)
    .setProtectedHeader({ alg: ctx.signingKey.alg, kid: ctx.signingKey.kid, typ: 'JWT' })
    .setIssuer(ctx.issuer)
    .setSubject(client.subject ?? client.clientId)
    .setAudience(audience)
    .setIssuedAt(now)
    .setNotBefore(now)
    .setExpirationTime(now + ctx.ttlSeconds)
    .sign(ctx.signingKey.privateKey)
    .then(
      (value) => {
        ctx.logger?.info({ event: 'dev_token_issued', client: client.clientId, audience, source: 'github_actions' }, 'token issued');
        send(200, { count: 1, value });
      },
      () => send(500, { message: 'signing failed' }),
    );
}

function sameSecret(a: string, b: string): boolean {
  // Compare digests so the comparison takes the same time whatever the lengths.
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}
