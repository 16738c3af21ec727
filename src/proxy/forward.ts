import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { UpstreamError } from '../errors.js';
import { ClientStalledError } from './deadline.js';
import { buildUpstreamHeaders, forwardableResponseHeaders, hasRequestBody } from './headers.js';
import { cutResponse, sendHeldContinue } from './respond.js';
import { endingOnReset } from './upstream-reset.js';

export interface ForwardOptions {
  dispatcher: Dispatcher;
  /** Path and query to send upstream (origin-form). */
  path: string;
  /** Lower-case header names removed from the request besides hop-by-hop ones. */
  dropHeaders: ReadonlySet<string>;
  /** Headers added after filtering (flat [name, value, ...]). */
  addHeaders: readonly string[];
  /** The X-Forwarded-Host to send instead of the request's Host (see buildUpstreamHeaders). */
  forwardedHost?: string;
  /** Called once the upstream's response headers are known (for metrics). */
  onResponse?: (status: number) => void;
  /**
   * Called when the upstream fails after the response headers went to the client (a reset or a stall mid-body):
   * the client sees a cut connection, and this is how the failure still gets logged and counted. It gets the request,
   * so one function can serve every request (no closure per request on the hot path).
   */
  onBrokenResponse?: (err: UpstreamError, req: IncomingMessage) => void;
}

/** `addHeaders` when there is nothing to add (one shared empty list, not one per request). */
export const NO_HEADERS: readonly string[] = [];

/**
 * Streams `req` to the upstream and the upstream's answer back to `res`, with
 * backpressure both ways and no body buffering. Resolves when the exchange is
 * over (also when the client went away: nobody is left to answer); rejects
 * with an UpstreamError only if no response headers were sent yet. A client
 * that goes away aborts the upstream request.
 *
 * Built on undici's `dispatch` rather than `request`: no body stream, no
 * `pipeline`, no AbortController per request — the response chunks are written
 * straight to `res`, and the upstream socket is paused while `res` is full.
 */
export function forward(req: IncomingMessage, res: ServerResponse, opts: ForwardOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const request: Dispatcher.DispatchOptions = {
      path: opts.path,
      method: req.method as Dispatcher.HttpMethod,
      headers: buildUpstreamHeaders(req, opts.dropHeaders, opts.addHeaders, opts.forwardedHost),
      body: hasRequestBody(req) ? req : null,
    };
    // The listener held back the 100 (listen.ts): the request is allowed now, so the client may send its body.
    if (req.headers.expect !== undefined) sendHeldContinue(res);
    new ForwardHandler(req, res, opts.dispatcher, request, opts.onResponse, opts.onBrokenResponse, resolve, reject).dispatch();
  });
}

/** RFC 9110 §9.2.2: the methods whose request a client may send again after the connection closed before any answer. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * Whether an upstream failure may be a keep-alive connection the upstream closed as the request went out on it (its
 * idle timer fired; RFC 9112 §9.3.1.1 calls this out), so the request was most likely never processed:
 * - the peer closed a connection it had sent bytes on (undici reports how much it had read: earlier responses, or the
 *   start of this one). A new connection closed before a byte of an answer is the upstream refusing the request
 *   instead, and is not retried;
 * - a reset, or a write to a connection already reset. undici's error for these does not say whether the connection
 *   was new, so a reset on a new connection counts too: the one extra attempt of an idempotent request that RFC 9110
 *   §9.2.2 allows.
 * undici's other socket errors are about what the upstream sent (`bad response` for a 100 Continue nobody asked for,
 * `bad upgrade` for a 101 to a plain request): the upstream got the request and answered it, so it is not sent again.
 */
function isStaleConnection(err: Error): boolean {
  const e = err as Error & { code?: unknown; socket?: { bytesRead?: unknown } };
  if (e.code === 'ECONNRESET' || e.code === 'EPIPE') return true;
  return e.code === 'UND_ERR_SOCKET' && e.message === UNDICI_PEER_CLOSED && typeof e.socket?.bytesRead === 'number' && e.socket.bytesRead > 0;
}

/** The message of undici's SocketError when the peer ended the connection (client-h1.js, onHttpSocketEnd). */
const UNDICI_PEER_CLOSED = 'other side closed';

class ClientGoneError extends Error {
  readonly code = 'client_aborted';
}

/** Passes a 103 Early Hints on to the client; a Link value Node will not write is dropped rather than failing the request. */
function relayEarlyHints(res: ServerResponse, headers: IncomingHttpHeaders): void {
  try {
    res.writeEarlyHints(forwardableResponseHeaders(headers, 103));
  } catch {
    // Hints are optional by nature (RFC 8297 §2): the final response still comes.
  }
}

/** Responses that never have a body (RFC 9110 §6.4.1), whatever Content-Length they announce. */
function hasNoBody(method: string | undefined, status: number): boolean {
  return method === 'HEAD' || status === 204 || status === 304;
}

