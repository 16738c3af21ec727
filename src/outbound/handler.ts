import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { initUpstreamErrors } from '../admin/metrics.js';
import { markStarted, refusalStartedAt } from '../proxy/request-start.js';
import { waitingLine, type Component, type ComponentDeps } from '../component.js';
import type { Clock } from '../clock.js';
import type { LimitsConfig, OutboundConfig } from '../config/schema.js';
import { TokenUnavailableError, UpstreamError } from '../errors.js';
import { capped, loggedPath, MAX_ERROR_TEXT, MAX_LOGGED_HOST } from '../log.js';
import { forward, NO_HEADERS } from '../proxy/forward.js';
import { isWebSocketHandshake } from '../proxy/headers.js';
import type { AdmitTunnel, RefusedRequest } from '../proxy/listen.js';
import { refusedAfterHandOff } from '../proxy/limits.js';
import { sendError, writeRawError } from '../proxy/respond.js';
import { logIdleTunnel, refuseUpgrade, tunnel, UPGRADE_NOT_SUPPORTED } from '../proxy/tunnel.js';
import { createOwnConnections } from '../proxy/own-connections.js';
import { createUpstreamPools } from '../proxy/upstreams.js';
import { createConnectHandler } from './connect.js';
import { createRouter, type Resolution } from './router.js';
import type { Scheduler } from '../scheduler.js';
import { createTokenBroker } from './token-broker.js';
import { createTokenCache } from './token-cache.js';
import { peerAddress } from '../proxy/peer-address.js';

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
    ...(deps.handover?.tokens ? { handover: deps.handover.tokens } : {}),
    ...(deps.random ? { random: deps.random } : {}),
    ...(deps.scheduler ? { scheduler: deps.scheduler } : {}),
  });
  const router = createRouter(config.routes, config.unknownHosts);
  initUpstreamErrors(metrics, 'outbound');
  const own = createOwnConnections();
  const pools = createUpstreamPools(limits, { own });
  const connect = createConnectHandler({
    router,
    unknownHosts: config.unknownHosts,
    connectTimeoutMs: limits.upstreamConnectTimeoutSeconds * 1000,
    graceMs: limits.upstreamTimeoutSeconds * 1000,
    idleTimeoutMs: limits.tunnelIdleTimeoutSeconds * 1000,
    own,
    logger,
    metrics,
    observe: (started) => duration.observe((performance.now() - started) / 1000),
    rejected: (req, route, refusal, host) => rejected(req, route, refusal, performance.now(), host),
  });
  const tokenHeader = config.tokenHeader;
  // Host is re-derived from the target by the dispatcher (virtual-hosted peers and TLS need their own name);
  // the app's value travels in X-Forwarded-Host. Proxy-Authorization is for us, never for the peer.
  const dropWithToken = new Set(['host', 'proxy-authorization', tokenHeader]);
  const dropPassthrough = new Set(['host', 'proxy-authorization']);

  // Set once a drain deadline passes: a call that ends unanswered from then on was cut by the sidecar, not the app.
  let isDrainExpired = false;
  const unanswered = () => (isDrainExpired ? DRAIN_TIMEOUT : CLIENT_CLOSED);
  const duration = metrics.requestDuration.labels({ direction: 'outbound' });
  /** Counts a call, and times it from `started` (undefined: not timed, see refusalStartedAt). */
  const record = (route: string, status: string, started: number | undefined) => {
    metrics.outboundRequests.inc({ route, status });
    if (started !== undefined) duration.observe((performance.now() - started) / 1000);
  };
  // Every refusal is counted and logged, not only counted: an app calling a host it has no route for is what a
  // compromised dependency reaching for its own server looks like, and the line names the host and the path (as the
  // inbound side's lines do, with the query and any credential taken out). The host (and the message quoting it)
  // can be as long as the header block allows, so both are capped.
  const rejected = (req: RefusedRequest, route: string, refusal: { reason: string; message: string }, started: number | undefined, host?: string) => {
    logger.warn(
      {
        event: 'request_rejected',
        route,
        reason: refusal.reason,
        host: host === undefined ? undefined : capped(host, MAX_LOGGED_HOST),
        path: req.url === undefined ? undefined : loggedPath(req.url),
        method: req.method?.slice(0, 16),
        peer: peerAddress(req.socket),
        detail: capped(refusal.message, MAX_ERROR_TEXT),
      },
      'request_rejected',
    );
    record(route, refusal.reason, started);
  };

  // The token header pair per binding, rebuilt only when the token changes: no `Bearer …` string per request.
  const tokenHeaderCache = new Map<string, { token: string; headers: readonly string[] }>();
  const tokenHeadersFor = (key: string, token: string): readonly string[] => {
    const cached = tokenHeaderCache.get(key);
    if (cached?.token === token) return cached.headers;
    // With `authorization` this replaces the app's own header; any other name keeps it (end-user token beside ours).
    const headers = [tokenHeader, `Bearer ${token}`];
    tokenHeaderCache.set(key, { token, headers });
    return headers;
  };
  const asTokenError = (err: unknown) => (err instanceof TokenUnavailableError ? err : new TokenUnavailableError('no token available', undefined, { cause: err }));
  const asUpstreamError = (err: unknown) => (err instanceof UpstreamError ? err : new UpstreamError('upstream_reset', 'upstream connection failed', { cause: err }));
  const upstreamFailed = (label: string, target: string, e: UpstreamError, started: number) => {
    metrics.upstreamErrors.inc({ direction: 'outbound', reason: e.code });
    record(label, e.code, started);
    // A passthrough target is the host the app named, as long as the header block allows: cut like every such host.
    logger.warn({ event: 'upstream_error', route: label, reason: e.code, target: capped(target, MAX_LOGGED_HOST) }, e.message);
  };

  // The route of an upgrade taking a tunnel slot: a listener with none left answers 503 too_many_tunnels and reports it
  // through `refused`, synchronously inside admit(), where it is counted under that route like the upgrade's other
  // refusals rather than as route="none".
  let admittingRoute: string | undefined;
  const admitUnder = (route: string, admit: AdmitTunnel): boolean => {
    admittingRoute = route;
    try {
      return admit();
    } finally {
      admittingRoute = undefined;
    }
  };

  /**
   * Route and token for a request, shared by plain requests and upgrades; a refusal says what to answer.
   * Synchronous when the route's token is cached (nearly every request), a promise only while one is fetched.
   * An upgrade passes `admit`, called once the route is known and before any token work.
   */
  const prepare = (req: IncomingMessage, started: number, admit?: AdmitTunnel): Prepared | Promise<Prepared> => {
    const r0 = router.resolve(req.url ?? '/', req.headers.host);
    const r = r0.kind === 'reject' && r0.reason === 'no_route' && namesThisListener(req) ? { ...r0, message: `${r0.message}: ${HOST_IS_LISTENER}` } : r0;
    if (r.kind === 'reject') {
      rejected(req, 'none', r, started, r.host);
      return { ok: false, status: r.status, reason: r.reason, message: r.message };
    }
    if (admit && !admitUnder(r.kind === 'route' ? r.route.host : 'passthrough', admit)) return NOT_ADMITTED;
    if (r.kind !== 'route') return { ok: true, r, label: 'passthrough', addHeaders: NO_HEADERS, dropHeaders: dropPassthrough };
    const label = r.route.host;
    const binding = broker.forRoute(r.route);
    const routed = (token: string): Prepared => ({ ok: true, r, label, addHeaders: tokenHeadersFor(binding.key, token), dropHeaders: dropWithToken });
    const cached = cache.peek(binding);
    if (cached !== undefined) return routed(cached);
    // A call that waited for its token past the drain deadline of the config it came under (a reload replaced it) finds
    // that config's connections closed: the sidecar's own cut, answered and counted as one, for a plain call and a
    // WebSocket handshake alike. The peer was never asked, so no upstream error is logged or counted against it. (An
    // app that hung up meanwhile is left to send's and serveUpgrade's own check, as before.) Only here: a call whose
    // token was cached is dispatched before its component can retire.
    const routedUnlessRetired = (token: string): Prepared => {
      if (!pools.closed || req.socket.destroyed) return routed(token);
      if (!refusedAfterHandOff(req)) rejected(req, label, CUT_WAITING_FOR_TOKEN, started);
      return { ok: false, status: 503, ...CUT_WAITING_FOR_TOKEN };
    };
    return cache.get(binding).then(routedUnlessRetired, (err: unknown) => {
      const e = asTokenError(err);
      // Each call refused for want of a token is logged as well as the failed fetch behind it (token_fetch_failed),
      // which comes once per attempt while these come once per call: the count shows what the outage cost. A request
      // the listener refused while it waited (its body broke) was answered, counted and logged then: not a second time.
      if (!refusedAfterHandOff(req)) rejected(req, label, { reason: e.code, message: e.message }, started);
      return { ok: false, status: 503, reason: e.code, message: e.message, tokenError: e };
    });
  };

  const internalError = (res: ServerResponse, err: unknown) => {
    logger.error({ event: 'internal_error', error: err instanceof Error ? err.message : String(err) }, 'outbound request failed');
    sendError(res, 500, 'internal_error', 'internal error');
  };

  const failedUpstream = (res: ServerResponse, p: { r: Routed; label: string }, started: number, err: unknown) => {
    try {
      const e = asUpstreamError(err);
      upstreamFailed(p.label, p.r.target.origin, e, started);
      sendError(res, e.status, e.code, e.message);
    } catch (inner) {
      internalError(res, inner);
    }
  };

  /** A request's route label (as in the metrics) and target, looked up again on the rare paths that need them. */
  const routeOf = (req: IncomingMessage): { route: string; target?: string } => {
    const r = router.resolve(req.url ?? '/', req.headers.host);
    return r.kind === 'reject' ? { route: 'none' } : { route: r.kind === 'route' ? r.route.host : 'passthrough', target: capped(r.target.origin, MAX_LOGGED_HOST) };
  };

  // The request was recorded with its status when the headers came; a body that broke after them is counted as an
  // upstream error. Rare, so the route is looked up again rather than carried by a closure per request.
  const brokenResponse = (e: UpstreamError, req: IncomingMessage) => {
    metrics.upstreamErrors.inc({ direction: 'outbound', reason: e.code });
    logger.warn({ event: 'upstream_error', ...routeOf(req), reason: e.code, afterHeaders: true }, e.message);
  };

  const send = (req: IncomingMessage, res: ServerResponse, p: Prepared, started: number): void => {
    if (!p.ok) return p.tokenError ? sendTokenUnavailable(res, p.tokenError, clock) : sendError(res, p.status, p.reason, p.message);
    // The app hung up while its token was fetched: nobody is left to answer, so the peer is not called.
    if (req.socket.destroyed) return record(p.label, unanswered(), started);
    let dispatcher: Dispatcher;
    try {
      dispatcher = pools.get(p.r.target.origin, p.r.target.ca);
    } catch (err) {
      return failedUpstream(res, p, started, err);
    }
    let answered = false;
    forward(req, res, {
      dispatcher,
      path: p.r.path,
      dropHeaders: p.dropHeaders,
      addHeaders: p.addHeaders,
      // The authority routed to (the absolute-form URL's, else Host's), not a Host the request also carried.
      forwardedHost: p.r.authority,
      onResponse: (status) => {
        answered = true;
        record(p.label, String(status), started);
      },
      onBrokenResponse: brokenResponse,
    }).then(
      // Over with no answer from the peer: the app went away first (its request was cancelled), or the listener refused
      // the request when its body broke (counted there).
      () => answered || refusedAfterHandOff(req) || record(p.label, unanswered(), started),
      (err: unknown) => failedUpstream(res, p, started, err),
    );
  };

  /** Plain requests: no promise chain before the upstream dispatch when the token is cached. */
  const serve = (req: IncomingMessage, res: ServerResponse): void => {
    const started = markStarted(req);
    const p = prepare(req, started);
    // A request the listener refused while its token was fetched (its body broke) has had its answer and its count,
    // even if its socket is not closed yet: it is not sent on when the token comes.
    if (p instanceof Promise) p.then((ready) => refusedAfterHandOff(req) || send(req, res, ready, started)).catch((err: unknown) => internalError(res, err));
    else send(req, res, p, started);
  };

  /**
   * WebSocket upgrades: same routing and token as plain requests, then a byte tunnel. Any other protocol gets
   * 400 upgrade_not_supported before a token is fetched. The token goes on the handshake only: after an h2c
   * switch the app's further requests would travel with no token of ours (why CONNECT is refused for routed
   * hosts too), and a peer's inbound sidecar refuses such upgrades anyway. Passthrough hosts follow the same
   * rule, so the listener has one; CONNECT is their opaque tunnel.
   */
  const serveUpgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel): Promise<void> => {
    const started = markStarted(req);
    if (!isWebSocketHandshake(req)) {
      rejected(req, routeOf(req).route, UPGRADE_NOT_SUPPORTED, started);
      return refuseUpgrade(socket);
    }
    const p = await prepare(req, started, admit);
    if (!p.ok) return p.answered ? undefined : p.tokenError ? writeTokenUnavailable(socket, p.tokenError, clock) : writeRawError(socket, p.status, p.reason, p.message);
    // The app's socket already failed while its token was fetched: nobody is left to talk to. (A socket handed over for
    // an upgrade is unread, so an app that merely closed is noticed once tunnel() starts reading it, at once.)
    if (socket.destroyed) return record(p.label, unanswered(), started);
    try {
      const ca = p.r.target.ca?.pem;
      const status = await tunnel(req, socket, head, {
        target: new URL(p.r.target.origin),
        path: p.r.path,
        dropHeaders: p.dropHeaders,
        addHeaders: p.addHeaders,
        forwardedHost: p.r.authority,
        timeoutMs: limits.upstreamTimeoutSeconds * 1000,
        connectTimeoutMs: limits.upstreamConnectTimeoutSeconds * 1000,
        idleTimeoutMs: limits.tunnelIdleTimeoutSeconds * 1000,
        onIdle: () => logIdleTunnel(logger, limits.tunnelIdleTimeoutSeconds * 1000, { route: p.label, target: capped(p.r.target.origin, MAX_LOGGED_HOST), peer: peerAddress(req.socket) }),
        own,
        ...(ca ? { ca } : {}),
      });
      // 0: the app went away before the peer answered, counted as a plain request it gave up is.
      record(p.label, status === 0 ? unanswered() : String(status), started);
    } catch (err) {
      const e = asUpstreamError(err);
      upstreamFailed(p.label, p.r.target.origin, e, started);
      writeRawError(socket, e.status, e.code, e.message);
    }
  };

  return {
    handle(req, res) {
      try {
        serve(req, res);
      } catch (err) {
        internalError(res, err);
      }
    },
    upgrade(req, socket, head, admit) {
      serveUpgrade(req, socket, head, admit).catch((err: unknown) => {
        logger.error({ event: 'internal_error', error: err instanceof Error ? err.message : String(err) }, 'outbound upgrade failed');
        writeRawError(socket, 500, 'internal_error', 'internal error');
      });
    },
    // Refused by the listener: counted and logged like the router's own refusals. Most come before routing, under route
    // "none". A request whose body broke after it was handed on (refusedAfterHandOff) is counted here too, its only
    // count, under the route it was for (looked up again: rare, and not worth a field per request). An upgrade refused
    // for want of a tunnel slot is counted under its route, see admitUnder.
    refused: (req, refusal) =>
      rejected(req, admittingRoute ?? (refusedAfterHandOff(req) ? routeOf(req as IncomingMessage).route : 'none'), refusal, refusalStartedAt(req, refusal)),
    isOwnConnection: own.isOwn,
    connect: (req, socket, head, admit) => connect.handle(req, socket, head, admit),
    async start() {
      await Promise.all(broker.routeBindings().map((b) => cache.prefetch(b)));
    },
    waitingFor: () =>
      broker
        .routeBindings()
        .filter((b) => !cache.hasValid(b.key))
        .map((b) => waitingLine(`outbound: a token for audience ${b.audience}`, cache.lastError(b.key))),
    handover: () => ({ tokens: cache.snapshot() }),
    drainExpired() {
      isDrainExpired = true;
    },
    async close() {
      cache.close();
      await pools.close();
      // A token request a reload handed to the new config runs on this config's source, and closing the source would
      // cut it: the sources close once it has settled (within tokenRequestTimeoutSeconds) or the new config has let go
      // of it by closing too. Not awaited: a drain (retire, shutdown) does not wait for a token request.
      const handedOver = cache.handedOverFetches();
      if (handedOver.length === 0) return broker.close();
      void Promise.allSettled(handedOver)
        .then(() => broker.close())
        .catch((err: unknown) => logger.error({ event: 'internal_error', error: err instanceof Error ? err.message : String(err) }, 'closing the token sources failed'));
    },
  };
}

