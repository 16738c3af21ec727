import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { writeRawError } from './respond.js';

/** Why a request is refused before any handler sees it. */
export interface RequestViolation {
  status: 400 | 431;
  reason: 'too_many_headers' | 'bad_request';
  message: string;
}

/**
 * Checks what Node's parser does not, the same way on every Node version:
 * the header count and a single Host. Node's own `maxHeadersCount` is off
 * (listen.ts): on Node 20 it silently truncates `req.headers` while
 * `req.rawHeaders` keeps everything, so a header past the limit (a second
 * Authorization, say) would be invisible to one check and visible to the
 * next, and on Node 22+ it fails the parse with the code of an oversize
 * block. Refusing the request with 431 (RFC 6585 §5) here removes the
 * ambiguity. Two Host headers get 400 (RFC 9112 §3.2). Returns undefined
 * when fine.
 */
export function checkRequestHead(req: IncomingMessage, maxHeaderCount: number): RequestViolation | undefined {
  const raw = req.rawHeaders;
  if (raw.length > maxHeaderCount * 2) {
    return { status: 431, reason: 'too_many_headers', message: `more than ${maxHeaderCount} request headers` };
  }
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host' && ++hosts > 1) {
      return { status: 400, reason: 'bad_request', message: 'more than one Host header' };
    }
  }
  return undefined;
}

/** Node's parser and timeout errors → the status and reason code the client gets. */
export function clientErrorResponse(code: string | undefined): { status: number; reason: string } {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return { status: 431, reason: 'headers_too_large' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      // Node raises this for both the headers timeout (slowloris) and the whole-request timeout.
      return { status: 408, reason: 'request_timeout' };
    default:
      return { status: 400, reason: 'bad_request' };
  }
}

/**
 * The server's `clientError` handler: a malformed request, an oversize header
 * block or a client too slow to send its headers gets the right 4xx on its own
 * connection, and the server keeps serving everyone else. When a response is
 * already under way on that socket, writing another one would corrupt it, so
 * the connection is cut instead (as Node's default handler does).
 */
export function handleClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (!socket.writable || inFlight?.headersSent || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const { status, reason } = clientErrorResponse(err.code);
  writeRawError(socket, status, reason);
}
