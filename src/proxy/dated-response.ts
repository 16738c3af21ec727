import { ServerResponse, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { currentHttpDate } from '../time-text.js';

/**
 * The response class of every listener (the `ServerResponse` server option): the `Date` header of a response that
 * has none (the sidecar's own answers, an upstream's that lacked one) is written by `currentHttpDate` instead of
 * Node, whose `toUTCString` would load V8's time zone cache and with it ~1 MiB of the binary's ICU data
 * (src/time-text.ts). An origin server with a clock must send one (RFC 9110 §6.6.1), and a proxy adds one to a
 * response that lacks it (§6.6.1 too), as Node did. An upstream's own `Date` passes through untouched.
 */
export class DatedResponse<Request extends IncomingMessage = IncomingMessage> extends ServerResponse<Request> {
  constructor(req: Request) {
    super(req);
    this.sendDate = false;
  }

  // Node tells `(status, headers)` from `(status, message, headers)` by the second argument's type. The Date goes into
  // the headers given, not through setHeader: once a header is set, Node merges the given ones in one by one, so one
  // that fails validation left the others set for the 502 that follows, and on Node 20 a repeated name in a raw array
  // kept only its last value.
  override writeHead(statusCode: number, messageOrHeaders?: unknown, headers?: unknown): this {
    const withMessage = typeof messageOrHeaders === 'string';
    let given = withMessage ? headers : messageOrHeaders;
    if (!namesDate(given) && !this.hasHeader('date')) {
      const date = currentHttpDate();
      if (given === undefined || given === null) this.setHeader('date', date);
      else if (Array.isArray(given)) given = Array.isArray(given[0]) ? [...(given as unknown[]), ['date', date]] : [...(given as unknown[]), 'date', date];
      else given = { ...(given as OutgoingHttpHeaders), date };
    }
    const write = super.writeHead as (...a: unknown[]) => this;
    return withMessage ? write.call(this, statusCode, messageOrHeaders, given) : write.call(this, statusCode, given);
  }
}

/** Whether the headers given to writeHead (an object, Node's flat [name, value, ...] array, or [name, value] pairs) have a Date. */
function namesDate(headers: unknown): boolean {
  if (headers === null || typeof headers !== 'object') return false;
  if (Array.isArray(headers)) {
    if (Array.isArray(headers[0])) return headers.some((pair: unknown[]) => isDate(pair[0]));
    for (let i = 0; i < headers.length; i += 2) if (isDate(headers[i])) return true;
    return false;
  }
  if ('date' in headers) return true;
  for (const name in headers as OutgoingHttpHeaders) if (isDate(name)) return true;
  return false;
}

const isDate = (name: unknown) => typeof name === 'string' && name.length === 4 && name.toLowerCase() === 'date';
