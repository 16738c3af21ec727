import { createServer, IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type Provider from 'oidc-provider';
import { UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { withNormalizedAudience } from './audience-param.js';
import { GITHUB_ACTIONS_PATH, handleGithubActionsRequest } from './github-actions.js';
import { generateSigningKey, type DevAlg, type DevSigningKey } from './keys.js';
import { createDevProvider, DEV_ACCESS_TOKEN_TTL_SECONDS, type DevClient } from './provider.js';

export interface DevIssuerOptions {
  /** The issuer identifier tokens carry, e.g. `http://127.0.0.1:9000` or `http://dev-issuer:9000`. */
  issuer: string;
  clients: readonly DevClient[];
  /** Signing keys (first signs); default one generated key of `alg`. */
  signingKeys?: readonly DevSigningKey[];
  /** Algorithm of generated keys; default RS256. */
  alg?: DevAlg;
  /** Access token lifetime in seconds; default 300. */
  accessTokenTtlSeconds?: number;
  /** Receives one line per token issued or refused (never the token itself). */
  logger?: Logger;
}

/** A dev issuer without a socket of its own: `handle` serves discovery, JWKS and the token endpoint. */
export interface DevIssuer {
  readonly issuer: string;
  readonly tokenEndpoint: string;
  readonly jwksUri: string;
  /** Current signing keys, the signing one first. */
  readonly signingKeys: readonly DevSigningKey[];
  handle(req: IncomingMessage, res: ServerResponse): void;
  /**
   * Puts a new signing key (new `kid`) in front. The previous keys stay in the
   * JWKS unless `keepOld` is false, as a real IdP does during a rollover.
   */
  rotateKeys(opts?: { keepOld?: boolean; alg?: DevAlg }): Promise<DevSigningKey>;
}

const TOKEN_PATH = '/token';

/** Builds a dev issuer (oidc-provider underneath) for the given issuer URL. */
export async function createDevIssuer(opts: DevIssuerOptions): Promise<DevIssuer> {
  const issuer = opts.issuer.replace(/\/+$/, '');
  let keys: DevSigningKey[] = opts.signingKeys?.length ? [...opts.signingKeys] : [await generateSigningKey(opts.alg ?? 'RS256')];
  const build = (): { provider: Provider; callback: (req: IncomingMessage, res: ServerResponse) => void } => {
    const provider = createDevProvider({
      issuer,
      clients: opts.clients,
      signingKeys: keys,
      ...(opts.accessTokenTtlSeconds !== undefined ? { accessTokenTtlSeconds: opts.accessTokenTtlSeconds } : {}),
    });
    observe(provider, opts.logger);
    return { provider, callback: provider.callback() as (req: IncomingMessage, res: ServerResponse) => void };
  };
  let current = build();
  await checkClients(current.provider, opts.clients);
  const clientsById = new Map(opts.clients.map((c) => [c.clientId, c]));
  // An issuer with a path (`http://dev-issuer:9000/realms/dev`, as Keycloak names them) is served under that path:
  // discovery is `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery §4), and it names the
  // endpoints under the path too.
  const mountPath = new URL(issuer).pathname.replace(/\/+$/, '');

  return {
    issuer,
    tokenEndpoint: `${issuer}${TOKEN_PATH}`,
    jwksUri: `${issuer}/jwks`,
    get signingKeys() {
      return keys;
    },
    handle(req, res) {
      if (mountPath && !unmount(req, mountPath)) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'invalid_request', error_description: `this issuer is served under ${mountPath}` }));
        return;
      }
      if ((req.url ?? '').split('?')[0] === GITHUB_ACTIONS_PATH) {
        const ttlSeconds = opts.accessTokenTtlSeconds ?? DEV_ACCESS_TOKEN_TTL_SECONDS;
        return handleGithubActionsRequest(req, res, { issuer, clients: clientsById, signingKey: keys[0]!, ttlSeconds, logger: opts.logger });
      }
      const { callback } = current;
      withNormalizedAudience(req, TOKEN_PATH).then(
        (normalized) => {
          if (normalized instanceof IncomingMessage) return callback(normalized, res);
          res.writeHead(normalized.status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(normalized.body));
        },
        () => res.destroy(),
      );
    },
    async rotateKeys(rotateOpts = {}) {
      const fresh = await generateSigningKey(rotateOpts.alg ?? keys[0]!.alg);
      keys = rotateOpts.keepOld === false ? [fresh] : [fresh, ...keys];
      // oidc-provider's keystore is fixed at construction: a rotation builds a new provider.
      // Client credentials JWTs need no server-side state, so nothing is lost.
      current = build();
      return fresh;
    },
  };
}

