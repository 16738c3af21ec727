import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { writeRawError } from './respond.js';

/** A request the listener refuses itself, before the handler: the status, the reason code and the message of the JSON body. */
export interface Refusal {
  status: number;
  reason: string;
  message: string;
}

/**
 * What is known of a refused request, for its log line: everything once its head is parsed (an IncomingMessage is
 * one); only the peer when Node's parser refused it before there was a request (no method, no target).
 */
export interface RefusedRequest {
  method?: string | undefined;
  url?: string | undefined;
  socket: { remoteAddress?: string | undefined };
}

/** Marks a request the listener refused after handing it to the handler: see refusedAfterHandOff. */
const REFUSED_BY_LISTENER = Symbol('refusedByListener');

/**
 * Whether the listener refused this request after handing it to the handler (its head passed; its body then broke or
 * timed out): the refusal is that request's answer, and the handler may have counted it, or will when its decision
 * comes, so it is counted once and timed once.
 */
export function refusedAfterHandOff(req: object): boolean {
  return REFUSED_BY_LISTENER in req;
}

/** Told of each request the listener refuses itself, as it answers it: for whoever serves the listener to count and log it. */
export type RefusalObserver = (req: RefusedRequest, refusal: Refusal) => void;

/** Why a request is refused before any handler sees it. */
export interface RequestViolation extends Refusal {
  status: 400 | 431 | 501 | 505;
  reason: 'too_many_headers' | 'bad_request' | 'transfer_coding_not_supported' | 'http_version_not_supported';
}

/**
 * Checks what Node's parser does not, the same way on every Node version:
 * the header count and a single Host. Node's own `maxHeadersCount` is off
 * (listen.ts): on Node 20 it silently truncates `req.headers` while
 * `req.rawHeaders` keeps everything, so a header past the limit (a second
 * Authorization, say) would be invisible to one check and visible to the
 * next, and on Node 22+ it fails the parse with the code of an oversize
 * block. Refusing the request with 431 (RFC 6585 §5) here removes the
 * ambiguity. Two Host headers, or one whose value is not `uri-host[:port]`,
 * get 400 (RFC 9112 §3.2); Node's parser takes any value. So does an
 * HTTP/1.1 request with no Host, which Node would answer with a bare 400 of
 * its own, neither counted nor logged (listen.ts turns that off). Transfer
 * codings: see checkTransferCodings; HTTP/1.0 has none (§6.1: a 1.0 message
 * with Transfer-Encoding has faulty framing), so there one is refused. The
 * versions other than 1.x that Node's parser lets through (none at all, which
 * it reads as HTTP/0.9, and HTTP/2.0 spelt in an HTTP/1 request line) are 505;
 * it refuses the rest itself (HPE_INVALID_VERSION, 400). Returns undefined
 * when fine.
 */
export function checkRequestHead(req: IncomingMessage, maxHeaderCount: number): RequestViolation | undefined {
  if (req.httpVersionMajor !== 1) {
    return { status: 505, reason: 'http_version_not_supported', message: 'only HTTP/1.0 and HTTP/1.1 request lines are served' };
  }
  const raw = req.rawHeaders;
  if (raw.length > maxHeaderCount * 2) {
    return { status: 431, reason: 'too_many_headers', message: `more than ${maxHeaderCount} request headers` };
  }
  let hosts = 0;
  let codings: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    // Cheap length checks first: this loop runs on every request.
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (++hosts > 1) return { status: 400, reason: 'bad_request', message: 'more than one Host header' };
      // The app takes Host (and the X-Forwarded-Host appended from it) for its own name, in links and virtual hosts:
      // `evil.example@orders`, `orders/admin` or `orders, evil.example` must not get that far.
      if (!HOST.test(raw[i + 1]!)) return { status: 400, reason: 'bad_request', message: 'the Host header is not a valid host[:port]' };
    }
    if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      codings = codings === undefined ? raw[i + 1]! : `${codings},${raw[i + 1]!}`;
    }
  }
  // CONNECT names its authority in the request target, and Node never asked it for a Host either: kept for proxy clients.
  if (hosts === 0 && req.httpVersionMinor === 1 && req.method !== 'CONNECT') return { status: 400, reason: 'bad_request', message: 'an HTTP/1.1 request must have a Host header' };
  if (codings === undefined) return undefined;
  if (req.httpVersionMinor === 0) return { status: 400, reason: 'bad_request', message: 'an HTTP/1.0 request cannot use Transfer-Encoding' };
  // A plain `chunked`, the only coding almost every client sends, needs no parsing.
  return codings === 'chunked' ? undefined : checkTransferCodings(codings);
}

/**
 * RFC 9112 §3.2: `Host = uri-host [ ":" port ]` (RFC 3986 §3.2.2, §3.2.3): an IP-literal in brackets (IPv6 or
 * IPvFuture) or a reg-name of unreserved characters, sub-delims and percent-escapes (an IPv4 address is one too),
 * possibly empty (RFC 9110 §7.2), then an optional port of digits.
 */
