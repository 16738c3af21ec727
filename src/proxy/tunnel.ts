import { request as httpRequest, STATUS_CODES, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { UpstreamError } from '../errors.js';
import type { Logger } from '../log.js';
import { toUpstreamError } from './forward.js';
import { buildUpstreamHeaders, isHopByHop, isWebSocketUpgrade } from './headers.js';
import type { Refusal } from './limits.js';
import type { OwnConnections } from './own-connections.js';
import { cutSocket, resetSocket, writeRawError } from './respond.js';

/** An `Upgrade` request that is not a WebSocket handshake, as answered, counted and logged on both listeners. */
export const UPGRADE_NOT_SUPPORTED: Refusal = {
  status: 400,
  reason: 'upgrade_not_supported',
  message: 'only WebSocket handshakes are tunnelled: GET with Upgrade: websocket and no body, over HTTP/1.1',
};

/**
 * Refuses an `Upgrade` request that is not a WebSocket handshake (see
 * isWebSocketHandshake): 400 with the sidecar's JSON error, connection closed,
 * nothing sent upstream. Callers check before any tunnel is opened.
 */
export function refuseUpgrade(socket: Duplex): void {
  writeRawError(socket, UPGRADE_NOT_SUPPORTED.status, UPGRADE_NOT_SUPPORTED.reason, UPGRADE_NOT_SUPPORTED.message);
}

export interface TunnelOptions {
  /** The upstream origin, `http://host:port` or `https://host:port`. */
  target: URL;
  /** Path and query to send upstream (origin-form). */
  path: string;
  /** Lower-case header names removed from the request besides hop-by-hop ones. */
  dropHeaders: ReadonlySet<string>;
  /** Headers added after filtering (flat [name, value, ...]). */
  addHeaders: readonly string[];
  /** The X-Forwarded-Host to send instead of the request's Host (see buildUpstreamHeaders). */
  forwardedHost?: string;
  /** How long the upstream may take to answer the upgrade once connected, and how long a tunnel may linger after one side ended, milliseconds. */
  timeoutMs: number;
  /** How long the TCP (and TLS) connect to the upstream may take, milliseconds (limits.upstreamConnectTimeoutSeconds). */
  connectTimeoutMs: number;
  /** An open tunnel with no bytes either way for this long is cut, milliseconds; 0: no limit. */
  idleTimeoutMs: number;
  /** Told when the idle limit cut the tunnel. */
  onIdle?: () => void;
  /** PEM CA bundle for an https target. */
  ca?: string;
  /** Where the connection to the upstream is recorded, so that the listener knows it if it comes back (a loop). */
  own?: OwnConnections;
}

/**
 * Tunnels an `Upgrade` request (WebSocket, RFC 6455 §4; HTTP/1.1 Upgrade,
 * RFC 9110 §7.8) that the caller has already authorized, and checked to be a
 * WebSocket handshake (refuseUpgrade answers the others): sends the request
 * upstream with hop-by-hop headers filtered and `Connection: Upgrade` +
 * `Upgrade` restored, relays the upstream's `101` and then pipes bytes both
 * ways until either side closes. If the upstream declines (any non-101
 * answer), that answer is relayed and the connection closed.
 *
 * Resolves with the upstream's status once its answer has been relayed.
 * Rejects with an UpstreamError only if nothing was written to `socket` yet,
 * so the caller can answer 502/504 itself.
 */
export function tunnel(req: IncomingMessage, socket: Duplex, head: Buffer, opts: TunnelOptions): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const headers = buildUpstreamHeaders(req, opts.dropHeaders, opts.addHeaders, opts.forwardedHost);
    // Host is required (RFC 9112 §3.2) and node:http adds none to a header list. The outbound side drops the app's
    // Host, and a Connection header naming `host` strips it inbound: then the target's authority is sent, as undici
    // does for plain requests.
    if (!hasHost(headers)) headers.unshift('host', opts.target.host);
    headers.push('connection', 'upgrade', 'upgrade', req.headers.upgrade ?? '');
    const isHttps = opts.target.protocol === 'https:';
    const request = isHttps ? httpsRequest : httpRequest;
    let settled = false;
    const upReq: ClientRequest = request({
      host: opts.target.hostname.replace(/^\[|\]$/g, ''),
      port: opts.target.port || (isHttps ? 443 : 80),
      method: req.method,
      path: opts.path,
      headers,
      agent: false,
      timeout: opts.timeoutMs,
      ...(opts.ca ? { ca: opts.ca } : {}),
    });

    if (opts.own) {
      const own = opts.own;
      upReq.once('socket', (s: Socket) => own.track(s));
    }

    const fail = (err: UpstreamError) => {
      if (settled) return;
      settled = true;
      socket.off('close', onClientClose);
      stopWatching();
      reject(err);
    };
    // The client gave up while we were still connecting: nothing to tunnel to.
    const onClientClose = () => {
      if (settled) return;
      settled = true;
      upReq.destroy();
      resolve(0);
    };
    socket.once('close', onClientClose);
    // The listener began this at handover; a socket handed over by other means (the unit tests) is watched from here.
    watchForHangUp(socket);
    const stopWatching = () => stopWatchingForHangUp(socket);

    // The TCP (and TLS) connect has a deadline of its own, as undici gives plain requests: not the socket's idle timer,
    // which an upstream trickling handshake bytes would keep from ever firing.
    let connected = false;
    const unreachable = () => new UpstreamError('upstream_connect_failed', 'upstream is unreachable');
    const connectDeadline = setTimeout(() => upReq.destroy(unreachable()), opts.connectTimeoutMs);
    upReq.once('close', () => clearTimeout(connectDeadline));
    upReq.once('socket', (s: Socket) => {
      s.once(isHttps ? 'secureConnect' : 'connect', () => {
        connected = true;
        clearTimeout(connectDeadline);
      });
    });
    upReq.on('timeout', () => {
      upReq.destroy(connected ? new UpstreamError('upstream_timeout', 'upstream did not answer the upgrade in time') : unreachable());
    });
    upReq.on('error', (err) => fail(toUpstreamError(err)));

    upReq.on('upgrade', (upRes: IncomingMessage, upSocket: Socket, upHead: Buffer) => {
      if (settled) return void upSocket.destroy();
      // Only a WebSocket handshake was sent, so only a switch to WebSocket is relayed: an upstream that switches to
      // anything else (h2c) would otherwise get the tunnel that refuseUpgrade keeps from the client.
      if (!isWebSocketUpgrade(upRes.rawHeaders)) {
        upSocket.destroy();
        return fail(new UpstreamError('upstream_bad_response', 'upstream switched to a protocol other than websocket'));
      }
      settled = true;
      socket.off('close', onClientClose);
      const early = stopWatching();
      upSocket.setTimeout(0);
      socket.write(responseHead(upRes, true), 'latin1');
      if (upHead.length > 0) socket.write(upHead);
      if (head.length > 0) upSocket.write(head);
      for (const chunk of early) upSocket.write(chunk);
      splice(socket, upSocket, { graceMs: opts.timeoutMs, idleMs: opts.idleTimeoutMs, ...(opts.onIdle ? { onIdle: opts.onIdle } : {}) });
      resolve(upRes.statusCode ?? 101);
    });

    upReq.on('response', (upRes: IncomingMessage) => {
      if (settled) return void upRes.destroy();
      // Node hands over a 101 without an Upgrade header here rather than as 'upgrade': a switch to nothing named
      // (RFC 9110 §15.2.2 requires Upgrade in a 101), which must not reach the client as a 101.
      if (upRes.statusCode === 101) {
        upRes.destroy();
        return fail(new UpstreamError('upstream_bad_response', 'upstream answered 101 without naming the protocol it switched to'));
      }
      // RFC 9110 §15: 100-599, as forward() holds plain responses to. Relayed, a client would read `HTTP/1.1 999
      // Unknown`, and the outbound side would count the handshake under a status no other response can have.
      const status = upRes.statusCode ?? 502;
      if (status < 100 || status > 599) {
        upRes.destroy();
        return fail(new UpstreamError('upstream_bad_response', `upstream answered with status ${status}, outside 100-599`));
      }
      settled = true;
      socket.off('close', onClientClose);
      stopWatching();
      // Declined: relay the answer, delimited by closing the connection (RFC 9112 §6.3, item 8).
      socket.write(responseHead(upRes, false), 'latin1');
      // Closed once the answer is flushed, as writeRawResponse closes the sidecar's own refusals: the listener's
      // sockets allow half-open connections, so ending our side alone would leave the socket (and its tunnel slot) to
      // a client that never ends its own.
      socket.once('finish', () => socket.destroy());
      upRes.pipe(socket);
      // The relayed body ends where the connection ends: one the upstream cut short must not end in an orderly close,
      // which would read as the whole body (cutResponse).
      upRes.on('error', () => resetSocket(socket));
      const cutIfIncomplete = () => {
        if (!upRes.complete) resetSocket(socket);
      };
      upRes.on('close', cutIfIncomplete);
      // Node's client completes a body delimited by the connection's end also when the connection is reset, but it
      // reports the reset on the request first (socketErrorListener), while the body is not complete yet.
      upReq.on('error', cutIfIncomplete);
      socket.on('close', () => upRes.destroy());
      resolve(status);
    });

    upReq.end();
  });
}

