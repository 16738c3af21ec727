import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { initUpstreamErrors } from '../admin/metrics.js';
import { waitingLine, type Component, type ComponentDeps } from '../component.js';
import type { InboundConfig, LimitsConfig } from '../config/schema.js';
import { SidecarError, type UpstreamError } from '../errors.js';
import { loggedPath } from '../log.js';
import { forward, NO_HEADERS } from '../proxy/forward.js';
import { hasRequestBody } from '../proxy/headers.js';
import { refusedAfterHandOff } from '../proxy/limits.js';
import { markStarted, refusalStartedAt } from '../proxy/request-start.js';
import { sendError } from '../proxy/respond.js';
import type { Refusal, RefusedRequest } from '../proxy/listen.js';
import { createOwnConnections } from '../proxy/own-connections.js';
import { createUpstreamPools } from '../proxy/upstreams.js';
import { createAuthenticator } from './authenticator.js';
import { createAuthorizer, type Authorizer, type Decision, type InboundRequest, type InboundRule } from './authorizer.js';
import { createExtractor } from './extractor.js';
import { createIdentityBuilder, identityBytes, identityHeaderNames, type Identity } from './identity.js';
import { createKeyStore, type KeyStore } from './key-store.js';
import type { Scheduler } from '../scheduler.js';
import { createMatcher } from './matcher.js';
import { compilePolicy } from './policy.js';
import { rejectionResponse } from './rejection.js';
import { createInboundUpgrade } from './upgrade.js';
import { createVerifyCache } from './verify-cache.js';
import { peerAddress } from '../proxy/peer-address.js';

/** The inbound component plus its decision logic, for callers that answer on something other than a ServerResponse (WebSocket upgrades). */
export interface InboundComponent extends Component {
  /** The decision for a request, counted and audited; the caller writes the answer (see rejectionResponse). */
  authorize(req: IncomingMessage): Promise<Decision>;
  /** Lower-case headers removed from every forwarded request: identity headers (anti-spoofing) and the token unless keepToken. */
  readonly dropHeaders: ReadonlySet<string>;
  /** The path prefix of `inbound.target` ('' for none), to put before a decision's `target`. */
  readonly targetPrefix: string;
}

export interface InboundParts {
  keyStore: KeyStore;
  authorizer: Authorizer;
}

/** Builds everything but the forwarding: shared by the component and the `verify` command. */
export function createInboundParts(config: InboundConfig, deps: ComponentDeps & { scheduler?: Scheduler }): InboundParts {
  const keyStore = createKeyStore(config.issuers, config.jwks, {
    logger: deps.logger,
    metrics: deps.metrics,
    clock: deps.clock,
    ...(deps.scheduler ? { scheduler: deps.scheduler } : {}),
    ...(deps.handover?.keys ? { handover: deps.handover.keys } : {}),
  });
  const authenticator = createAuthenticator(config, {
    keyStore,
    cache: createVerifyCache<Identity>({ maxEntries: config.cache.maxEntries, maxBytes: config.cache.maxBytes, sizeOf: identityBytes, clock: deps.clock, metrics: deps.metrics }),
    clock: deps.clock,
    buildIdentity: createIdentityBuilder(config.forward),
  });
  const rules: InboundRule[] | undefined = config.rules?.map((r) => ({ ...r, ...(r.allow ? { policy: compilePolicy(r.allow) } : {}) }));
  const authorizer = createAuthorizer(config, {
    extractor: createExtractor({ header: config.tokenHeader, maxTokenBytes: config.maxTokenBytes }),
    authenticator,
    matcher: rules ? createMatcher(rules) : undefined,
    metrics: deps.metrics,
    logger: deps.logger,
  });
  return { keyStore, authorizer };
}

/** Adapts a Node request to what the decision needs. */
export function toInboundRequest(req: IncomingMessage): InboundRequest {
  return { method: req.method ?? 'GET', url: req.url ?? '/', rawHeaders: req.rawHeaders, peer: peerAddress(req.socket) };
}

/**
 * The inbound half: verify the caller, apply the rules, forward to the app
 * with verified identity headers, refuse everything else before it reaches
 * the app. Bodies stream (src/proxy/forward.ts).
 */
