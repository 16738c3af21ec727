import { SidecarError } from '../errors.js';

/** A request path the sidecar refuses to interpret: 400, never forwarded. */
export class BadPathError extends SidecarError {
  static override readonly isAnswer = true;
  constructor(message: string) {
    super('bad_path', message, 400);
  }
}

/** The request target split into the normalised path and the untouched query (with its `?`, or ''). */
export interface RequestTarget {
  path: string;
  query: string;
}

const HEX = '0123456789ABCDEF';
/** `http://authority` or `https://authority` at the start of an absolute-form target, the authority captured. */
const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)/i;
/** An authority with no host: nothing, or a port alone (`http://:80/`). */
const NO_HOST = /^(?::[0-9]*)?$/;
const UNRESERVED = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1;

/**
 * Splits a request-target (RFC 9112 §3.2) into a normalised path and the
 * query. Origin-form and absolute-form are accepted (a server MUST accept the
 * latter, §3.2.2); asterisk-form and authority-form are not for this listener.
 * An absolute-form target must be an `http` or `https` URL with a host and no
 * user info (RFC 9110 §4.2.1, §4.2.4: user info is to be treated as an error);
 * its authority is otherwise not used, the path is.
 */
export function normalizeTarget(target: string): RequestTarget {
  let rest = target;
  if (!rest.startsWith('/')) {
    const absolute = ABSOLUTE_FORM.exec(rest);
    if (!absolute) throw new BadPathError('request target must be a path or an http(s) URL');
    if (NO_HOST.test(absolute[1]!) || absolute[1]!.includes('@')) throw new BadPathError('request target URL must have a host and no user info');
    rest = rest.slice(absolute[0].length);
    if (!rest.startsWith('/')) rest = `/${rest}`;
  }
  const q = rest.indexOf('?');
  const rawPath = q === -1 ? rest : rest.slice(0, q);
  return { path: normalizePath(rawPath), query: q === -1 ? '' : rest.slice(q) };
}

/**
 * Puts a path into the one canonical form that rules are matched against and
 * that the app receives, so the sidecar and the app never disagree about which
 * resource is asked for:
 * - percent-encoded unreserved characters are decoded, other escapes get
 *   upper-case hex (RFC 3986 §6.2.2.1, §6.2.2.2), so `%2e%2e` is `..`;
 * - `.` and `..` segments are resolved (RFC 3986 §5.2.4; `..` never climbs above `/`);
 * - empty segments (`//`) collapse.
 * Refused with 400 because servers disagree about them (path confusion):
 * encoded `/` (`%2F`) and `\` (`%5C`), NUL (`%00`) and other control characters (`%0A`), a raw `\` (treated as `/`
 * by some stacks), `;` (path parameters are stripped before routing by some
 * frameworks, e.g. Java servlet containers), `#`, control characters, bytes
 * outside printable ASCII and broken escapes. Case is kept: paths are
 * case-sensitive (RFC 3986 §6.2.2.1).
 * Idempotent: normalizePath(normalizePath(p)) === normalizePath(p).
 */
export function normalizePath(path: string): string {
  if (!path.startsWith('/')) throw new BadPathError('path must start with "/"');
  let decoded = '';
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0x25) {
      const hi = hexValue(path.charCodeAt(i + 1));
      const lo = hexValue(path.charCodeAt(i + 2));
      if (hi < 0 || lo < 0) throw new BadPathError('path has a broken percent-escape');
      const byte = hi * 16 + lo;
      if (byte === 0x2f || byte === 0x5c) throw new BadPathError('path has an encoded "/" or "\\"');
      if (byte === 0) throw new BadPathError('path has an encoded NUL');
      // Refused raw, so refused escaped: an app that decodes before routing would meet the raw byte anyway, and a
      // line break is what a rule pattern compiled to a regex without dotall misses (`/admin%0a`, CVE-2022-22978).
      if (byte < 0x20 || byte === 0x7f) throw new BadPathError('path has an encoded control character');
      decoded += byte < 128 && UNRESERVED[byte] === 1 ? String.fromCharCode(byte) : `%${HEX[hi]}${HEX[lo]}`;
      i += 2;
      continue;
    }
    if (c <= 0x20 || c >= 0x7f) throw new BadPathError('path has a control character, space or non-ASCII byte');
    if (c === 0x5c) throw new BadPathError('path has a "\\"');
    if (c === 0x3b) throw new BadPathError('path has a ";" (path parameters are not accepted)');
    if (c === 0x23) throw new BadPathError('path has a "#"');
    decoded += path[i];
  }
  return removeDotSegments(decoded);
}

/**
 * The printable characters a request path may also carry plain (normalizePath takes them raw), whose escapes rules
 * read as the character: all of 0x21-0x7E but `%`, `/` and `\\` (refused encoded), `;` and `#` (refused raw), `?` (a
 * query would begin) and `*` (a rule's wildcard). The unreserved ones are decoded already.
 */
const PLAIN_IN_RULES = new Uint8Array(128);
for (let c = 0x21; c <= 0x7e; c++) PLAIN_IN_RULES[c] = '%/\\;#?*'.includes(String.fromCharCode(c)) ? 0 : 1;
const ESCAPE = /%[0-9A-F]{2}/g;
const asPlain = (escape: string): string => {
  const byte = Number.parseInt(escape.slice(1), 16);
  return byte < 128 && PLAIN_IN_RULES[byte] === 1 ? String.fromCharCode(byte) : escape;
};

/**
 * The spelling of a normalised path that rules are matched in. RFC 3986 §6.2.2.2 keeps `%40` and `@` apart, but an
 * app that decodes the path before routing (WSGI's PATH_INFO, servlets, ASP.NET Core, Go) reads them as one, so a
 * rule for `/users/@admin/**` must meet `/users/%40admin/keys` too, and a rule written `/jobs/*%3Arun` must meet
 * `/jobs/7:run`: every escape of a character a path may carry plain is decoded here. `*` goes the other way, since in a
 * rule it is the wildcard and a literal star is written `%2A`: a request's plain `*` is compared as `%2A` (`forGlob`
 * leaves a rule's stars alone). An app that routes on the escapes as sent may see another path than this spelling,
 * so the authorizer holds a request to the rule its spelling as sent meets as well (the stricter of the two wins).
 */
export function ruleSpelling(path: string, forGlob = false): string {
  const decoded = path.includes('%') ? path.replace(ESCAPE, asPlain) : path;
  return forGlob || !decoded.includes('*') ? decoded : decoded.replaceAll('*', '%2A');
}

/** RFC 3986 §5.2.4 on an absolute path, also collapsing empty segments. Keeps a trailing slash. */
function removeDotSegments(path: string): string {
  const segments = path.split('/');
  const out: string[] = [];
  let trailingSlash = false;
  // segments[0] is the empty string before the leading '/'.
  for (let i = 1; i < segments.length; i++) {
    const s = segments[i]!;
    const last = i === segments.length - 1;
    if (s === '' || s === '.') {
      if (last) trailingSlash = true;
      continue;
    }
    if (s === '..') {
      out.pop();
      if (last) trailingSlash = true;
      continue;
    }
    out.push(s);
  }
  if (out.length === 0) return '/';
  return `/${out.join('/')}${trailingSlash ? '/' : ''}`;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}
