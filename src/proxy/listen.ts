import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { LimitsConfig } from '../config/schema.js';
import { SidecarError } from '../errors.js';
import type { Logger } from '../log.js';
import { closingAwareResponse } from './closing-response.js';
import { connectionCap, openFileLimit } from './connection-cap.js';
import { isWebSocketUpgrade } from './headers.js';
import { afterEarlierResponses, checkRequestHead, handleClientError, type RefusalObserver, type Refusal, type ServerSocket } from './limits.js';
import { LOOP_DETECTED } from './own-connections.js';
import { inTurn } from './pipelining.js';
import { cutTunnel, watchForHangUp } from './tunnel.js';
import { ALLOW_PLAIN_METHODS, cutSocket, holdContinue, sendError, writeRawError } from './respond.js';
import { loadTlsMaterial, watchTlsFiles, type TlsFiles } from './tls.js';

export type { TlsFiles } from './tls.js';
export type { Refusal, RefusalObserver, RefusedRequest } from './limits.js';

export interface ListenAddress {
  host: string;
  port: number;
}

/** Parses `host:port`, `:port` or `[v6]:port` (already validated by the schema). */
export function parseListen(listen: string): ListenAddress {
  const idx = listen.lastIndexOf(':');
  let host = listen.slice(0, idx);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host: host || '0.0.0.0', port: Number(listen.slice(idx + 1)) };
}

/**
 * Takes one of the listener's `limits.maxTunnels` slots for the socket until it closes. Called by a handler once the
 * request passed its own checks and is about to open a tunnel (before a token is checked or fetched), so a request
 * refused for good gets that refusal, and a socket refused at any point does not hold a slot for long (a raw refusal
 * closes it once flushed). Returns false when every slot is taken: the listener has then answered 503
 * too_many_tunnels, counted and logged, and the handler does nothing more.
 */
export type AdmitTunnel = () => boolean;

/** A handler for requests that leave HTTP behind (`Upgrade`, `CONNECT`). */
export type SocketHandler = (req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel) => void;

export interface LimitedServerOptions {
  /** `Upgrade:` requests (WebSocket), after the same limit checks as any request. Absent: Upgrade is ignored and the request served as plain HTTP. */
  upgrade?: SocketHandler;
  /** `CONNECT` requests. Absent: 405. */
  connect?: SocketHandler;
  /**
   * Told of each request the listener refuses itself, as it answers it: a head that breaks a limit (header count,
   * Host, transfer coding), plain or `Upgrade`/`CONNECT`, an `Expect` other than `100-continue`, `CONNECT` without a
   * `connect` handler, and what Node's parser refuses (malformed, oversize header block, timeouts; the peer only).
   * For whoever serves the listener to count and log it.
   */
  refused?: RefusalObserver;
  /**
   * Whether a connection is one this side of the sidecar opened to its upstream (see OwnConnections): every request
   * on it is refused with 508 loop_detected instead of being served, which would forward it to itself once more.
   */
  isOwnConnection?: (socket: Duplex) => boolean;
  /** Told of each client connection closed as it was accepted because the listener held `limits.maxConnections`. */
  dropped?: (maxConnections: number) => void;
  /** For TLS reload events. */
  logger?: Logger;
  /** How often TLS files are polled for changes, milliseconds (default 1000). */
  tlsPollMs?: number;
}

/** RFC 9110 §10.1.1: an expectation other than 100-continue may be answered 417; the sidecar meets no other. */
const EXPECTATION_FAILED: Refusal = { status: 417, reason: 'bad_request', message: 'the only expectation supported is 100-continue' };

/** A listener without a `connect` handler (inbound) opens no tunnels; a 405 names the methods it does serve (RFC 9110 §15.5.6). */
const CONNECT_NOT_SUPPORTED: Refusal = { status: 405, reason: 'connect_not_supported', message: 'CONNECT is not supported: this listener serves plain HTTP requests' };

/**
 * One tunnel more than `limits.maxTunnels` (RFC 9110 §15.6.4: a temporary overload). Tunnels hold their sockets for
 * as long as both sides like, outside the pools' `upstreamConnections`, so the cap is what bounds them.
 */
const tooManyTunnels = (max: number): Refusal => ({
  status: 503,
  reason: 'too_many_tunnels',
  message: `this listener already has ${max} open tunnels (limits.maxTunnels); try again once one closes`,
});

/** A listener whose limits and TLS files a reload can change in place, where its address stays the same. */
export interface LimitedServer extends Server {
  /**
   * Checks new limits and TLS files for this listener and returns what applies them, so that a reload can check
   * everything before it changes anything. Throws a TlsConfigError for an unusable pair, and a SidecarError
   * (`restart_required`) for TLS turned on or off: that is another kind of server, and the address is taken by this
   * one.
   */
  prepareReconfigure(limits: LimitsConfig, tls: TlsFiles | undefined): () => void;
  /** Cuts the HTTP connections (cutSocket: a reset where a response is cut short) and leaves open tunnels alone; closeAllConnections cuts those too. */
  closeHttpConnections(): void;
}

