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

  // The arguments go on as they came: Node tells `(status, headers)` from `(status, message, headers)` by their types.
  override writeHead(...args: [statusCode: number, ...rest: unknown[]]): this {
    if (!this.hasHeader('date') && !namesDate(args[args.length - 1])) this.setHeader('date', currentHttpDate());
    return (super.writeHead as (...a: unknown[]) => this)(...args);
  }
}

/** Whether the headers given to writeHead (an object, or Node's flat [name, value, ...] array) have a Date. */
function namesDate(headers: unknown): boolean {
  if (headers === null || typeof headers !== 'object') return false;
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) if (isDate(headers[i])) return true;
    return false;
  }
  if ('date' in headers) return true;
  for (const name in headers as OutgoingHttpHeaders) if (isDate(name)) return true;
  return false;
}

const isDate = (name: unknown) => typeof name === 'string' && name.length === 4 && name.toLowerCase() === 'date';
