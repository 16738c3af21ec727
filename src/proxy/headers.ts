import type { IncomingMessage } from 'node:http';
import { peerAddress } from './peer-address.js';

/**
 * Header hygiene for a forwarding proxy (RFC 9110 §7.6.1): hop-by-hop headers
 * and every header named in `Connection` belong to one connection and are
 * never forwarded. Header names here are lower-case.
 */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);

/**
 * True for a header that must not cross this proxy: the hop-by-hop list plus
 * any `Proxy-*` header (credentials and state meant for the proxy itself), and
 * `Proxy` itself, which no standard defines but CGI-style apps read as the
 * HTTP_PROXY variable their HTTP clients route through (httpoxy, CVE-2016-5385).
 */
export function isHopByHop(lowerName: string): boolean {
  return HOP_BY_HOP.has(lowerName) || lowerName.startsWith('proxy-') || lowerName === 'proxy';
}

/**
 * The X-Forwarded-* headers this proxy appends to, with every `-` written `_`: a caller's `X_Forwarded_For` (or
 * `X.Forwarded.For`) would reach the app beside the real list and read as the same HTTP_X_FORWARDED_FOR, so those
 * spellings are always dropped.
 */
const FORWARDED_UNDERSCORED = new Set(['x_forwarded_for', 'x_forwarded_proto', 'x_forwarded_host']);

/**
 * Headers by which a proxy in front tells an app who the client is, how and where it connected, or which URL it asked
 * for. With `inbound.forwardedHeaders: replace` the caller's are removed, so the app hears of these from this sidecar
 * alone: Express and Koa behind a trusted proxy take the scheme and host from the first element of
 * X-Forwarded-Proto/-Host, which with `append` is the caller's to choose, and older Symfony and Zend apps route by
 * X-Original-URL/X-Rewrite-URL, past the path the rules judged. Rails reads Client-IP, Tomcat X-Forwarded-By, and an
 * app behind Envoy takes X-Forwarded-Client-Cert for its caller's certificate.
 */
export const CLIENT_INFO_HEADERS: readonly string[] = [
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-forwarded-scheme',
  'x-forwarded-server',
  'x-forwarded-ssl',
  'x-forwarded-uri',
  'x-forwarded-protocol',
  'x-forwarded-by',
  'x-forwarded-client-cert',
  'x-real-ip',
  'x-client-ip',
  'client-ip',
  'x-cluster-client-ip',
  'true-client-ip',
  'x-url-scheme',
  'front-end-https',
  'x-original-host',
  'x-original-url',
  'x-rewrite-url',
];

/** A character of a lower-case header name other than a letter, a digit or `-` (a token may also hold `!#$%&'*+.^_`|~`). */
const PUNCTUATION = /[^a-z0-9-]/;
const EVERY_PUNCTUATION = /[^a-z0-9]/g;

/**
 * A lower-case header name with every character other than a letter or a digit written `-`, as a CGI-style app sees
 * it; undefined when that is the name itself. lighttpd turns each such character into `_` when it makes the variable
 * (`X.Peer.Sub`, `x+peer+sub` and `X_Peer_Sub` all become HTTP_X_PEER_SUB), WSGI servers, Rack and PHP-FPM at least
 * `-`.
 */
export function cgiSpelling(lowerName: string): string | undefined {
  return PUNCTUATION.test(lowerName) ? lowerName.replace(EVERY_PUNCTUATION, '-') : undefined;
}

/**
 * Whether a lower-case header name is dropped. CGI-style apps read `X_Peer_Sub`, `X.Peer-Sub` and `X-Peer-Sub` alike
 * as HTTP_X_PEER_SUB, so a name with punctuation other than `-` is compared in its cgiSpelling too: a `drop` entry in
 * `-` spelling drops every spelling; an entry in `_` spelling (every `-` written `_`) drops only the spellings with
 * such punctuation, for a header that passes but must not be doubled (a kept token header); and those spellings of
 * X-Forwarded-For/-Proto/-Host are always dropped. Names of letters, digits and `-` (nearly all) cost one Set lookup
 * and one scan.
 */
export function isDropped(lowerName: string, drop: ReadonlySet<string>): boolean {
  if (drop.has(lowerName)) return true;
  const dashed = cgiSpelling(lowerName);
  if (dashed === undefined) return false;
  if (drop.has(dashed)) return true;
  const underscored = dashed.replaceAll('-', '_');
  return FORWARDED_UNDERSCORED.has(underscored) || drop.has(underscored);
}