type Routed = Exclude<Resolution, { kind: 'reject' }>;

/**
 * The status a call is counted under when the app went away before the peer answered (nginx's 499): cancelled, not
 * refused, so it is counted but not logged, and every call the app made is in oidc_sidecar_outbound_requests_total.
 */
const CLIENT_CLOSED = 'client_closed';

/**
 * The status of a call the sidecar itself cut at a drain deadline (shutdown, or the listener a reload retired), the
 * same word as the `drain_timeout` log line that announces the cut: the app did not give up on it.
 */
const DRAIN_TIMEOUT = 'drain_timeout';

/**
 * What an app that sent its call to the listener's own address without naming the peer is told: Node's `fetch` drops
 * a `Host` header it is given, so its calls arrive as `Host: 127.0.0.1:15001`.
 */
const HOST_IS_LISTENER =
  'the Host header names this listener, not the peer; name the peer in Host (Host: payments) or use the sidecar as an HTTP proxy (curl -x, or an undici ProxyAgent as fetch\'s dispatcher: fetch drops a Host header it is given)';

/**
 * Whether an origin-form request's Host is this listener's own address, as an app that did not name the peer sends it:
 * an IP address or `localhost`, at the listener's port. A name at that port (`orders:15001`) is a peer's, not ours.
 */