const HOST = /^(?:\[[0-9A-Za-z._~!$&'()*+,;=:-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?$/;

/**
 * The request's transfer codings (every Transfer-Encoding line, in order) must
 * be exactly `chunked`, in any case, with optional whitespace and empty list
 * elements (RFC 9110 §5.6.1). Node's parser accepts `gzip, chunked`, removes
 * only the chunking and hands on the still-coded bytes with the coding
 * dropped, which the app would take for plain content: a coding the sidecar
 * does not implement gets 501 (RFC 9112 §6.1). When `chunked` is not the final
 * coding the body length cannot be known: 400 (§6.3).
 */
function checkTransferCodings(value: string): RequestViolation | undefined {
  let count = 0;
  let last = '';
  for (const element of value.split(',')) {
    const coding = element.trim().toLowerCase();
    if (coding === '') continue;
    count++;
    last = coding;
  }
  if (last !== 'chunked') {
    return { status: 400, reason: 'bad_request', message: 'chunked is not the final transfer coding, so the body length is unknown' };
  }
  if (count > 1) return { status: 501, reason: 'transfer_coding_not_supported', message: 'only the chunked transfer coding is supported' };
  return undefined;
}

/** Node's parser and timeout errors → the status and reason code the client gets, and the detail its log line gets. */
export function clientErrorResponse(code: string | undefined): Refusal {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return { status: 431, reason: 'headers_too_large', message: 'the request header block is larger than limits.maxHeaderBytes' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      // Node raises this for both the headers timeout (slowloris) and the whole-request timeout.
      return { status: 408, reason: 'request_timeout', message: 'the request was not complete within limits.headersTimeoutSeconds or limits.requestTimeoutSeconds' };
    default:
      // The parser's code (HPE_INVALID_METHOD, HPE_UNEXPECTED_CONTENT_LENGTH, ...) says what was wrong; the bytes are never logged.
      return { status: 400, reason: 'bad_request', message: code ? `malformed request (${code})` : 'malformed request' };
  }
}

/** What Node keeps on a server socket: the response being written on it (responses to later pipelined requests wait their turn). */
export type ServerSocket = Duplex & { _httpMessage?: ServerResponse | null };

/** Sockets whose refusal is queued behind earlier responses (see handleClientError). */
const refusalPending = new WeakSet<Duplex>();

/**
 * The server's `clientError` handler: a malformed request, an oversize header
 * block or a client too slow to send its headers gets the right 4xx on its own
 * connection, and the server keeps serving everyone else. `refused` is told,
 * with the peer only: the parser failed before there was a request to
 * describe. A connection that timed out without sending a byte (opened ahead
 * of need by a client's pool, say) is answered but not reported: it never
 * made a request.
 *
 * With pipelining (RFC 9112 §9.3.2) the bad request may follow requests that
 * are still being answered. Responses must go out in request order, so the
 * refusal waits until every earlier response is complete, then goes out with
 * `connection: close` and the connection ends (§9.6): the client gets every
 * answer it is owed, learns that the bad request was refused rather than
 * lost, and nothing after it is read. Writing the refusal at once, as Node's
 * own handler does, would take the place of the first response and the client
 * would think its first request failed.
 */
export function handleClientError(err: NodeJS.ErrnoException, socket: Duplex, refused?: RefusalObserver): void {
  if (refusalPending.has(socket)) return; // The parser repeats its error for every later chunk; one refusal is queued.
  if (!socket.writable || err.code === 'ECONNRESET' || isTlsError(err)) {
    socket.destroy();
    return;
  }
  const refusal = clientErrorResponse(err.code);
  const peer = socket as Duplex & { remoteAddress?: string; bytesRead?: number };
  refusalPending.add(socket);
  afterEarlierResponses(socket as ServerSocket, (handled) => {
    // A response that ended the connection itself (`connection: close`) was the last word: Node is closing the socket.
    // That response was this request's own answer (a refusal of its head, or a 401 sent before its body came), which
    // was counted and logged when it was sent: reported again here, one request would be two refusals.
    if (!socket.writable) return;
    // bytesRead counts what the client sent after any TLS handshake, decrypted. A request the handler already has
    // (allowed, its body then broke or stalled) is reported itself, named, and marked so that it is counted once.
    if (handled) (handled as IncomingMessage & { [REFUSED_BY_LISTENER]?: true })[REFUSED_BY_LISTENER] = true;
    if (refused && peer.bytesRead) refused(handled ?? { socket: peer }, refusal);
    writeRawError(socket, refusal.status, refusal.reason, refusal.message);
  });
}

/**
 * An error of the TLS layer (handshake timeout, bad ClientHello, plain HTTP on
 * the TLS port), which an HTTPS server reports as a `clientError` too: no
 * HTTP has been spoken on that socket yet, so there is nobody to answer. An
 * answer written there would wait for a handshake that never completes and
 * keep the socket open.
 */
function isTlsError(err: NodeJS.ErrnoException & { library?: string }): boolean {
  return /^ERR_(TLS|SSL|OSSL)_/.test(err.code ?? '') || err.library !== undefined;
}

/**
 * Calls `then` once the responses to every request before the bad one are
 * complete. Node's own `finish` listener runs first and hands the socket to
 * the next pipelined response, so this follows the queue. Every request before
 * the bad one was parsed whole; a response whose request is incomplete is the
 * bad request's own (its head parsed, then its framing or body failed): it is
 * replaced by the refusal if it has not started (`then` gets that request,
 * which the handler already has), left to finish if it is complete already,
 * else the connection is cut so a half-sent response is never taken for a
 * whole one. A response that fails destroys the socket, and `then` never runs.
 */
export function afterEarlierResponses(socket: ServerSocket, then: (handled?: IncomingMessage) => void): void {
  const res = socket._httpMessage;
  if (!res) return then();
  if (!res.req.complete) {
    // Answered in full already (a refusal, or an app that did not wait for the body): end the connection after it.
    if (res.writableEnded) res.once('finish', () => socket.end());
    else if (res.headersSent) socket.destroy();
    else then(res.req);
    return;
  }
  res.once('finish', () => afterEarlierResponses(socket, then));
}
