import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Dispatcher } from 'undici';
import { UpstreamError } from '../errors.js';
import { forwardableHeaders, forwardableResponseHeaders } from './headers.js';

export interface ForwardOptions {
  dispatcher: Dispatcher;
  /** Path and query to send upstream (origin-form). */
  path: string;
  /** Lower-case header names removed from the request besides hop-by-hop ones. */
  dropHeaders: ReadonlySet<string>;
  /** Headers added after filtering (flat [name, value, ...]). */
  addHeaders: readonly string[];
  /** Called once the upstream's response headers are known (for metrics). */
  onResponse?: (status: number) => void;
}

/**
 * Streams `req` to the upstream and the upstream's answer back to `res`, with
 * backpressure both ways and no body buffering. Resolves when the exchange is
 * over; rejects with an UpstreamError only if no response headers were sent yet.
 * A client that goes away aborts the upstream request.
 */
export async function forward(req: IncomingMessage, res: ServerResponse, opts: ForwardOptions): Promise<void> {
  const abort = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) abort.abort();
  };
  res.once('close', onClose);
  const headers = forwardableHeaders(req.rawHeaders, opts.dropHeaders);
  appendForwarded(headers, req);
  for (const h of opts.addHeaders) headers.push(h);
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');

  let upstream: Dispatcher.ResponseData;
  try {
    upstream = await opts.dispatcher.request({
      path: opts.path,
      method: req.method as Dispatcher.HttpMethod,
      headers,
      body: hasBody ? req : null,
      signal: abort.signal,
    });
  } catch (err) {
    res.off('close', onClose);
    throw toUpstreamError(err);
  }
  opts.onResponse?.(upstream.statusCode);
  res.writeHead(upstream.statusCode, forwardableResponseHeaders(upstream.headers));
  try {
    await pipeline(upstream.body, res);
  } catch {
    // Client went away or upstream reset mid-body: headers are out, so the only honest signal is a cut connection.
    res.destroy();
    upstream.body.destroy();
  } finally {
    res.off('close', onClose);
  }
}

/** X-Forwarded-For/-Proto/-Host: appended to what earlier hops said (de-facto convention, RFC 7239 for the idea). */
function appendForwarded(headers: string[], req: IncomingMessage): void {
  const peer = req.socket.remoteAddress ?? '';
  const proto = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  mergeAppend(headers, 'x-forwarded-for', peer);
  mergeAppend(headers, 'x-forwarded-proto', proto);
  if (req.headers.host) mergeAppend(headers, 'x-forwarded-host', req.headers.host);
}

function mergeAppend(headers: string[], name: string, value: string): void {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() === name) {
      headers[i + 1] = `${headers[i + 1]}, ${value}`;
      return;
    }
  }
  headers.push(name, value);
}

/** undici error codes → our coded upstream errors (timeout → 504, connect failure → 502). */
export function toUpstreamError(err: unknown): UpstreamError {
  if (err instanceof UpstreamError) return err;
  const code = (err as { code?: string }).code ?? '';
  const cause = (err as { cause?: { code?: string } }).cause?.code ?? '';
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return new UpstreamError('upstream_timeout', 'upstream did not answer in time', { cause: err });
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || ['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ECONNRESET', 'EAI_AGAIN'].includes(code || cause)) {
    if (code === 'ECONNRESET' || cause === 'ECONNRESET') return new UpstreamError('upstream_reset', 'upstream closed the connection', { cause: err });
    return new UpstreamError('upstream_connect_failed', 'upstream is unreachable', { cause: err });
  }
  return new UpstreamError('upstream_reset', 'upstream connection failed', { cause: err });
}