/**
 * An HTTP(S) server with the sidecar's limits applied: header size (431),
 * header count (431), a single Host (400), headers timeout against slowloris
 * (408), whole-request timeout (408), idle keep-alive timeout; with TLS, the
 * handshake must also complete within the headers timeout. A client that
 * breaks a limit gets its 4xx on its own connection; others keep being served.
 * With `tls`, the certificate is reloaded when its files change.
 */
export function createLimitedServer(
  limits: LimitsConfig,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  tls?: TlsFiles,
  options: LimitedServerOptions = {},
): LimitedServer {
  let current = limits;
  let currentTls = tls;
  const settings = limitedServerSettings(limits);
  const headersTimeout = settings.headersTimeout;
  const serverOptions = {
    ...settings,
    // Node rejects a request with both Content-Length and Transfer-Encoding (smuggling); keep that strictness.
    insecureHTTPParser: false,
    // An HTTP/1.1 request without Host is refused by checkRequestHead, as JSON and counted; Node's own 400 is neither.
    requireHostHeader: false,
    // Once close() is called the server no longer listens: what is answered from then on ends its connection.
    ServerResponse: closingAwareResponse(() => !server.listening),
    // Only an Upgrade to WebSocket alone leaves HTTP for the upgrade handler. Any other (h2c, which `curl --http2`
    // and Java's HttpClient offer on every plain-http request; TLS/1.0; a list) is served as the ordinary request it
    // also is: RFC 9110 §7.8 lets a server ignore Upgrade, and its Upgrade and Connection headers are hop-by-hop, so
    // the app never sees the offer (no h2c smuggling). Node 22.21 and 24.9 read this option; older Node ignores it and
    // hands every Upgrade to the handler, which refuses these with 400 upgrade_not_supported.
    ...(options.upgrade ? { shouldUpgradeCallback: (req: IncomingMessage) => isWebSocketUpgrade(req.rawHeaders) } : {}),
  };
  // One request of a connection at a time (RFC 9112 §9.3.2): a request pipelined behind others is served once their
  // responses are complete (pipelining.ts).
  const guarded = (req: IncomingMessage, res: ServerResponse) => inTurn(req, res, serve);
  // A refusal by the listener itself, before the handler: counted and logged by whoever serves the listener
  // (options.refused), like the handler's own refusals. The body the client may be sending is not read, so the
  // connection ends with the answer.
  const refuse = (req: IncomingMessage, res: ServerResponse, refusal: Refusal) => {
    res.shouldKeepAlive = false;
    options.refused?.(req, refusal);
    sendError(res, refusal.status, refusal.reason, refusal.message);
  };
  const isOwnConnection = options.isOwnConnection ?? (() => false);
  const serve = (req: IncomingMessage, res: ServerResponse) => {
    if (isOwnConnection(req.socket)) return refuse(req, res, LOOP_DETECTED);
    const violation = checkRequestHead(req, current.maxHeaderCount);
    if (violation) return refuse(req, res, violation);
    // An Upgrade served as a plain request (shouldUpgradeCallback below): Node drops whatever the client pipelined
    // behind it in the same read, so the connection ends with this answer, which tells the client that nothing after
    // it was read (RFC 9112 §9.3.2: it retries those on a new connection).
    if (req.headers.upgrade !== undefined) res.shouldKeepAlive = false;
    handler(req, res);
  };
  let server: Server;
  let https: HttpsServer | undefined;
  let stopTls = () => {};
  // Every TCP connection as it is accepted, so that a deadline can cut them (cutHttpConnections). With TLS, Node's HTTP
  // layer knows a connection only once its handshake is done, so its closeAllConnections() leaves one still in the
  // handshake (a silent client, a port scanner) to the handshake timeout, and server.close() waits for it: the drain
  // deadline would not hold.
  const accepted = new Set<Socket>();
  const track = (socket: Socket) => {
    accepted.add(socket);
    socket.once('close', () => accepted.delete(socket));
  };
  if (tls) {
    const material = loadTlsMaterial(tls);
    // A client gets as long to finish the TLS handshake as to send its headers once it is done. Node's default
    // (120 s) would let silent TCP connections and stalled ClientHellos hold a socket long past the slowloris guard.
    const tlsServer = createHttpsServer({ ...serverOptions, ...material, handshakeTimeout: headersTimeout }, guarded);
    tlsServer.on('connection', track);
    // Watch only once listening: a listener that never binds (address in use on a reload) never closes either.
    tlsServer.once('listening', () => {
      stopTls = watchTlsFiles(tlsServer, tls, material, options.logger, options.tlsPollMs);
    });
    https = tlsServer;
    server = tlsServer as HttpsServer as unknown as Server;
  } else {
    server = createHttpServer(serverOptions, guarded);
    server.on('connection', track);
  }
  // Watching stops once the server stops listening, not at its 'close', which waits for every connection: tunnels too,
  // which a listener a reload retired leaves open (app.ts), and whose files may be gone or another listener's by then.
  const closeServer = server.close.bind(server);
  server.close = ((callback?: (err?: Error) => void) => {
    stopTls();
    return closeServer(callback);
  }) as typeof server.close;
  // Node would answer `Expect: 100-continue` with 100 as soon as the head is parsed, before any check or token
  // verification: a caller about to be refused would be invited to send its whole body for nothing. With this
  // listener Node leaves it to us; forward() sends the 100 once the request is allowed and about to go upstream, and
  // a refusal goes out instead of it, closing the connection (RFC 9110 §10.1.1).
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    holdContinue(res);
    guarded(req, res);
  });
  // Any other expectation: Node would answer a bare 417 itself, uncounted and unlogged. A head that also breaks a
  // limit gets that refusal instead, as without the Expect.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    refuse(req, res, checkRequestHead(req, current.maxHeaderCount) ?? EXPECTATION_FAILED);
  });
  // The header count is checked above (too_many_headers), the same on every Node. Node's own count limit would get
  // in the way: Node 20 truncates req.headers past it, and Node 22+ fails the parse with the same error code as an
  // oversize header block (headers_too_large). Unlimited here is still bounded: the parser enforces maxHeaderBytes.
  server.maxHeadersCount = 0;
  // Node closes a connection over the cap as it accepts it, before any byte is read, and says so with 'drop'.
  server.maxConnections = connectionCap(limits.maxConnections, openFileLimit());
  server.on('drop', () => options.dropped?.(server.maxConnections));
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => handleClientError(err, socket, options.refused));

  // Node stops tracking a socket once it leaves HTTP (Upgrade, CONNECT): closeAllConnections() would not cut it and
  // server.close() would wait for it forever. Track them here so a drain deadline also ends open tunnels.
  const detached = new Set<Duplex>();
  const closeAll = server.closeAllConnections.bind(server);
  // At a deadline the idle connections are closed already: what is left has a request or a response on its way, and is
  // cut as a response the upstream cuts short is, with a reset (cutSocket): with Node's orderly close, an HTTP/1.0
  // client took a body without Content-Length, cut where the connection ended, for the whole of it. Tunnels are left
  // to cutTunnel.
  const cutHttpConnections = () => {
    const underTunnels = new Set<Duplex>();
    for (const d of detached) underTunnels.add((d as { _parent?: Duplex })._parent ?? d);
    for (const s of accepted) if (!underTunnels.has(s)) cutSocket(s);
    // Node's own bookkeeping; what it would close is closed already.
    closeAll();
  };
  server.closeAllConnections = () => {
    cutHttpConnections();
    for (const s of detached) cutTunnel(s);
  };
  const refuseSocket = (req: IncomingMessage, socket: Duplex, refusal: Refusal, headers?: Record<string, string>) => {
    options.refused?.(req, refusal);
    writeRawError(socket, refusal.status, refusal.reason, refusal.message, headers);
  };
  // Sockets holding a tunnel slot (see AdmitTunnel): tunnels open and being opened.
  const tunnels = new Set<Duplex>();
  const admitTunnel = (req: IncomingMessage, socket: Duplex): boolean => {
    if (tunnels.has(socket)) return true;
    if (tunnels.size >= current.maxTunnels) {
      refuseSocket(req, socket, tooManyTunnels(current.maxTunnels));
      return false;
    }
    tunnels.add(socket);
    socket.once('close', () => tunnels.delete(socket));
    return true;
  };
  const guardSocket = (next: SocketHandler | undefined, fallback: (req: IncomingMessage, socket: Duplex) => void): SocketHandler => (req, socket, head) => {
    // Node hands these sockets over without an error listener; one reset must not take the process down.
    socket.on('error', () => socket.destroy());
    detached.add(socket);
    socket.once('close', () => detached.delete(socket));
    // Pipelined behind requests still being answered (RFC 9112 §9.3.2): their responses go out first, in order, then
    // whatever answers this one (a refusal, a 101, a tunnel's bytes). Node leaves them writing to this socket.
    afterEarlierResponses(socket as ServerSocket, () => {
      // An earlier response that closed the connection was the last word.
      if (!socket.writable) return void socket.destroy();
      if (isOwnConnection(req.socket)) return refuseSocket(req, socket, LOOP_DETECTED);
      const violation = checkRequestHead(req, current.maxHeaderCount);
      if (violation) return refuseSocket(req, socket, violation);
      if (next) next(req, socket, head, () => admitTunnel(req, socket));
      else fallback(req, socket);
    });
  };
  const upgrade = options.upgrade;
  if (upgrade) {
    server.on('upgrade', guardSocket((req, socket, head, admit) => {
      watchForHangUp(socket);
      upgrade(req, socket, head, admit);
    }, () => {}));
  }
  server.on('connect', guardSocket(options.connect, (req, socket) => refuseSocket(req, socket, CONNECT_NOT_SUPPORTED, ALLOW_PLAIN_METHODS)));

  // A reload at the same address cannot bind a second socket beside this one (EADDRINUSE): new limits and TLS files
  // are applied to this server. Node reads these settings per connection or per check, so they take effect for what
  // comes next; connections already open keep their TLS session. The interval at which Node checks the timeouts was
  // set at listen time from the first headers timeout: at most 1 s, so a shorter new timeout is enforced to within 1 s.
  const limited = server as LimitedServer;
  limited.closeHttpConnections = cutHttpConnections;
  limited.prepareReconfigure = (nextLimits, nextTls) => {
    if (Boolean(nextTls) !== Boolean(https)) {
      throw new SidecarError('restart_required', `inbound.tls: turning TLS ${nextTls ? 'on' : 'off'} at the same listen address takes a restart`, 1);
    }
    const material = nextTls && (nextTls.certFile !== currentTls?.certFile || nextTls.keyFile !== currentTls.keyFile) ? loadTlsMaterial(nextTls) : undefined;
    return () => {
      current = nextLimits;
      const settings = limitSettings(nextLimits);
      // The options of the same names are stored on the server as these properties, and read from there (maxHeaderSize,
      // not in Node's types, by each new connection's parser).
      Object.assign(server, settings);
      server.maxConnections = connectionCap(nextLimits.maxConnections, openFileLimit());
      if (!https) return;
      setHandshakeTimeout(https, settings.headersTimeout);
      if (material && nextTls) {
        https.setSecureContext(material);
        stopTls();
        stopTls = watchTlsFiles(https, nextTls, material, options.logger, options.tlsPollMs);
        currentTls = nextTls;
      }
    };
  };
  return limited;
}