/**
 * Reads a WebSocket handshake's client until its tunnel starts. Node hands an upgrade's socket over unread, so a client
 * that went away (a FIN, which Node takes as the end of a plain request) went unnoticed while its token was checked or
 * fetched and until the upstream answered: its tunnel slot held (real clients got 503 too_many_tunnels), a handshake
 * sent to the app for nobody, a peer blamed for not answering in time, a SIGTERM's drain waiting it out. The listener
 * starts this as it hands the socket over; the client's end then destroys the socket, which its owners see as its
 * close. A WebSocket client sends nothing before the 101 (RFC 6455 §4.1); what one sends anyway is kept for tunnel()
 * to pass on after the handshake, up to MAX_EARLY_BYTES: a client that sends more is no WebSocket client, and is cut
 * (each pending handshake would otherwise hold what it sent, up to maxTunnels of them).
 * Not for CONNECT: a client may half-close a raw tunnel and still read.
 */
export function watchForHangUp(socket: Duplex): void {
  if (hangUpWatches.has(socket) || socket.destroyed) return;
  const early: Buffer[] = [];
  let size = 0;
  const onData = (chunk: Buffer) => {
    size += chunk.length;
    if (size > MAX_EARLY_BYTES) return resetSocket(socket);
    early.push(chunk);
  };
  const hungUp = () => socket.destroy();
  socket.on('data', onData);
  socket.once('end', hungUp);
  socket.resume();
  hangUpWatches.set(socket, () => {
    // Paused before the listener goes: a flowing stream with no 'data' listener would drop what it reads.
    socket.pause();
    socket.off('data', onData);
    socket.off('end', hungUp);
    return early;
  });
}