/** Names listed in the Connection header(s), lower-cased. */
export function connectionTokens(rawHeaders: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() !== 'connection') continue;
    addTokens(out, rawHeaders[i + 1]!);
  }
  return out;
}

function addTokens(out: Set<string>, value: string): void {
  for (const token of value.split(',')) {
    const t = token.trim().toLowerCase();
    if (t) out.add(t);
  }
}

/**
 * Header names a Connection value adds to the hop-by-hop list, or undefined
 * for the everyday `keep-alive` / `close` (whose names are hop-by-hop anyway),
 * so the common request allocates no Set.
 */
function extraNamed(value: string, named: Set<string> | undefined): Set<string> | undefined {
  if (value.length <= 10) {
    const v = value.toLowerCase();
    if (v === 'keep-alive' || v === 'close') return named;
  }
  const out = named ?? new Set<string>();
  addTokens(out, value);
  return out;
}

/** Connection-named headers, or undefined when there is no Connection header (the common case: no Set allocated). */
function namedByConnection(rawHeaders: readonly string[]): Set<string> | undefined {
  let named: Set<string> | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    // Cheap length check first: this loop runs on every request.
    if (name.length !== 10 || name.toLowerCase() !== 'connection') continue;
    named = extraNamed(rawHeaders[i + 1]!, named);
  }
  return named;
}

/**
 * The header list sent upstream for a proxied request, built in one pass:
 * hop-by-hop, Connection-named and `drop` headers (any `_` spelling, see isDropped) removed; `Expect` removed
 * too (forward() answers `100-continue` to the client itself, RFC 9110 §10.1.1);
 * `X-Forwarded-For/-Proto/-Host` appended to what earlier hops said (the
 * de-facto convention; RFC 7239 §4 for the idea), several lines merged into
 * one with no empty element (see mergeList); then `add` appended. `X-Forwarded-Host` says `forwardedHost` when
 * given (a forward proxy names the authority it routed to: RFC 9112 §3.2.2 has it ignore the Host of an
 * absolute-form request), else the request's Host; with neither, the caller's X-Forwarded-Host is removed.
 * `traceparent`/`tracestate` and every other end-to-end header pass untouched.
 */
export function buildUpstreamHeaders(req: IncomingMessage, drop: ReadonlySet<string>, add: readonly string[], forwardedHost?: string): string[] {
  const raw = req.rawHeaders;
  const named = namedByConnection(raw);
  const out: string[] = [];
  let xff = -1;
  let xfp = -1;
  let xfh = -1;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (isHopByHop(lower) || lower === 'expect' || isDropped(lower, drop) || named?.has(lower)) continue;
    // Several X-Forwarded-* lines are merged into the first so the appended hop lands at the end of one list.
    if (lower === 'x-forwarded-for') xff = mergeList(out, xff, name, raw[i + 1]!);
    else if (lower === 'x-forwarded-proto') xfp = mergeList(out, xfp, name, raw[i + 1]!);
    else if (lower === 'x-forwarded-host') xfh = mergeList(out, xfh, name, raw[i + 1]!);
    else out.push(name, raw[i + 1]!);
  }
  const socket = req.socket as { remoteAddress?: string; encrypted?: boolean };
  appendAt(out, xff, 'x-forwarded-for', peerAddress(socket) ?? '');
  appendAt(out, xfp, 'x-forwarded-proto', socket.encrypted ? 'https' : 'http');
  const host = forwardedHost ?? req.headers.host;
  if (host) appendAt(out, xfh, 'x-forwarded-host', host);
  // No Host to append (an empty one, or an HTTP/1.0 request without): the caller's list would reach the app with its
  // own last element, the one an app trusts as the sidecar's, so it does not pass at all.
  else if (xfh >= 0) out.splice(xfh - 1, 2);
  for (let i = 0; i < add.length; i++) out.push(add[i]!);
  return out;
}

/**
 * Adds one incoming line of a list header to the merged line at `valueIndex` (or starts it); returns the merged
 * line's value index. A blank line or one with a comma at an edge would put an empty element in the list the app
 * gets (`, 127.0.0.1`), which a sender must not generate (RFC 9110 §5.6.1) and which an app taking the first
 * element as the client, or as the original scheme, would read as "": edge commas and OWS are trimmed, and a line
 * left empty adds nothing.
 */
function mergeList(out: string[], valueIndex: number, name: string, value: string): number {
  const v = trimEdges(value, true);
  if (v === '') return valueIndex;
  if (valueIndex >= 0) {
    out[valueIndex] = `${out[valueIndex]}, ${v}`;
    return valueIndex;
  }
  out.push(name, v);
  return out.length - 1;
}