/**
 * The options of a server that `limits` bound (every listener, the admin one too): limitSettings, and how often Node
 * checks the timeouts, fixed at creation. Node checks them every `connectionsCheckingInterval` (30 s by default), which
 * would let a slowloris client hold a socket up to 30 s past the limit.
 */
export function limitedServerSettings(limits: LimitsConfig) {
  const settings = limitSettings(limits);
  return { ...settings, connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(settings.headersTimeout / 2))) };
}

/** The server options that come from `limits`, in ms: set at creation, and on the running server by a reload. */
export function limitSettings(limits: LimitsConfig) {
  return {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headersTimeoutSeconds * 1000,
    requestTimeout: limits.requestTimeoutSeconds * 1000,
    keepAliveTimeout: limits.keepAliveTimeoutSeconds * 1000,
  };
}

/**
 * The TLS handshake timeout of a running server. Node takes it from the constructor's options only and reads it per
 * connection from a private field; if a Node version names that field differently, the first timeout stays.
 */
function setHandshakeTimeout(server: HttpsServer, ms: number): void {
  const key = Object.getOwnPropertySymbols(server).find((k) => k.description === 'handshake-timeout');
  if (key) (server as unknown as Record<symbol, unknown>)[key] = ms;
}

/** Listens and resolves with the bound address (port 0 → the real port). */
export async function listenOn(server: Server, addr: ListenAddress): Promise<ListenAddress> {
  try {
    return await bind(server, addr);
  } catch (err) {
    // `[::]` is every address, IPv6 and IPv4 (Linux's sockets take both), so one config serves IPv4, IPv6 and
    // dual-stack pods alike; where the kernel has no IPv6 at all (booted with ipv6.disable=1) it is every IPv4 address,
    // as Node's own listen() does for no host.
    if (addr.host === '::' && (err as NodeJS.ErrnoException).code === 'EAFNOSUPPORT') return bind(server, { host: '0.0.0.0', port: addr.port });
    throw err;
  }
}

function bind(server: Server, addr: ListenAddress): Promise<ListenAddress> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(addr.port, addr.host, () => {
      server.off('error', onError);
      const a = server.address() as AddressInfo;
      resolve({ host: a.address, port: a.port });
    });
  });
}

export function formatAddress(a: ListenAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