/** Stops watchForHangUp, leaving the socket paused for splice() to read; gives back what the client sent meanwhile. */
function stopWatchingForHangUp(socket: Duplex): Buffer[] {
  const stop = hangUpWatches.get(socket);
  hangUpWatches.delete(socket);
  return stop ? stop() : [];
}

const hangUpWatches = new WeakMap<Duplex, () => Buffer[]>();
const MAX_EARLY_BYTES = 16 * 1024;

function hasHost(headers: readonly string[]): boolean {
  for (let i = 0; i < headers.length; i += 2) if (headers[i]!.toLowerCase() === 'host') return true;
  return false;
}

/**
 * The status line and filtered headers of an upstream answer, as text for the client socket. Node decodes header
 * bytes as latin1, so the text is written as latin1: a byte outside ASCII (obs-text, RFC 9110 §5.5) goes out as it came.
 */
function responseHead(upRes: IncomingMessage, upgraded: boolean): string {
  const status = upRes.statusCode ?? 502;
  let out = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
  const raw = upRes.rawHeaders;
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') for (const t of raw[i + 1]!.split(',')) named.add(t.trim().toLowerCase());
  }
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (isHopByHop(lower) || named.has(lower)) continue;
    // Transfer-Encoding is hop-by-hop and gone: a declined upgrade's body is relayed close-delimited (or by its Content-Length).
    out += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  if (upgraded) out += `connection: upgrade\r\nupgrade: ${upRes.headers.upgrade ?? ''}\r\n`;
  else out += 'connection: close\r\n';
  return `${out}\r\n`;
}

export interface SpliceOptions {
  /** Once one side has ended, how long the tunnel may carry nothing before both are cut, milliseconds. */
  graceMs: number;
  /** No bytes either way for this long cuts both sides, milliseconds; 0: no limit. */
  idleMs: number;
  /** Told when the idle limit cut the tunnel, for the owner to log. */
  onIdle?: () => void;
}

