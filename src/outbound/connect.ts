import { connect as netConnect } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Metrics } from '../admin/metrics.js';
import { RouteNotFoundError } from '../errors.js';
import { capped, MAX_LOGGED_HOST, type Logger } from '../log.js';
import type { AdmitTunnel, Refusal } from '../proxy/listen.js';
import type { OwnConnections } from '../proxy/own-connections.js';
import { ALLOW_PLAIN_METHODS, writeRawError } from '../proxy/respond.js';
import { logIdleTunnel, splice } from '../proxy/tunnel.js';
import type { Router } from './router.js';
import { peerAddress } from '../proxy/peer-address.js';

/**
 * A tunnel lives until one side ends it, plus the grace for the other to finish: a reload retires the component that
 * opened it but leaves the tunnel open, as it does WebSocket tunnels, and shutdown cuts its client socket with the
 * listener's other tunnels once the drain runs out (both sides, see cutTunnel). The listener caps how many are open
 * (`limits.maxTunnels`) and splice() closes an idle one (`limits.tunnelIdleTimeoutSeconds`).
 */
export interface ConnectHandler {
  handle(req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel): void;
}

/**
 * CONNECT (RFC 9110 §9.3.6) opens an opaque tunnel, usually for TLS, so the
 * sidecar could never add a token inside it. For a routed host that would
 * silently send the call without identity; it is refused with 405 telling
 * the app to send plain http:// through the proxy. With `unknownHosts:
 * passthrough` an unrouted host gets a plain TCP tunnel (no token, as for
 * any passthrough); with `deny` it gets 403 no_route, as a plain call to it does.
 */
export function createConnectHandler(opts: {
  router: Router;
  unknownHosts: 'deny' | 'passthrough';
  connectTimeoutMs: number;
  /** How long a tunnel may linger once one side has ended it (the upstream timeout, as for WebSocket tunnels). */
  graceMs: number;
  /** An open tunnel with no bytes either way for this long is cut, milliseconds; 0: no limit. */
  idleTimeoutMs: number;
  /** Where each tunnel's upstream connection is recorded: a CONNECT to the sidecar's own listener is then a loop (508). */
  own: OwnConnections;
  logger: Logger;
  metrics: Metrics;
  /** Records the time from the CONNECT to the tunnel being up, or to its failure, in the request duration histogram. */
  observe(started: number): void;
  /** Counts and logs a refused CONNECT, as the outbound component does every refusal. */
  rejected(req: IncomingMessage, route: string, refusal: Refusal, host?: string): void;
}): ConnectHandler {
  const count = (route: string, status: string) => opts.metrics.outboundRequests.inc({ route, status });
  const refuse = (req: IncomingMessage, socket: Duplex, route: string, refusal: Refusal, host?: string) => {
    opts.rejected(req, route, refusal, host);
    writeRawError(socket, refusal.status, refusal.reason, refusal.message, refusal.status === 405 ? ALLOW_PLAIN_METHODS : {});
  };
  return {
    handle(req, socket, head, admit) {
      socket.on('error', () => socket.destroy());
      const { route, authority } = opts.router.resolveConnect(req.url ?? '');
      if (!authority) return refuse(req, socket, 'none', { status: 400, reason: 'bad_request', message: 'CONNECT needs an authority-form target (host:port)' });
      if (route) {
        return refuse(req, socket, route.host, {
          status: 405,
          reason: 'connect_not_supported',
          message: `CONNECT tunnels cannot carry a token: send plain http:// requests for ${route.host} through the sidecar (HTTP proxy without tunnelling, or origin-form with a Host header)`,
        });
      }
      // No route is what refuses it, as it refuses a plain call to the same host (SPEC: no route → 403); with
      // passthrough the same CONNECT would be tunnelled, so 405 ("CONNECT is not supported") would be untrue.
      if (opts.unknownHosts !== 'passthrough') {
        const named = `${authority.host}:${authority.port}`;
        const e = new RouteNotFoundError(named);
        return refuse(req, socket, 'none', { status: e.status, reason: e.code, message: e.message }, named);
      }
      // Only a tunnel that would open takes a slot: the refusals above answer for good, whatever the count.
      if (!admit()) return;
      const host = authority.host.replace(/^\[|\]$/g, '');
      // allowHalfOpen: a peer that has said all it will (FIN) may still read. Without it Node ends this socket's write
      // side at once, and what the app sends during the grace (see splice) was dropped without a word.
      const upstream = netConnect({ host, port: authority.port, timeout: opts.connectTimeoutMs, allowHalfOpen: true });
      opts.own.track(upstream);
      const started = performance.now();
      let settled = false;
      let connected = false;
      upstream.once('connect', () => {
        settled = true;
        connected = true;
        upstream.setTimeout(0);
        count('passthrough', '200');
        opts.observe(started);
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length > 0) upstream.write(head);
        // The same relay as a WebSocket tunnel's: once one side ends (or is cut), the other has the grace to finish.
        splice(socket, upstream, {
          graceMs: opts.graceMs,
          idleMs: opts.idleTimeoutMs,
          onIdle: () => logIdleTunnel(opts.logger, opts.idleTimeoutMs, { route: 'passthrough', target: capped(`${authority.host}:${authority.port}`, MAX_LOGGED_HOST), peer: peerAddress(req.socket) }),
        });
      });
      const fail = (err?: Error) => {
        if (settled) return;
        settled = true;
        const target = `${authority.host}:${authority.port}`;
        count('passthrough', 'upstream_connect_failed');
        opts.observe(started);
        opts.metrics.upstreamErrors.inc({ direction: 'outbound', reason: 'upstream_connect_failed' });
        opts.logger.warn(
          { event: 'upstream_error', route: 'passthrough', reason: 'upstream_connect_failed', target: capped(target, MAX_LOGGED_HOST), code: (err as NodeJS.ErrnoException | undefined)?.code ?? 'timeout' },
          'upstream_error',
        );
        upstream.destroy();
        writeRawError(socket, 502, 'upstream_connect_failed', `cannot open a tunnel to ${target}`);
      };
      upstream.once('timeout', () => fail());
      upstream.once('error', (err) => {
        if (!connected) return fail(err);
        opts.logger.debug({ event: 'tunnel_error', code: (err as NodeJS.ErrnoException).code }, 'tunnel closed with an error');
      });
      // Before the tunnel is up, the client leaving ends the attempt; after, splice() owns both sockets.
      socket.once('close', () => {
        if (!connected) upstream.destroy();
      });
    },
  };
}
