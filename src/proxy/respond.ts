import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { currentHttpDate } from '../time-text.js';

/**
 * Sends the sidecar's own small JSON error response: `{"error": "...", "reason": "<code>"}`.
 * Safe to call at any point: if headers already went out, the connection is cut
 * instead, so a client never mistakes a half-forwarded body for a whole one.
 */
export function sendError(
  res: ServerResponse,
  status: number,
  reason: string,
  message: string,
  extraHeaders: Record<string, string> = {},
  /** Further fields of the JSON body after `error` and `reason` (e.g. `oauth_error`). */
  extraBody: Record<string, string> = {},
): void {
  if (res.headersSent) {
    cutResponse(res);
    return;
  }
  const body = JSON.stringify({ error: message, reason, ...extraBody });
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    // Answered before the request body was all in (an upstream that stopped taking the upload): the rest of it must
    // not be read as a next request, so the connection ends with this answer.
    ...(res.req && !res.req.complete ? { connection: 'close' } : {}),
    ...extraHeaders,
  });
  res.end(body);
}

/**
 * Ends a response whose headers went out but whose body will never be complete, so that the client cannot take it for
 * a whole one. A body without Content-Length sent to an HTTP/1.0 client (which gets no chunked coding) is delimited
 * by the close of the connection (RFC 9112 §6.3, item 8): an orderly close would deliver a truncated body as the
 * complete one. The TCP connection is reset instead, which every client reads as an error (under TLS too: see
 * resetSocket).
 */
export function cutResponse(res: ServerResponse): void {
  if (res.socket) resetSocket(res.socket);
  res.destroy();
}

/** Resets a client's TCP connection (see cutResponse), under TLS too; destroys one that cannot be reset. */
export function resetSocket(socket: Duplex): void {
  type Resettable = Duplex & Partial<Pick<Socket, 'resetAndDestroy'>>;
  // A TLS socket's own resetAndDestroy throws (its handle is not TCP), and destroying it ends the connection in what
  // clients read as an orderly close. The TCP socket under it (`_parent`, kept by tls.Server for each connection it
  // accepts) can be reset.
  const tcp = ((socket as { _parent?: Resettable })._parent ?? socket) as Resettable;
  try {
    if (!socket.destroyed && !tcp.destroyed && tcp.resetAndDestroy) tcp.resetAndDestroy();
  } catch {
    // Not a TCP handle: resetAndDestroy throws before doing anything.
  }
  socket.destroy();
}

/**
 * Cuts a connection the sidecar gives up on (a drain deadline, a tunnel's grace or idle limit): closed in order when
 * what it sends is complete (ended, and all of it handed to the kernel, which still delivers what it holds to a slow
 * reader; a reset would throw that away), reset otherwise, so that a stream cut short never reads as whole.
 */
export function cutSocket(socket: Duplex): void {
  if (socket.writableFinished) socket.destroy();
  else resetSocket(socket);
}

/** The `Allow` header of a 405 to CONNECT (RFC 9110 §15.5.6): the methods the sidecar forwards. */
export const ALLOW_PLAIN_METHODS = { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS' };

/** Responses whose `100 Continue` the listener held back (listen.ts). */
const heldContinue = new WeakSet<ServerResponse>();

/** Marks a request whose client waits for `100 Continue` before it sends its body; see sendHeldContinue. */
export function holdContinue(res: ServerResponse): void {
  heldContinue.add(res);
}

/** Sends the `100 Continue` held back for this request, once it is allowed on its way; a no-op for any other. */
export function sendHeldContinue(res: ServerResponse): void {
  if (heldContinue.delete(res)) res.writeContinue();
}

/**
 * A complete response written straight onto a socket that has no
 * ServerResponse (Upgrade and CONNECT requests, parser errors), then the
 * connection is closed: after a refusal on a raw socket nothing reliable can
 * follow on it, so it is closed as soon as the answer is flushed. `headers`
 * should carry the body's content-type and length.
 */
export function writeRawResponse(socket: Duplex, status: number, headers: Record<string, string>, body: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  // A Date as on every answer Node writes (RFC 9110 §6.6.1), from the same once-a-second text (dated-response.ts).
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\ndate: ${currentHttpDate()}\r\nconnection: close\r\n`;
  // Values are ours (e.g. WWW-Authenticate), but a stray CR/LF must never split the response.
  for (const name in headers) if (name !== 'connection') head += `${name}: ${headers[name]!.replace(/[\r\n]/g, ' ')}\r\n`;
  // Closed once the answer is flushed, as Node closes a `connection: close` response's socket: the listener's sockets
  // allow half-open connections, so ending our side alone would leave the socket (and a tunnel slot) to a client
  // that never ends its own.
  socket.end(`${head}\r\n${body}`, () => socket.destroy());
}

/** The sidecar's JSON error (`{"error","reason"}`) as a raw response; `message` defaults to the reason with spaces. */
export function writeRawError(
  socket: Duplex,
  status: number,
  reason: string,
  message: string = reason.replaceAll('_', ' '),
  extraHeaders: Record<string, string> = {},
  /** More members of the JSON body after `error` and `reason` (`oauth_error`), as sendError takes them. */
  extraBody: Record<string, string> = {},
): void {
  const body = JSON.stringify({ error: message, reason, ...extraBody });
  writeRawResponse(
    socket,
    status,
    { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': String(Buffer.byteLength(body)), ...extraHeaders },
    body,
  );
}