/**
 * `value` without OWS (SP, HTAB) at either edge, and without commas there too with `commas`; the value itself (no
 * copy) when there is nothing to trim. By index, not by regex: `/[ \t]+$/` is quadratic on a long run of spaces
 * that is not at the end, which a caller can put in a 16 KiB header.
 */
function trimEdges(value: string, commas: boolean): string {
  let start = 0;
  let end = value.length;
  while (start < end && isEdge(value.charCodeAt(start), commas)) start++;
  while (end > start && isEdge(value.charCodeAt(end - 1), commas)) end--;
  return start === 0 && end === value.length ? value : value.slice(start, end);
}

function isEdge(c: number, commas: boolean): boolean {
  return c === 0x20 || c === 0x09 || (commas && c === 0x2c);
}

function appendAt(out: string[], valueIndex: number, name: string, value: string): void {
  if (valueIndex >= 0) out[valueIndex] = `${out[valueIndex]}, ${value}`;
  else out.push(name, value);
}

/** The same filtering for a response header object as undici returns it. */
export function forwardableResponseHeaders(headers: Record<string, string | string[] | undefined>, status = 200): Record<string, string | string[]> {
  let named: Set<string> | undefined;
  const conn = headers.connection;
  if (typeof conn === 'string') named = extraNamed(conn, undefined);
  else if (conn !== undefined) for (const v of conn) named = extraNamed(v, named);
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    const lower = name.toLowerCase();
    if (isHopByHop(lower) || named?.has(lower)) continue;
    // RFC 9110 §8.6: no Content-Length in a 1xx or 204, which have no body; a client that believed one would read
    // the start of its next response as this one's body.
    if (lower === 'content-length' && (status < 200 || status === 204)) continue;
    out[name] = value;
  }
  return out;
}

/**
 * Whether an Upgrade request asks for WebSocket and nothing else: every
 * `Upgrade` line together names exactly one protocol, `websocket` in any
 * letter case (RFC 6455 §4.1; empty list elements ignored, RFC 9110 §5.6.1).
 * A list is refused even when it names `websocket`: the server picks one
 * protocol from it (RFC 9110 §7.8), so `websocket, h2c` would let the app
 * switch to HTTP/2 on a connection the sidecar checked once, and every
 * request sent over it afterwards would bypass the token check and the rules
 * (h2c smuggling). A protocol version (`websocket/13`) is not WebSocket's
 * token either.
 */
export function isWebSocketUpgrade(rawHeaders: readonly string[]): boolean {
  let protocols = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length !== 7 || name.toLowerCase() !== 'upgrade') continue;
    for (const element of rawHeaders[i + 1]!.split(',')) {
      // Only OWS (SP, HTAB) is trimmed: String.trim() would also take U+00A0, which a latin1 header value can hold.
      // By index (trimEdges): the regex this was, /^[ \t]+|[ \t]+$/g, took ~0.2 s of event loop for one 16 KiB
      // element with a long run of spaces inside, and it runs before the token is looked at.
      const protocol = trimEdges(element, false);
      if (protocol === '') continue;
      if (++protocols > 1 || protocol.toLowerCase() !== 'websocket') return false;
    }
  }
  return protocols === 1;
}

/**
 * Whether an `Upgrade` request is a WebSocket opening handshake as RFC 6455
 * §4.1 defines it: a `GET`, without a body, asking for `websocket` alone
 * (isWebSocketUpgrade). Node hands every byte after an upgrade request's head
 * to the tunnel, so a body would reach the app as if it were WebSocket data
 * sent after the 101, and an app waiting for that body before its 101 would
 * wait until the upstream timeout.
 */
export function isWebSocketHandshake(req: IncomingMessage): boolean {
  // HTTP/1.1 only: a server must ignore Upgrade in an HTTP/1.0 request (RFC 9110 §7.8), and WebSocket needs 1.1 (RFC 6455 §4.1).
  return req.method === 'GET' && req.httpVersion === '1.1' && !hasRequestBody(req) && isWebSocketUpgrade(req.rawHeaders);
}

/** RFC 9112 §6.3: a request has a body only when it says so with Transfer-Encoding or a non-zero Content-Length. */
export function hasRequestBody(req: IncomingMessage): boolean {
  const h = req.headers;
  return h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
}

/** Every value of a header in `rawHeaders` (case-insensitive name). */
export function headerValues(rawHeaders: readonly string[], lowerName: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === lowerName) out.push(rawHeaders[i + 1]!);
  }
  return out;
}