export function createInbound(config: InboundConfig, limits: LimitsConfig, deps: ComponentDeps): InboundComponent {
  const { keyStore, authorizer } = createInboundParts(config, deps);
  const { metrics, logger } = deps;
  const own = createOwnConnections();
  const pools = createUpstreamPools(limits, { own });
  const targetUrl = new URL(config.target);
  const dispatcher = pools.get(targetUrl.origin);
  const targetPrefix = targetUrl.pathname.replace(/\/+$/, '');
  const dropHeaders = identityHeaderNames(config.forward, config.tokenHeader, config.forwardedHeaders);
  // A public route decides without looking at the token, so a kept token there would reach the app unverified (a
  // forged one included) under the header that otherwise only ever carries a verified token: it is removed there.
  const publicDropHeaders = config.forward.keepToken ? identityHeaderNames({ ...config.forward, keepToken: false }, config.tokenHeader, config.forwardedHeaders) : dropHeaders;
  const duration = metrics.requestDuration.labels({ direction: 'inbound' });
  initUpstreamErrors(metrics, 'inbound');

  const observe = (started: number) => duration.observe((performance.now() - started) / 1000);
  const failed = (res: ServerResponse, err: unknown) => {
    logger.error({ event: 'inbound_failed', err: String(err) }, 'inbound_failed');
    sendError(res, 500, 'internal_error', 'internal error');
  };

  // The response headers already went to the caller, who sees a cut connection; the failure is still counted.
  const brokenResponse = (e: UpstreamError) => {
    metrics.upstreamErrors.inc({ direction: 'inbound', reason: e.code });
    logger.warn({ event: 'upstream_error', reason: e.code, detail: e.message, afterHeaders: true }, 'upstream_error');
  };

  const proceed = (req: IncomingMessage, res: ServerResponse, decision: Decision, started: number): void => {
    if (!decision.allowed) {
      // Refused by the listener while this decision was pending (its body broke): timed at that refusal.
      if (!refusedAfterHandOff(req)) observe(started);
      return reject(req, res, decision.error);
    }
    // The caller hung up while we were deciding: nobody is left to answer, so the app is not called.
    if (req.socket.destroyed) return;
    forward(req, res, {
      dispatcher,
      path: targetPrefix + decision.target,
      dropHeaders: decision.reason === 'public' ? publicDropHeaders : dropHeaders,
      addHeaders: decision.identity?.headers ?? NO_HEADERS,
      onResponse: () => observe(started),
      onBrokenResponse: brokenResponse,
    }).catch((err: unknown) => {
      try {
        observe(started);
        const e = err instanceof SidecarError ? err : new SidecarError('upstream_reset', 'upstream failed', 502);
        metrics.upstreamErrors.inc({ direction: 'inbound', reason: e.code });
        logger.warn({ event: 'upstream_error', reason: e.code, detail: e.message, method: req.method }, 'upstream_error');
        sendError(res, e.status, e.code, e.message);
      } catch (inner) {
        failed(res, inner);
      }
    });
  };

  // A cached token is decided synchronously, so the common request has no promise before the upstream dispatch.
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const started = markStarted(req);
    try {
      const decision = authorizer.decide(toInboundRequest(req));
      if (decision instanceof Promise) decision.then((d) => proceed(req, res, d, started)).catch((err: unknown) => failed(res, err));
      else proceed(req, res, decision, started);
    } catch (err) {
      failed(res, err);
    }
  };

  // Refused before any token check (by the listener, or an Upgrade that is not a WebSocket handshake): a reject like
  // bad_path, logged the same way. One refused by Node's parser has no method or path yet: the line says who sent it.
  // One whose body broke or stalled after it was handed on (refusedAfterHandOff) is counted by its decision: it is
  // logged and timed (from when the handler took it to this answer, see refusalStartedAt), not counted again
  // (inbound_requests_total is one per request).
  const refused = (req: RefusedRequest, refusal: Refusal) => {
    if (!refusedAfterHandOff(req)) metrics.inboundRequests.inc({ decision: 'reject', reason: refusal.reason });
    logger.warn(
      {
        event: 'request_rejected',
        reason: refusal.reason,
        // As the authorizer's refusals carry it (SPEC: rejections name the audience): which service refused.
        audience: config.audience,
        path: req.url === undefined ? undefined : loggedPath(req.url),
        method: req.method?.slice(0, 16),
        peer: peerAddress(req.socket),
        detail: refusal.message,
      },
      'request_rejected',
    );
    const started = refusalStartedAt(req, refusal);
    if (started !== undefined) observe(started);
  };

  const authorize = (req: IncomingMessage) => authorizer.authorize(toInboundRequest(req));
  // WebSocket / Upgrade: the same decision, then a tunnel (src/inbound/upgrade.ts, src/proxy/tunnel.ts).
  const upgrade = createInboundUpgrade({
    authorize,
    dropHeaders,
    publicDropHeaders,
    target: targetUrl,
    targetPrefix,
    timeoutMs: limits.upstreamTimeoutSeconds * 1000,
    connectTimeoutMs: limits.upstreamConnectTimeoutSeconds * 1000,
    idleTimeoutMs: limits.tunnelIdleTimeoutSeconds * 1000,
    own,
    refused,
    metrics,
    logger,
  });

  return {
    handle,
    refused,
    isOwnConnection: own.isOwn,
    upgrade,
    authorize,
    dropHeaders,
    targetPrefix,
    start: () => keyStore.start(),
    waitingFor: () => keyStore.issuers.filter((k) => !k.isUsable()).map((k) => waitingLine(`inbound: keys for ${k.issuer}`, k.lastError)),
    handover: () => ({ keys: keyStore.snapshot() }),
    async close() {
      await keyStore.close();
      await pools.close();
    },
  };
}

function reject(req: IncomingMessage, res: ServerResponse, error: SidecarError): void {
  const r = rejectionResponse(error);
  // An unread request body would otherwise be drained off the socket to keep it alive; a refused caller gets no such service.
  if (hasRequestBody(req) && !req.complete) r.headers.connection = 'close';
  if (res.headersSent) return void res.destroy();
  res.writeHead(r.status, r.headers);
  res.end(r.body);
}