/**
 * Takes the issuer's path off a request under it, as a mounting framework does: oidc-provider routes on `url` and
 * puts back in the URLs it writes what `originalUrl` has in front of it. False for a request outside the path.
 */
function unmount(req: IncomingMessage, mountPath: string): boolean {
  const url = req.url ?? '/';
  if (url !== mountPath && !url.startsWith(`${mountPath}/`) && !url.startsWith(`${mountPath}?`)) return false;
  (req as IncomingMessage & { originalUrl?: string }).originalUrl = url;
  const rest = url.slice(mountPath.length);
  req.url = rest.startsWith('/') ? rest : `/${rest}`;
  return true;
}

/** oidc-provider checks client metadata on first use; do it now so a bad client fails the start, not a request. */
async function checkClients(provider: Provider, clients: readonly DevClient[]): Promise<void> {
  for (const c of clients) {
    try {
      await provider.Client.find(c.clientId);
    } catch (err) {
      const e = err as { error_description?: string; message?: string };
      throw new UsageError(`dev issuer client ${c.clientId}: ${e.error_description ?? e.message ?? String(err)}`);
    }
  }
}

function observe(provider: Provider, logger: Logger | undefined): void {
  if (!logger) return;
  provider.on('grant.success', (ctx) => {
    const params = ctx.oidc.params as Record<string, unknown> | undefined;
    logger.info({ event: 'dev_token_issued', client: ctx.oidc.client?.clientId, resource: params?.resource, scope: params?.scope }, 'token issued');
  });
  provider.on('grant.error', (ctx, err) => {
    const e = err as { error?: string; error_description?: string };
    logger.warn({ event: 'dev_token_refused', client: ctx.oidc.client?.clientId, error: e.error, description: e.error_description }, 'token refused');
  });
  provider.on('server_error', (_ctx, err) => {
    logger.error({ event: 'dev_issuer_error', error: (err as Error).message }, 'dev issuer internal error');
  });
}

/** A dev issuer listening on its own HTTP server. */
export interface RunningDevIssuer extends DevIssuer {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Starts a dev issuer on `host:port` (port 0 picks a free one). The issuer URL
 * defaults to `http://{host}:{port}`; pass `issuer` when clients reach it under
 * another name (a compose service name). Default host 127.0.0.1.
 */
export async function startDevIssuer(
  opts: Omit<DevIssuerOptions, 'issuer'> & { host?: string; port?: number; issuer?: string },
): Promise<RunningDevIssuer> {
  let target: DevIssuer | undefined;
  const server: Server = createServer((req, res) => {
    if (target) target.handle(req, res);
    else res.writeHead(503).end();
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const urlHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  try {
    target = await createDevIssuer({ ...opts, issuer: opts.issuer ?? `http://${urlHost}:${port}` });
  } catch (err) {
    server.close();
    throw err;
  }
  const issuerObj = target;
  return {
    get issuer() {
      return issuerObj.issuer;
    },
    get tokenEndpoint() {
      return issuerObj.tokenEndpoint;
    },
    get jwksUri() {
      return issuerObj.jwksUri;
    },
    get signingKeys() {
      return issuerObj.signingKeys;
    },
    handle: (req, res) => issuerObj.handle(req, res),
    rotateKeys: (o) => issuerObj.rotateKeys(o),
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
