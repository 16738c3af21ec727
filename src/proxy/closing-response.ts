import type { IncomingMessage, ServerResponse } from 'node:http';
import { DatedResponse } from './dated-response.js';

/**
 * The response class of a listener (the `ServerResponse` server option): once the listener is closing (a drain at
 * SIGTERM, or a reload that moved it), a response whose head goes out from then on says `Connection: close` and its
 * connection ends with it (RFC 9112 §9.6). Without this a request already in flight when the drain began was answered
 * `Connection: keep-alive`; the client then sent its next request on that connection just as the drain closed it as
 * idle, and a POST was lost to a reset with no way to tell whether the app had seen it. Every head goes through
 * writeHead (Node's implicit header calls it too), so this is the one place to decide, at no cost per request.
 */
export function closingAwareResponse(isClosing: () => boolean): typeof ServerResponse {
  return class ClosingAwareResponse<Request extends IncomingMessage = IncomingMessage> extends DatedResponse<Request> {
    // The arguments go on as they came (DatedResponse tells the two forms apart).
    override writeHead(statusCode: number, messageOrHeaders?: unknown, headers?: unknown): this {
      if (isClosing()) this.shouldKeepAlive = false;
      return (super.writeHead as (...a: unknown[]) => this).call(this, statusCode, messageOrHeaders, headers);
    }
  };
}
