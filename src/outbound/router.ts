import type { CaBundle } from '../config/ca-bundle.js';
import type { RouteConfig } from '../config/schema.js';
import { ConfigError, RouteNotFoundError } from '../errors.js';
import { canonicalHost } from './canonical-host.js';

/** A host and port as a request named them; `host` is lower-case, IPv6 in brackets. */
export interface Authority {
  host: string;
  /** `host` as routes compare it (canonicalHost): `127.1` is `127.0.0.1`, `orders.` is `orders`. */
  key: string;
  port: number;
  /** Whether the port was written out (else it is the scheme's default). */
  explicitPort: boolean;
}

/** Where a request goes: scheme + authority, plus a base path prefixed to every request path. */
export interface Target {
  origin: string;
  basePath: string;
  /** The route's CA bundle for an https target, as the config loaded it. */
  ca?: CaBundle;
}

export type Resolution =
  | { kind: 'route'; route: RouteConfig; target: Target; path: string; authority: string }
  | { kind: 'passthrough'; target: Target; path: string; authority: string }
  /** `host`: the authority asked for, when it parsed but has no route. */
  | { kind: 'reject'; status: number; reason: string; message: string; host?: string };

export interface Router {
  /** Routes an HTTP request by its absolute-form target (HTTP_PROXY style) or else its Host header (origin-form). */
  resolve(url: string, hostHeader: string | undefined): Resolution;
  /** The route for a CONNECT authority (`host:port`), or undefined; `authority` undefined when it does not parse. */
  resolveConnect(target: string): { route?: RouteConfig; authority?: Authority };
}

const AUTHORITY = /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(\d{1,5}))?$/;

/** Parses `host`, `host:port` or `[v6]:port` (case-insensitive); undefined when it is not one. */
export function parseAuthority(text: string, defaultPort: number): Authority | undefined {
  const m = AUTHORITY.exec(text.toLowerCase());
  if (!m || m[1]!.startsWith('.') || m[1]!.endsWith('-')) return undefined;
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (m[2] !== undefined && !(port > 0 && port <= 65535)) return undefined;
  const key = canonicalHost(m[1]!);
  if (key === undefined) return undefined;
  return { host: m[1]!, key, port, explicitPort: m[2] !== undefined };
}

/** The key a route with this authority is stored under: `key:port` with a port, `key` without (any port). */
export function routeKey(a: Authority): string {
  return a.explicitPort ? `${a.key}:${a.port}` : a.key;
}

function formatAuthority(a: Authority): string {
  return a.explicitPort ? `${a.host}:${a.port}` : a.host;
}

/** The route's `target`, default `http://{host}` (the route's host, with its port if it has one). */
export function routeTarget(route: RouteConfig): Target {
  const url = new URL(route.target ?? `http://${route.host}`);
  const basePath = url.pathname.replace(/\/+$/, '');
  return route.ca ? { origin: url.origin, basePath, ca: route.ca } : { origin: url.origin, basePath };
}

const reject = (status: number, reason: string, message: string): Resolution => ({ kind: 'reject', status, reason, message });

/**
 * Whether a request path (query excluded) has a `.` or `..` segment, escaped (`%2e`) or not. Paths are forwarded as
 * sent, so behind a target path `/payments` the call `/../orders/admin` would reach `/payments/../orders/admin`, which
 * a gateway in front of several services resolves to `/orders/admin`: the payments token sent to another service's
 * path. Segments are cut where any server might cut them: at `/`, `\` and their escapes, and before a `;` (`..;` is
 * `..` to Tomcat). Clients resolve dot segments before sending (RFC 3986 §5.2.4), so such a path is refused rather
 * than guessed at.
 */
export function hasDotSegment(pathAndQuery: string): boolean {
  const q = pathAndQuery.indexOf('?');
  const path = q === -1 ? pathAndQuery : pathAndQuery.slice(0, q);
  if (!path.includes('.') && !/%2e/i.test(path)) return false;
  return path.split(/\/|\\|%2f|%5c/i).some((segment) => {
    const dots = segment.split(';', 1)[0]!.replace(/%2e/gi, '.');
    return dots === '.' || dots === '..';
  });
}