/**
 * RFC 9112 §6.1: `chunked` is the only transfer coding the sidecar can relay (undici decodes it, Node re-encodes it).
 * Any other coding (gzip, compress, deflate) would reach the client as decoded bytes under headers that no longer say
 * so, so such a response is refused.
 */
function hasUnsupportedTransferCoding(headers: IncomingHttpHeaders): boolean {
  const te = headers['transfer-encoding'];
  return te !== undefined && (Array.isArray(te) ? te.join(',') : te).trim().toLowerCase() !== 'chunked';
}

/** One proxied exchange as an undici dispatch handler (one object instead of closures, a stream and a promise chain). */
class ForwardHandler implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined;
  private started = false;
  private settled = false;
  private clientGone = false;
  private retried = false;
  /** The response has neither Content-Length nor chunked framing: its body ends where the connection does. */
  private closeDelimited = false;

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly dispatcher: Dispatcher,
    private readonly request: Dispatcher.DispatchOptions,
    private readonly onResponse: ((status: number) => void) | undefined,
    private readonly onBrokenResponse: ((err: UpstreamError, req: IncomingMessage) => void) | undefined,
    private readonly resolve: () => void,
    private readonly reject: (err: UpstreamError) => void,
  ) {
    // A client that hung up before this exchange began (while a token was fetched) has already closed `res`:
    // its 'close' will not come again, so the request is cancelled as soon as undici starts it.
    if (req.socket.destroyed || res.destroyed) this.clientGone = true;
    else res.on('close', this.onClientClose);
  }

  dispatch(): void {
    this.dispatcher.dispatch(this.request, this);
  }

  /** The client's socket closed before the response was complete: cancel the upstream request. */
  private readonly onClientClose = (): void => {
    if (this.res.writableFinished || this.settled) return;
    this.clientGone = true;
    this.controller?.abort(new ClientGoneError('client went away'));
  };

  private readonly onDrain = (): void => {
    this.controller?.resume();
  };

  onRequestStart(controller: Dispatcher.DispatchController): void {
    // Nothing written yet (the client left while the request waited for a connection, or before forward() began):
    // throwing here makes undici drop the request unsent and keep the connection, which abort() would destroy, as the
    // deadline watch does for a request that timed out in the queue. The error reaches onResponseError.
    if (this.clientGone) throw new ClientGoneError('client went away');
    this.controller = controller;
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (this.settled) return;
    // 1xx informational answers are not the response; wait for the final one. A proxy passes them on (RFC 9110
    // §15.2), never to an HTTP/1.0 client; Node writes the one a client can act on, 103 Early Hints with a Link.
    if (statusCode < 200) {
      if (statusCode === 103 && this.req.httpVersionMinor === 1 && this.req.httpVersionMajor === 1 && !this.res.headersSent) relayEarlyHints(this.res, headers);
      return;
    }
    if (statusCode > 599) {
      // RFC 9110 §15: status codes run from 100 to 599; a client would be sent `HTTP/1.1 999 unknown`.
      controller.abort(new UpstreamError('upstream_bad_response', `upstream answered with status ${statusCode}, outside 100-599`));
      return;
    }
    if (hasUnsupportedTransferCoding(headers)) {
      controller.abort(new UpstreamError('upstream_bad_response', 'upstream used a transfer coding other than chunked'));
      return;
    }
    this.onResponse?.(statusCode);
    // The upstream answered before the request body was all here (an early 413, an app that does not read uploads):
    // what the client still sends must not be read as its next request, so the connection ends with this response.
    if (this.request.body !== null && !this.req.complete) this.res.shouldKeepAlive = false;
    try {
      this.res.writeHead(statusCode, forwardableResponseHeaders(headers, statusCode));
    } catch (err) {
      // Node refused a header undici accepted: treat like a broken upstream, before anything went out.
      controller.abort(err as Error);
      return;
    }
    this.started = true;
    if (hasNoBody(this.req.method, statusCode)) {
      // Complete as it stands. undici would still fail a 204/304 whose Content-Length is not 0 (it checks the length
      // for HEAD only), which would cut a response that has already been answered in full.
      this.settled = true;
      this.cleanup();
      this.res.end();
      this.resolve();
      return;
    }
    this.closeDelimited = headers['content-length'] === undefined && headers['transfer-encoding'] === undefined;
    this.res.on('drain', this.onDrain);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    // Backpressure: stop reading the upstream socket until the client drains what it has.
    if (!this.res.write(chunk)) controller.pause();
  }

  onResponseEnd(controller: Dispatcher.DispatchController): void {
    if (this.settled) return;
    if (this.closeDelimited && endingOnReset()) {
      this.onResponseError(controller, new UpstreamError('upstream_reset', 'upstream reset the connection during a body that ends with the connection'));
      return;
    }
    this.settled = true;
    this.cleanup();
    this.res.end();
    this.resolve();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (this.settled) return;
    // A stale keep-alive connection (see isStaleConnection): undici sends again only requests it had not written yet,
    // so an idempotent request without a body (nothing to replay) is sent once more, on another connection. Never a
    // POST or PATCH (RFC 9112 §9.3.1.1: a proxy must not retry non-idempotent requests), never twice.
    if (!this.retried && !this.started && !this.clientGone && this.request.body === null && IDEMPOTENT.has(this.request.method) && isStaleConnection(err)) {
      this.retried = true;
      this.controller = undefined;
      this.dispatch();
      return;
    }
    this.settled = true;
    this.cleanup();
    if (this.clientGone || err instanceof ClientGoneError) {
      this.res.destroy();
      this.resolve();
    } else if (err instanceof ClientStalledError) {
      // The client may still read what it was sent so far, later: that must not look like the whole body (cutResponse).
      cutResponse(this.res);
      this.resolve();
    } else if (this.started || this.res.headersSent) {
      // Headers are out: the only honest signal of a broken body is a cut connection, never a fake complete response.
      cutResponse(this.res);
      this.onBrokenResponse?.(toUpstreamError(err), this.req);
      this.resolve();
    } else {
      // A request body that broke because the client vanished is not the upstream's fault.
      if (this.req.destroyed && !this.req.complete) {
        this.res.destroy();
        this.resolve();
        return;
      }
      this.reject(toUpstreamError(err));
    }
  }

  private cleanup(): void {
    this.res.off('close', this.onClientClose);
    this.res.off('drain', this.onDrain);
  }
}

