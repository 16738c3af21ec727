import type { IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Metrics } from '../admin/metrics.js';
import { UpstreamError } from '../errors.js';
import { loggedPath, type Logger } from '../log.js';
import { isWebSocketHandshake } from '../proxy/headers.js';
import type { Refusal, RefusedRequest, SocketHandler } from '../proxy/listen.js';
import type { OwnConnections } from '../proxy/own-connections.js';
import { writeRawError, writeRawResponse } from '../proxy/respond.js';
import { logIdleTunnel, refuseUpgrade, tunnel, UPGRADE_NOT_SUPPORTED } from '../proxy/tunnel.js';
import type { Decision } from './authorizer.js';
import { rejectionResponse } from './rejection.js';
import { peerAddress } from '../proxy/peer-address.js';

export interface InboundUpgradeDeps {
  /** The same decision as for any inbound request (counted and audited there). */
  authorize(req: IncomingMessage): Promise<Decision>;
  /** Identity headers and the token (unless keepToken): removed before the app, as for plain requests. */
  dropHeaders: ReadonlySet<string>;
  /** What a public route's handshake loses: the same plus the token header even with keepToken (it was never verified). */
  publicDropHeaders: ReadonlySet<string>;
  /** `inbound.target` as a URL; its path is the prefix before a decision's target. */
  target: URL;
  targetPrefix: string;
  /** How long the app may take to accept the upgrade, milliseconds. */
  timeoutMs: number;
  /** How long the connect to the app may take, milliseconds. */
  connectTimeoutMs: number;
  /** An open tunnel with no bytes either way for this long is cut, milliseconds; 0: no limit. */
  idleTimeoutMs: number;
  /** Where the tunnel's upstream connection is recorded (a loop back to this listener is refused there). */
  own: OwnConnections;
  /** Counts and logs a request refused before any token check, as the component does the listener's refusals. */
  refused(req: RefusedRequest, refusal: Refusal): void;
  metrics: Metrics;
  logger: Logger;
}

/**
 * `Upgrade` requests (WebSocket) on the inbound listener: verified exactly
 * like any other request, then tunnelled to the app with the verified
 * identity headers. A refused caller gets the same 401/403/503 answer as a
 * plain request, written on the raw socket, and nothing reaches the app.
 *
 * Only WebSocket is tunnelled; any other protocol is refused first with 400
 * `upgrade_not_supported` (counted as a reject, logged as request_rejected).
 * The decision covers one request, and a WebSocket tunnel carries frames to
 * the endpoint that request was allowed on. `h2c` (or any protocol that
 * speaks HTTP again) would carry further requests for any path, which the
 * sidecar never sees: the token check and the rules would be bypassed (h2c
 * smuggling).
 */
export function createInboundUpgrade(deps: InboundUpgradeDeps): SocketHandler {
  const duration = deps.metrics.requestDuration.labels({ direction: 'inbound' });
  return (req, socket, head, admit) => {
    const started = performance.now();
    const observe = () => duration.observe((performance.now() - started) / 1000);
    if (!isWebSocketHandshake(req)) {
      deps.refused(req, UPGRADE_NOT_SUPPORTED);
      return refuseUpgrade(socket);
    }
    // A slot before the token is checked: a flood of handshakes over the cap costs no verification.
    if (!admit()) return;
    deps
      .authorize(req)
      .then(async (decision) => {
        if (socket.destroyed) return;
        if (!decision.allowed) {
          observe();
          const r = rejectionResponse(decision.error);
          return writeRawResponse(socket, r.status, r.headers, r.body);
        }
        try {
          await tunnel(req, socket, head, {
            target: deps.target,
            path: deps.targetPrefix + decision.target,
            dropHeaders: decision.reason === 'public' ? deps.publicDropHeaders : deps.dropHeaders,
            addHeaders: decision.identity?.headers ?? [],
            timeoutMs: deps.timeoutMs,
            connectTimeoutMs: deps.connectTimeoutMs,
            idleTimeoutMs: deps.idleTimeoutMs,
            onIdle: () => logIdleTunnel(deps.logger, deps.idleTimeoutMs, { path: loggedPath(req.url ?? '/'), peer: peerAddress(req.socket) }),
            own: deps.own,
          });
          observe();
        } catch (err) {
          observe();
          const e = err instanceof UpstreamError ? err : new UpstreamError('upstream_reset', 'upstream failed');
          deps.metrics.upstreamErrors.inc({ direction: 'inbound', reason: e.code });
          deps.logger.warn({ event: 'upstream_error', reason: e.code, detail: e.message, method: req.method, upgrade: true }, 'upstream_error');
          writeRawError(socket, e.status, e.code, e.message);
        }
      })
      .catch((err: unknown) => {
        deps.logger.error({ event: 'inbound_failed', err: String(err), upgrade: true }, 'inbound_failed');
        writeRawError(socket, 500, 'internal_error', 'internal error');
      });
  };
}