function namesThisListener(req: IncomingMessage): boolean {
  if (!req.url?.startsWith('/')) return false;
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(req.headers.host ?? '');
  return m !== null && Number(m[2]) === req.socket.localPort && (isIP(m[1]!) !== 0 || m[1]!.toLowerCase() === 'localhost');
}

/** A call that waited for its token past its config's drain deadline (see prepare). */
const CUT_WAITING_FOR_TOKEN = {
  reason: DRAIN_TIMEOUT,
  message: 'this call waited for its token past drainTimeoutSeconds after a reload retired the config it came under; send it again',
};

type Prepared =
  | { ok: true; r: Routed; label: string; addHeaders: readonly string[]; dropHeaders: ReadonlySet<string> }
  | { ok: false; status: number; reason: string; message: string; tokenError?: TokenUnavailableError; answered?: true };

/** An upgrade over limits.maxTunnels: the listener has answered it (503 too_many_tunnels), counted and logged. */
const NOT_ADMITTED: Prepared = { ok: false, status: 503, reason: 'too_many_tunnels', message: '', answered: true };

/** 503 with the reason and, when the IdP sent one, its OAuth error code (RFC 6749 §5.2) for the app's logs. */
function sendTokenUnavailable(res: ServerResponse, err: TokenUnavailableError, clock: Clock): void {
  sendError(res, 503, err.code, err.message, retryAfter(err, clock), oauthBody(err));
}

/** The same answer on a socket that asked for an upgrade. */
function writeTokenUnavailable(socket: Duplex, err: TokenUnavailableError, clock: Clock): void {
  writeRawError(socket, 503, err.code, err.message, retryAfter(err, clock), oauthBody(err));
}

/**
 * When the app may try again (RFC 9110 §10.2.3): the seconds until the token cache asks the IdP next, which is no
 * sooner than the IdP's own Retry-After; 1 when no retry is scheduled (as the inbound side's 503 says). An app that
 * retries at once would only be refused again, each refusal an audit line.
 */
function retryAfter(err: TokenUnavailableError, clock: Clock): Record<string, string> {
  const seconds = err.retryAt === undefined ? 1 : Math.max(1, Math.ceil((err.retryAt - clock.monotonic()) / 1000));
  return { 'retry-after': String(seconds) };
}

function oauthBody(err: TokenUnavailableError): Record<string, string> {
  return err.oauthError ? { oauth_error: err.oauthError } : {};
}