const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);

/**
 * An https upstream whose certificate is not trusted (OpenSSL's verification results, as Node names them), or with
 * which no TLS could be agreed (Node's ERR_TLS_* and OpenSSL's ERR_SSL_*, e.g. TLS sent to a plain-HTTP port): no
 * connection to the app was ever made, so a connect failure, named by its code, rather than a reset.
 */
const TLS_FAILURES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
  'HOSTNAME_MISMATCH',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
]);
const isTlsFailure = (code: string) => TLS_FAILURES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_');

/** undici error codes → our coded upstream errors (timeout → 504, connect failure → 502). */
export function toUpstreamError(err: unknown): UpstreamError {
  if (err instanceof UpstreamError) return err;
  // String(): an error's code is a string by convention only.
  const code = String((err as { code?: unknown }).code ?? '');
  const cause = String((err as { cause?: { code?: unknown } }).cause?.code ?? '');
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return new UpstreamError('upstream_timeout', 'upstream did not answer in time', { cause: err });
  }
  if (code === 'UPSTREAM_UPLOAD_STALLED') return new UpstreamError('upstream_timeout', 'upstream stopped reading the request body', { cause: err });
  if (code === 'UPSTREAM_QUEUE_TIMEOUT') return new UpstreamError('upstream_timeout', 'no upstream connection was free in time', { cause: err });
  // llhttp's parse errors, a response head over undici's 16 KiB, and a body shorter than its Content-Length on a
  // connection the upstream closed (undici sees a longer one only as the next response's garbage): the upstream broke
  // HTTP. undici 7 builds its HTTPParserError with `code` undefined (it looks the numeric llhttp error up in a table
  // keyed by name), so the error's name is what identifies a parse error; `HPE_*` stays for a release that fixes it.
  const name = String((err as { name?: unknown }).name ?? '');
  if (name === 'HTTPParserError' || code.startsWith('HPE_') || code === 'UND_ERR_HEADERS_OVERFLOW' || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') {
    return new UpstreamError('upstream_bad_response', 'upstream sent an invalid HTTP response', { cause: err });
  }
  // undici's words for a response it cannot take on a live connection: a 100 it never asked for (it sends no
  // Expect), or a 101 to a request that asked for no upgrade.
  if (code === 'UND_ERR_SOCKET' && /^bad (response|upgrade)$/.test(String((err as { message?: unknown }).message))) {
    return new UpstreamError('upstream_bad_response', 'upstream sent an invalid HTTP response', { cause: err });
  }
  const tls = isTlsFailure(code) ? code : isTlsFailure(cause) ? cause : undefined;
  if (tls !== undefined) return new UpstreamError('upstream_connect_failed', `upstream TLS handshake failed (${tls})`, { cause: err });
  if (CONNECT_FAILURES.has(code) || CONNECT_FAILURES.has(cause)) {
    return new UpstreamError('upstream_connect_failed', 'upstream is unreachable', { cause: err });
  }
  if (code === 'ECONNRESET' || cause === 'ECONNRESET') return new UpstreamError('upstream_reset', 'upstream closed the connection', { cause: err });
  return new UpstreamError('upstream_reset', 'upstream connection failed', { cause: err });
}
