import type { Dispatcher } from 'undici';
import type { CaBundle } from '../config/ca-bundle.js';
import { SidecarError } from '../errors.js';
import { Agent } from '../proxy/undici-core.js';
import { parseHttpDate } from '../time-text.js';

/** Control-plane responses (discovery, JWKS, token) larger than this are refused. */
const MAX_BODY_BYTES = 1024 * 1024;

/**
 * The dispatcher for talking to an IdP: its own Agent (so IdP traffic never
 * shares pools with the data path), an optional private CA (the PEM bundle the
 * config loaded from `caFile`), and no redirects (a redirected JWKS fetch is
 * how key-injection attacks start). Whoever creates it closes it.
 */
export function createIdpAgent(opts: { ca?: CaBundle | undefined; timeoutMs: number }): Agent {
  return new Agent({
    connect: { timeout: opts.timeoutMs, ...(opts.ca ? { ca: opts.ca.pem } : {}) },
    headersTimeout: opts.timeoutMs,
    bodyTimeout: opts.timeoutMs,
    keepAliveTimeout: 30_000,
  });
}

/**
 * A URL as error messages (and so logs and `/readyz`) show it: no user info and no query, which is where a configured
 * endpoint would carry a credential (`https://user:pass@idp/token`, `?api_key=`). A query is marked `?…` so it is
 * clear there was one.
 */
export function shownUrl(url: string): string {
  if (!URL.canParse(url)) return '(an unparsable URL)';
  const u = new URL(url);
  return `${u.protocol}//${u.host}${u.pathname}${u.search ? '?…' : ''}`;
}

/** A failed control-plane HTTP call; `code` says which step failed. */
export class IdpHttpError extends SidecarError {
  readonly httpStatus: number | undefined;
  /** The parsed JSON body of an error response, if any (OAuth errors, RFC 6749 §5.2). */
  readonly body: unknown;
  /** The answer's `Retry-After` header as sent, if any (read by `retryAfterMs`). */
  readonly retryAfter: string | string[] | undefined;
  constructor(code: string, message: string, httpStatus?: number, body?: unknown, options?: { cause?: unknown; retryAfter?: string | string[] | undefined }) {
    const { retryAfter, ...errorOptions } = options ?? {};
    super(code, message, 503, errorOptions);
    this.httpStatus = httpStatus;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

/** A `Retry-After` header (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) as ms from `nowMs`; undefined when absent or unreadable. */
export function retryAfterMs(header: string | string[] | undefined, nowMs: number): number | undefined {
  const value = (Array.isArray(header) ? header[0] : header)?.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = parseHttpDate(value, nowMs);
  return at === undefined ? undefined : Math.max(0, at - nowMs);
}

export interface JsonResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

/**
 * One HTTP exchange with an IdP endpoint, JSON in the answer. Bounded in time
 * and size; never follows redirects. Non-2xx answers resolve (callers decide);
 * network failures, timeouts, oversize or non-JSON bodies reject with IdpHttpError.
 */
export async function requestJson(
  dispatcher: Dispatcher,
  url: string,
  init: { method?: 'GET' | 'POST'; headers?: Record<string, string>; body?: string; timeoutMs: number },
): Promise<JsonResponse> {
  let res: Dispatcher.ResponseData;
  try {
    res = await dispatcher.request({
      origin: new URL(url).origin,
      path: new URL(url).pathname + new URL(url).search,
      method: init.method ?? 'GET',
      headers: { accept: 'application/json', ...init.headers },
      body: init.body ?? null,
      signal: AbortSignal.timeout(init.timeoutMs),
    });
  } catch (err) {
    throw new IdpHttpError('idp_unreachable', `${shownUrl(url)}: ${describeNetworkError(err)}`, undefined, undefined, { cause: err });
  }
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length;
      if (size > MAX_BODY_BYTES) {
        res.body.destroy();
        throw new IdpHttpError('idp_bad_response', `${shownUrl(url)}: response larger than ${MAX_BODY_BYTES} bytes`, res.statusCode);
      }
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    if (err instanceof IdpHttpError) throw err;
    throw new IdpHttpError('idp_unreachable', `${shownUrl(url)}: ${describeNetworkError(err)}`, res.statusCode, undefined, { cause: err });
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let body: unknown;
  try {
    body = text.length ? JSON.parse(text) : undefined;
  } catch {
    if (res.statusCode >= 200 && res.statusCode < 300) {
      throw new IdpHttpError('idp_bad_response', `${shownUrl(url)}: answered HTTP ${res.statusCode} with a body that is not JSON`, res.statusCode);
    }
    body = undefined;
  }
  return { status: res.statusCode, headers: res.headers, body };
}

function describeNetworkError(err: unknown): string {
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string } };
  if (e.name === 'TimeoutError' || e.name === 'AbortError' || e.code?.includes('TIMEOUT')) return 'timed out';
  const code = e.code ?? e.cause?.code;
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'host not found';
  return e.message ?? String(err);
}