/**
 * Outbound routing by host. A route host with a port matches only that port;
 * one without matches any port; both compare exactly once canonicalised (no
 * suffix or wildcard match, so `payments.evil` is not `payments`). Route hosts
 * and request hosts go through the same canonicalHost, so every spelling that
 * reaches a routed peer (`127.1`, `[::ffff:7f00:1]`, `payments.`) is routed:
 * spelt another way it would otherwise leave as passthrough with no token.
 */
export function createRouter(routes: readonly RouteConfig[], unknownHosts: 'deny' | 'passthrough'): Router {
  const withPort = new Map<string, RouteConfig>();
  const anyPort = new Map<string, RouteConfig>();
  const targets = new Map<RouteConfig, Target>();
  routes.forEach((r, i) => {
    const a = parseAuthority(r.host, 0);
    if (!a) throw new ConfigError([{ path: `outbound.routes.${i}.host`, message: 'must be a host name, optionally with a port 1-65535' }]);
    (a.explicitPort ? withPort : anyPort).set(routeKey(a), r);
    targets.set(r, routeTarget(r));
  });
  const lookup = (a: Authority) => withPort.get(`${a.key}:${a.port}`) ?? anyPort.get(a.key);

  const decide = (a: Authority, scheme: 'http' | 'https', path: string): Resolution => {
    const route = lookup(a);
    // The authority as the app wrote it (lower-cased), not its canonical key: X-Forwarded-Host is the name the app
    // used (what the peer would have seen in Host), a refusal names the host the operator will find in the app, and a
    // passthrough call goes where the app's own resolver would have sent it (`orders.` is an absolute DNS name,
    // `orders` one the search list completes). A routed call goes to the route's target whatever the spelling.
    const authority = formatAuthority(a);
    if (route) {
      const target = targets.get(route)!;
      if (target.basePath !== '' && hasDotSegment(path)) {
        return reject(400, 'bad_request', `the path has a "." or ".." segment, which would take the call out of the route target's path ${target.basePath} (with the ${route.host} token)`);
      }
      return { kind: 'route', route, target, path: target.basePath + path, authority };
    }
    if (unknownHosts === 'passthrough') return { kind: 'passthrough', target: { origin: `${scheme}://${authority}`, basePath: '' }, path, authority };
    const e = new RouteNotFoundError(authority);
    return { kind: 'reject', status: e.status, reason: e.code, message: e.message, host: authority };
  };

  return {
    resolve(url, hostHeader) {
      if (url.startsWith('/')) {
        if (!hostHeader) return reject(400, 'bad_request', 'origin-form request without a Host header: name the peer in Host or use the sidecar as HTTP proxy');
        const a = parseAuthority(hostHeader, 80);
        if (!a) return reject(400, 'bad_request', 'the Host header is not a valid host[:port]');
        return decide(a, 'http', url);
      }
      // RFC 9112 §3.2.2: with an absolute-form target the Host header is ignored in favour of the URI's authority.
      const m = /^(https?):\/\/([^/?#]*)([^#]*)/i.exec(url);
      if (!m) return reject(400, 'bad_request', 'request target must be origin-form (/path) or an absolute http:// URL');
      const scheme = m[1]!.toLowerCase() as 'http' | 'https';
      if (m[2]!.includes('@')) return reject(400, 'bad_request', 'user information in the request target is not allowed');
      const a = parseAuthority(m[2]!, scheme === 'https' ? 443 : 80);
      if (!a) return reject(400, 'bad_request', 'the request target has no valid host[:port]');
      const rest = m[3]!;
      return decide(a, scheme, rest.startsWith('/') ? rest : `/${rest}`);
    },
    resolveConnect(target) {
      // CONNECT uses authority-form (RFC 9112 §3.2.3): the port is required.
      const a = parseAuthority(target, 0);
      if (!a || !a.explicitPort) return {};
      const route = lookup(a);
      return route ? { route, authority: a } : { authority: a };
    },
  };
}
