import { hash } from 'node:crypto';
import type { Dispatcher } from 'undici';
import type { Clock } from '../clock.js';
import type { OutboundConfig, RouteConfig, TokenSourceConfig } from '../config/schema.js';
import { UsageError } from '../errors.js';
import { createTokenSource, type TokenSource } from './sources/index.js';
import type { TokenBinding } from './token-cache.js';

export interface TokenBrokerDeps {
  clock: Clock;
  /** Read by the env and github_actions sources at fetch time. */
  env: NodeJS.ProcessEnv;
  dispatcher?: Dispatcher;
}

/** Which source serves which audience: one source per distinct `tokenSource` block, one binding per route. */
export interface TokenBroker {
  forRoute(route: RouteConfig): TokenBinding;
  /** Every route's binding, in config order. */
  routeBindings(): TokenBinding[];
  close(): Promise<void>;
}

interface SourceEntry {
  id: string;
  /** Canonical JSON of the source's config as written (the CA bundle's path, not the bytes loaded from it). */
  shape: string;
  /** What its requests carry beyond `shape`: the request timeout, the CA bundle and the credentials read from files. */
  sentWith: string;
  source: TokenSource;
}

/** Builds every token source the outbound config names (reading their secret files now). */
export function createTokenBroker(config: OutboundConfig, deps: TokenBrokerDeps): TokenBroker {
  const timeoutMs = config.tokenRequestTimeoutSeconds * 1000;
  // Routes that share an identical tokenSource block share one source (and its connection pool).
  const byShape = new Map<string, SourceEntry>();
  const sourceFor = (cfg: TokenSourceConfig, configPath: string) => {
    // The CA bundle loaded beside `caFile` stays out: a CA rotated at the same path must not cost the
    // tokens a reload hands over, and the identity need not carry a whole PEM. `caFile` is in it.
    const { ca: _loaded, ...written } = cfg;
    const shape = canonicalJson(written);
    let entry = byShape.get(shape);
    if (!entry) {
      const source = createTokenSource(cfg, { clock: deps.clock, env: deps.env, timeoutMs, configPath, ...(deps.dispatcher ? { dispatcher: deps.dispatcher } : {}) });
      const sentWith = hash('sha256', `${timeoutMs}\u0000${cfg.ca?.pem ?? ''}\u0000${source.credentialDigest ?? ''}`);
      entry = { id: `s${byShape.size}`, shape, sentWith, source };
      byShape.set(shape, entry);
    }
    return entry;
  };
  const fallback = config.tokenSource ? sourceFor(config.tokenSource, 'outbound.tokenSource') : undefined;

  const bind = (entry: SourceEntry, audience: string, scopes: readonly string[] | undefined): TokenBinding => {
    const normal = normalScopes(scopes);
    const rest = `\u0000${audience}\u0000${normal.join(' ')}`;
    return { key: entry.id + rest, identity: entry.shape + rest, requestIdentity: `${entry.sentWith}\u0000${entry.shape}${rest}`, source: entry.source, audience, scopes: normal };
  };

  const routes = new Map<RouteConfig, { entry: SourceEntry; binding: TokenBinding }>();
  config.routes.forEach((route, i) => {
    // The schema guarantees a route without its own tokenSource has the default.
    const entry = route.tokenSource ? sourceFor(route.tokenSource, `outbound.routes.${i}.tokenSource`) : fallback!;
    routes.set(route, { entry, binding: bind(entry, route.audience, route.scopes) });
  });

  return {
    forRoute(route) {
      const r = routes.get(route);
      if (!r) throw new Error('route does not belong to this broker');
      return r.binding;
    },
    routeBindings: () => [...routes.values()].map((r) => r.binding),
    async close() {
      await Promise.all([...byShape.values()].map((e) => e.source.close()));
    },
  };
}

/** The token source block that serves one audience, where it is in the config, and the scopes to request (sorted, distinct). */
export interface AudienceSource {
  source: TokenSourceConfig;
  /** Its key path (`outbound.routes.1.tokenSource`, `outbound.tokenSource`), for errors about its files. */
  configPath: string;
  scopes: string[];
}

/**
 * The `token` command's lookup, made without building any source (so without reading any file): the first route
 * with this audience, with its own tokenSource or else the default, and its scopes unless `scopes` are given;
 * for an audience no route names, the default tokenSource with `scopes`.
 */
export function sourceForAudience(config: OutboundConfig, audience: string, scopes?: readonly string[]): AudienceSource {
  const i = config.routes.findIndex((r) => r.audience === audience);
  const route = config.routes[i];
  const wanted = normalScopes(scopes?.length ? scopes : route?.scopes);
  if (route?.tokenSource) return { source: route.tokenSource, configPath: `outbound.routes.${i}.tokenSource`, scopes: wanted };
  // The schema guarantees a route without its own tokenSource has the default.
  if (!config.tokenSource) throw new UsageError(`no outbound route has audience "${audience}" and there is no default outbound.tokenSource`);
  return { source: config.tokenSource, configPath: 'outbound.tokenSource', scopes: wanted };
}

/** Scopes as a token is requested with them: distinct and sorted, so one set is one cache key whatever its order. */
function normalScopes(scopes: readonly string[] | undefined): string[] {
  return [...new Set(scopes ?? [])].sort();
}

/** JSON with object keys sorted, so equal configs compare equal whatever their key order. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}
