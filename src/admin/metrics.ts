import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from './prom-client-core.js';
import { UPSTREAM_ERROR_CODES } from '../errors.js';
import { packageVersion } from '../version.js';
import { PROM_CLIENT_EVENT_LOOP_SAMPLE_MS, registerEventLoopDelay } from './event-loop-delay.js';

/**
 * Every metric the sidecar exports, defined here and only here, on a registry
 * of our own (never prom-client's global one). Label values are low-cardinality
 * by construction: reason codes, route hosts and audiences from config, never
 * a raw path or a `sub`.
 */
export interface Metrics {
  registry: Registry;
  inboundRequests: Counter<'decision' | 'reason'>;
  outboundRequests: Counter<'route' | 'status'>;
  tokenRequests: Counter<'source' | 'audience' | 'result'>;
  tokenExpiry: TokenExpiries;
  jwksFetches: Counter<'issuer' | 'result'>;
  requestDuration: Histogram<'direction'>;
  upstreamErrors: Counter<'direction' | 'reason'>;
  configReloads: Counter<'result'>;
  verifyCacheLookups: Counter<'result'>;
  logLinesDropped: Counter;
  connectionsDropped: Counter<'direction'>;
}

/** Each reader lists the outbound tokens one token cache holds, as (audience, expiry in ms) pairs. */
export type TokenExpiryReader = () => Iterable<readonly [audience: string, expiresAtMs: number]>;

/**
 * `oidc_sidecar_token_expiry_timestamp_seconds` is read at scrape time from the token caches alive then, rather
 * than set when a token is issued: an audience a reload removed leaves no series behind (one stuck at a past
 * time would fire an expiry alert for ever), and a held token that expired still shows, as it should.
 */
export interface TokenExpiries {
  /** Adds a token cache's tokens to the gauge until the returned function is called. */
  track(read: TokenExpiryReader): () => void;
}

export interface MetricsOptions {
  /** Collect Node process metrics (default true). */
  processMetrics?: boolean;
  /** The workload's name (`service` in the config), exported on `oidc_sidecar_info`. */
  service?: string;
}

/**
 * The service name goes on one info series, `oidc_sidecar_info{service,version} 1`, rather than on every series as a
 * default label: each metric carries exactly the labels the contract names (`{decision,reason}`, `{direction}`, ...),
 * and Prometheus attaches the pod's own labels at scrape time anyway. `* on(instance) group_left(service) oidc_sidecar_info`
 * brings it into any query that wants it.
 */
export function createMetrics(opts: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  if (opts.service) {
    new Gauge({
      name: 'oidc_sidecar_info',
      help: 'Always 1: the service name from the config and the version of oidc-sidecar',
      labelNames: ['service', 'version'],
      registers: [registry],
    }).set({ service: opts.service, version: packageVersion() }, 1);
  }
  if (opts.processMetrics !== false) {
    collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: PROM_CLIENT_EVENT_LOOP_SAMPLE_MS });
    registerEventLoopDelay(registry);
  }
  const registers = [registry];
  const expiryReaders = new Set<TokenExpiryReader>();
  new Gauge({
    name: 'oidc_sidecar_token_expiry_timestamp_seconds',
    help: 'Expiry (unix seconds) of the cached outbound token per audience; the soonest when routes hold several',
    labelNames: ['audience'],
    registers,
    collect() {
      // Several tokens for one audience (other scopes, another source, a cache a reload is retiring): the soonest
      // expiry, so an alert on the gauge fires for whichever runs out first.
      const soonest = new Map<string, number>();
      for (const read of expiryReaders) {
        for (const [audience, at] of read()) if (!(soonest.get(audience)! <= at)) soonest.set(audience, at);
      }
      this.reset();
      for (const [audience, at] of soonest) this.set({ audience }, Math.floor(at / 1000));
    },
  });
  const metrics: Metrics = {
    registry,
    inboundRequests: new Counter({
      name: 'oidc_sidecar_inbound_requests_total',
      help: 'Inbound requests by decision (allow, reject, deny, error) and reason code',
      labelNames: ['decision', 'reason'],
      registers,
    }),
    outboundRequests: new Counter({
      name: 'oidc_sidecar_outbound_requests_total',
      help: 'Outbound requests by route host and response status (or error code)',
      labelNames: ['route', 'status'],
      registers,
    }),
    tokenRequests: new Counter({
      name: 'oidc_sidecar_token_requests_total',
      help: 'Token fetches from the token source by result (success, error code)',
      labelNames: ['source', 'audience', 'result'],
      registers,
    }),
    tokenExpiry: {
      track(read) {
        expiryReaders.add(read);
        return () => void expiryReaders.delete(read);
      },
    },
    jwksFetches: new Counter({
      name: 'oidc_sidecar_jwks_fetches_total',
      help: 'JWKS and discovery fetches per issuer by result',
      labelNames: ['issuer', 'result'],
      registers,
    }),
    requestDuration: new Histogram({
      name: 'oidc_sidecar_request_duration_seconds',
      help: 'Time from request start to upstream response headers (or rejection), by direction',
      labelNames: ['direction'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    upstreamErrors: new Counter({
      name: 'oidc_sidecar_upstream_errors_total',
      help: 'Upstream failures by direction and reason (upstream_connect_failed, upstream_timeout, upstream_reset, upstream_bad_response)',
      labelNames: ['direction', 'reason'],
      registers,
    }),
    configReloads: new Counter({
      name: 'oidc_sidecar_config_reloads_total',
      help: 'Config reload attempts by result (success, invalid, error)',
      labelNames: ['result'],
      registers,
    }),
    verifyCacheLookups: new Counter({
      name: 'oidc_sidecar_verify_cache_lookups_total',
      help: 'Verified-token cache lookups by result (hit, miss)',
      labelNames: ['result'],
      registers,
    }),
    logLinesDropped: new Counter({
      name: 'oidc_sidecar_log_lines_dropped_total',
      help: 'Log lines dropped whole because stdout did not take them and the log buffer (4 MiB) was full',
      registers,
    }),
    connectionsDropped: new Counter({
      name: 'oidc_sidecar_connections_dropped_total',
      help: 'Client connections closed as they were accepted because the listener held limits.maxConnections, by direction',
      labelNames: ['direction'],
      registers,
    }),
  };
  // Every result a reload can have is a series from the start, at 0: a series that first appears at 1 hides that
  // first reload from increase() and rate(), and an alert on refused configs would miss the first one.
  for (const result of ['success', 'invalid', 'error']) metrics.configReloads.inc({ result }, 0);
  return metrics;
}

/** The upstream error series of one direction, at 0 from the start (see createMetrics); its listener's component calls it. */
export function initUpstreamErrors(metrics: Metrics, direction: 'inbound' | 'outbound'): void {
  for (const reason of UPSTREAM_ERROR_CODES) metrics.upstreamErrors.inc({ direction, reason }, 0);
}