/**
 * Pipes two sockets into each other. An orderly end on one side is passed on
 * as an end on the other, after what is queued is flushed (so a WebSocket
 * close handshake completes). WebSocket does not use TCP half-close, so once
 * one side has ended the tunnel is cut when it has moved nothing for
 * `graceMs` (a byte read, or a full socket taking more: a download still
 * flowing to a client that half-closed, or draining to a slow reader after the
 * peer ended, goes on); an error or reset on either side cuts both at once,
 * and so do `idleMs` without a byte either way and cutTunnel. No half-dead or
 * forgotten tunnel lingers.
 *
 * A cut resets each socket whose stream it cuts short, never closes it in
 * order: a stream without its own length (an HTTP/1.0 body over CONNECT, raw
 * TCP) ends where the connection ends, and an orderly close would pass the
 * part sent so far off as the whole. A socket whose stream is complete (its
 * end passed on, everything handed to the kernel) is closed in order, so
 * what the kernel still holds for a slow reader reaches it; a reset would
 * throw that away.
 */
export function splice(a: Duplex, b: Duplex, opts: SpliceOptions): void {
  a.pipe(b);
  b.pipe(a);
  partners.set(a, b);
  partners.set(b, a);
  let grace: NodeJS.Timeout | undefined;
  const cutBoth = () => {
    clearTimeout(grace);
    cutSocket(a);
    cutSocket(b);
  };
  let movedAt = 0;
  const moved = () => {
    movedAt = performance.now();
  };
  const onEnd = () => {
    if (grace) return;
    // Progress is timed only from here: an open tunnel's own limit is idleMs, kept by the sockets' timers. A full
    // socket that takes more says so with 'drain' (pipe() then reads its source again).
    moved();
    for (const s of [a, b]) {
      s.on('data', moved);
      s.on('drain', moved);
    }
    const check = () => {
      const left = movedAt + opts.graceMs - performance.now();
      if (left <= 0) cutBoth();
      else grace = setTimeout(check, left).unref();
    };
    grace = setTimeout(check, opts.graceMs).unref();
  };
  // A side that failed (a reset, a cut at shutdown) cuts the other one at once, with a reset unless what it sends is
  // complete: passed on as an orderly close, a download cut short would read as finished.
  const failed = (other: Duplex) => () => {
    clearTimeout(grace);
    cutSocket(other);
    a.destroy();
    b.destroy();
  };
  a.on('error', failed(b));
  b.on('error', failed(a));
  a.on('end', onEnd);
  b.on('end', onEnd);
  // A client that ended before these listeners (a CONNECT's, while its upstream connected; a WebSocket client's end is
  // taken as its hang-up until the 101, see watchForHangUp): pipe() still passes that end on, and the grace must start.
  if (a.readableEnded || b.readableEnded) onEnd();
  // A side that is destroyed emits 'close' without 'end': half-close the other and start the same grace,
  // so a peer that ignores the FIN cannot hold the tunnel (and a terminating process) open.
  a.on('close', () => {
    if (!b.destroyed) {
      b.end();
      onEnd();
    } else clearTimeout(grace);
  });
  b.on('close', () => {
    if (!a.destroyed) {
      a.end();
      onEnd();
    } else clearTimeout(grace);
  });
  if (opts.idleMs > 0) {
    // Every byte is read from one socket and written to the other, and a socket's timer restarts on both: either
    // socket's timer firing means the tunnel carried nothing for idleMs. Node restarts a socket's timer in place as
    // bytes pass, with no new timer per chunk.
    const onIdle = () => {
      if (a.destroyed && b.destroyed) return;
      cutBoth();
      opts.onIdle?.();
    };
    for (const s of [a, b] as Array<Duplex & Partial<Pick<Socket, 'setTimeout'>>>) {
      s.setTimeout?.(opts.idleMs);
      s.on('timeout', onIdle);
    }
  }
}

/** Each spliced socket's other side, for cutTunnel. */
const partners = new WeakMap<Duplex, Duplex>();

/** The line for a tunnel the idle limit cut: closed by the sidecar, not by either side, so an operator sees why. */
export function logIdleTunnel(logger: Logger, idleMs: number, fields: Record<string, string | undefined>): void {
  logger.info({ event: 'tunnel_idle_timeout', ...fields, idleSeconds: idleMs / 1000 }, `tunnel closed: no bytes either way for ${idleMs / 1000} s`);
}

/**
 * Cuts a tunnel's client socket at a deadline (shutdown's drain, a listener closing all its connections), and its
 * upstream side with it at once, instead of ending that and waiting out the grace for a peer that may ignore the end.
 * As splice() cuts: a stream cut short is reset, a complete one closed in order; a tunnel still being opened just
 * loses its client.
 */
export function cutTunnel(socket: Duplex): void {
  const other = partners.get(socket);
  cutSocket(socket);
  if (other) cutSocket(other);
}
