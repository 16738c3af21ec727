import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import type { Component, ComponentDeps } from '../component.js';
import type { LimitsConfig, OutboundConfig } from '../config/schema.js';
import { TokenUnavailableError, UpstreamError } from '../errors.js';
import { forward } from '../proxy/forward.js';
import { sendError } from '../proxy/respond.js';
import { createUpstreamPools } from '../proxy/upstreams.js';
import { createConnectHandler } from './connect.js';
import { createRouter } from './router.js';
import type { Scheduler } from './scheduler.js';
import { createTokenBroker } from './token-broker.js';
import { createTokenCache } from './token-cache.js';

/** What createOutbound needs beyond every component's deps; all optional, for tests and embedders. */
export interface OutboundDeps extends ComponentDeps {
  /** Where env and github_actions sources read their variables; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Jitter source for renewals and backoff; default Math.random. */
  random?: () => number;
  scheduler?: Scheduler;
  /** Dispatcher for token requests instead of the sources' own agents. */
  idpDispatcher?: Dispatcher;
}

/**
 * The outbound half: route by host → token for the route's audience (cached)
 * → forward to the route's target with the token attached. A request that
 * cannot get a token goes nowhere (503); an unknown host is refused (403)
 * before any token is requested, unless `unknownHosts: passthrough`.
 */
export function createOutbound(config: OutboundConfig, limits: LimitsConfig, deps: OutboundDeps): Component {
  const { logger, metrics, clock } = deps;
  const broker = createTokenBroker(config, {
    clock,
    env: deps.env ?? process.env,
    ...(deps.idpDispatcher ? { dispatcher: deps.idpDispatcher } : {}),
  });
  const cache = createTokenCache({
    clock,
    logger,
    metrics,
    refreshMarginSeconds: config.refreshMarginSeconds,
    ...(deps.random ? { random: deps.random } : {}),
    ...(deps.scheduler ? { scheduler: deps.scheduler } : {}),
  });
  const router = createRouter(config.routes, config.unknownHosts);
  const pools = createUpstreamPools(limits);
  const connect = createConnectHandler({
    router,
    unknownHosts: config.unknownHosts,
    connectTimeoutMs: limits.upstreamConnectTimeoutSeconds * 1000,
    logger,
    metrics,
  });
  const tokenHeader = config.tokenHeader;
  // Host is re-derived from the target by the dispatcher (virtual-hosted peers and TLS need their own name);
  // the app's value travels in X-Forwarded-Host. Proxy-Authorization is for us, never for the peer.
  const dropWithToken = new Set(['host', 'proxy-authorization', tokenHeader]);
  const dropPassthrough = new Set(['host', 'proxy-authorization']);

  const record = (route: string, status: string, started: number) => {
    metrics.outboundRequests.inc({ route, status });
    metrics.requestDuration.observe({ direction: 'outbound' }, (performance.now() - started) / 1000);
  };

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = performance.now();
    const r = router.resolve(req.url ?? '/', req.headers.host);
    if (r.kind === 'reject') {
      record('none', r.reason, started);
      return sendError(res, r.status, r.reason, r.message);
    }
    const label = r.kind === 'route' ? r.route.host : 'passthrough';
    const addHeaders: string[] = [];
    if (r.kind === 'route') {
      try {
        // With `authorization` this replaces the app's own header; any other name keeps it (end-user token beside ours).
        addHeaders.push(tokenHeader, `Bearer ${await cache.get(broker.forRoute(r.route))}`);
      } catch (err) {
        const e = err instanceof TokenUnavailableError ? err : new TokenUnavailableError('no token available', undefined, { cause: err });
        record(label, e.code, started);
        return sendTokenUnavailable(res, e);
      }
    }
    try {
      await forward(req, res, {
        dispatcher: pools.get(r.target.origin, r.target.caFile),
        path: r.path,
        dropHeaders: r.kind === 'route' ? dropWithToken : dropPassthrough,
        addHeaders,
        onResponse: (status) => record(label, String(status), started),
      });
    } catch (err) {
      const e = err instanceof UpstreamError ? err : new UpstreamError('upstream_reset', 'upstream connection failed', { cause: err });
      metrics.upstreamErrors.inc({ direction: 'outbound', reason: e.code });
      record(label, e.code, started);
      logger.warn({ event: 'upstream_error', route: label, reason: e.code, target: r.target.origin }, e.message);
      sendError(res, e.status, e.code, e.message);
    }
  };

  return {
    handle(req, res) {
      serve(req, res).catch((err: unknown) => {
        logger.error({ event: 'internal_error', error: err instanceof Error ? err.message : String(err) }, 'outbound request failed');
        sendError(res, 500, 'internal_error', 'internal error');
      });
    },
    connect: (req, socket, head) => connect.handle(req, socket, head),
    async start() {
      await Promise.all(broker.routeBindings().map((b) => cache.prefetch(b)));
    },
    isReady: () => broker.routeBindings().every((b) => cache.hasValid(b.key)),
    async close() {
      cache.close();
      connect.close();
      await pools.close();
      await broker.close();
    },
  };
}

/** 503 with the reason and, when the IdP sent one, its OAuth error code (RFC 6749 §5.2) for the app's logs. */
function sendTokenUnavailable(res: ServerResponse, err: TokenUnavailableError): void {
  if (res.headersSent) return void res.destroy();
  const body = JSON.stringify({
    error: err.message,
    reason: err.code,
    ...(err.oauthError ? { oauth_error: err.oauthError } : {}),
  });
  res.writeHead(503, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}
