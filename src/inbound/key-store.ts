import { createLocalJWKSet, type JWK, type JWTVerifyGetKey } from 'jose';
import type { Agent } from 'undici';
import type { Metrics } from '../admin/metrics.js';
import type { Clock } from '../clock.js';
import type { InboundConfig, IssuerConfig } from '../config/schema.js';
import { KeysUnavailableError, SidecarError } from '../errors.js';
import type { Logger } from '../log.js';
import { discover } from '../oidc/discovery.js';
import { createIdpAgent, IdpHttpError, requestJson } from '../oidc/http.js';
import { filterJwks } from './jwks-filter.js';

/** Timers, injected so tests can run the refresh schedule without waiting. */
export interface Scheduler {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Real timers, unref'd so a pending refresh never keeps the process alive. */
export const realScheduler: Scheduler = {
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** The keys of one trusted issuer. */
export interface IssuerKeys {
  readonly issuer: string;
  /** Increments whenever the set of usable keys changes (verify-cache entries from an older version are re-checked). */
  readonly version: number;
  /** The key set to verify with; throws KeysUnavailableError when none was loaded or the last good one is older than maxStaleSeconds. */
  keySet(): JWTVerifyGetKey;
  /** True when keySet() would not throw. */
  isUsable(): boolean;
  /** Refetches for an unknown `kid`: at most once per cooldown, concurrent callers share one fetch. */
  refetchForUnknownKey(): Promise<void>;
  /** The last fetch failure, for operators (`verify` prints it). */
  readonly lastError: string | undefined;
}

/** Per-issuer JWKS caches with background refresh. */
export interface KeyStore {
  get(issuer: string): IssuerKeys | undefined;
  readonly issuers: readonly IssuerKeys[];
  /** Starts loading every issuer's keys; resolves after the first attempt for each (never rejects). */
  start(): Promise<void>;
  /** True when every issuer has usable keys. */
  isReady(): boolean;
  /** Resolves true once ready, false after `timeoutMs` (milliseconds). */
  waitUntilReady(timeoutMs: number): Promise<boolean>;
  /** Stops timers and cuts in-flight fetches. */
  close(): Promise<void>;
}

export interface KeyStoreDeps {
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  /** Default: real unref'd timers. */
  scheduler?: Scheduler;
}

type JwksConfig = InboundConfig['jwks'];

/**
 * Builds the key store over the configured issuers. Keys come only from each
 * issuer's own JWKS (`jwksUri`, else OIDC discovery), fetched with our own
 * undici agent and handed to jose as a local key set: jose's remote set stops
 * verifying once its cache is 10 minutes old and a fetch fails, while here the
 * last good keys keep working for `maxStaleSeconds` (FIELD-NOTES).
 */
export function createKeyStore(issuers: readonly IssuerConfig[], jwks: JwksConfig, deps: KeyStoreDeps): KeyStore {
  const scheduler = deps.scheduler ?? realScheduler;
  const all = issuers.map((cfg) => createIssuerKeys(cfg, jwks, deps, scheduler, () => notify()));
  const byIssuer = new Map(all.map((k) => [k.issuer, k]));
  const waiters = new Set<() => void>();
  const notify = () => {
    for (const w of waiters) w();
  };
  const isReady = () => all.every((k) => k.isUsable());
  return {
    issuers: all,
    get: (issuer) => byIssuer.get(issuer),
    start: async () => {
      await Promise.all(all.map((k) => k.start()));
    },
    isReady,
    waitUntilReady(timeoutMs) {
      if (isReady()) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = (ok: boolean) => {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(ok);
        };
        const check = () => {
          if (isReady()) done(true);
        };
        const timer = setTimeout(() => done(false), timeoutMs);
        waiters.add(check);
      });
    },
    close: async () => {
      await Promise.all(all.map((k) => k.close()));
    },
  };
}

interface IssuerKeysInternal extends IssuerKeys {
  start(): Promise<void>;
  close(): Promise<void>;
}

interface FetchResult {
  ok: boolean;
}

function createIssuerKeys(
  cfg: IssuerConfig,
  jwks: JwksConfig,
  deps: KeyStoreDeps,
  scheduler: Scheduler,
  onChange: () => void,
): IssuerKeysInternal {
  const { clock, metrics } = deps;
  const logger = deps.logger.child({ issuer: cfg.issuer });
  const timeoutMs = jwks.timeoutSeconds * 1000;
  let agent: Agent | undefined;
  let keySet: JWTVerifyGetKey | undefined;
  let fingerprint = '';
  let version = 0;
  /** Clock time (ms) of the last successful fetch. */
  let fetchedAt = -Infinity;
  /** Clock time (ms) the last fetch of any kind started: the unknown-kid cooldown counts from here. */
  let lastAttemptAt = -Infinity;
  let discoveredUri: string | undefined;
  let inflight: Promise<FetchResult> | undefined;
  let timer: unknown;
  let retryDelay = jwks.retryMinSeconds;
  let lastError: string | undefined;
  let closed = false;
  let failing = false;

  const dispatcher = () => {
    if (closed) throw new IdpHttpError('closed', 'key store is closed');
    return (agent ??= createIdpAgent({ caFile: cfg.caFile, timeoutMs }));
  };

  const isUsable = () => keySet !== undefined && clock.now() - fetchedAt <= jwks.maxStaleSeconds * 1000;

  const apply = (keys: JWK[]) => {
    const next = JSON.stringify(keys);
    fetchedAt = clock.now();
    if (next === fingerprint) return;
    const first = fingerprint === '';
    fingerprint = next;
    keySet = createLocalJWKSet({ keys });
    version++;
    logger.info(
      { event: 'jwks_updated', kids: keys.map((k) => k.kid ?? null), keyCount: keys.length },
      first ? 'issuer keys loaded' : 'issuer keys changed',
    );
  };

  const fetchKeys = async (): Promise<void> => {
    let uri = cfg.jwksUri ?? discoveredUri;
    if (!uri) {
      uri = (await discover(cfg.issuer, dispatcher(), timeoutMs)).jwks_uri;
      discoveredUri = uri;
    }
    const res = await requestJson(dispatcher(), uri, { timeoutMs });
    // Only a 200 counts (no redirects are followed, see createIdpAgent): anything else keeps the last good keys.
    if (res.status !== 200) throw new IdpHttpError('jwks_http_error', `${uri}: HTTP ${res.status}`, res.status);
    apply(filterJwks(res.body, cfg.algorithms));
  };

  const fetchOnce = (): Promise<FetchResult> => {
    if (inflight) return inflight;
    lastAttemptAt = clock.now();
    inflight = (async () => {
      try {
        await fetchKeys();
        metrics.jwksFetches.inc({ issuer: cfg.issuer, result: 'success' });
        if (failing) logger.info({ event: 'jwks_fetch_recovered' }, 'issuer keys fetched again');
        failing = false;
        lastError = undefined;
        return { ok: true };
      } catch (err) {
        const code = err instanceof SidecarError ? err.code : 'error';
        lastError = err instanceof Error ? err.message : String(err);
        // The discovery document may have moved the JWKS; look again next time.
        discoveredUri = undefined;
        failing = true;
        metrics.jwksFetches.inc({ issuer: cfg.issuer, result: code });
        logger.warn(
          { event: 'jwks_fetch_failed', error: code, detail: lastError, keysUsable: isUsable() },
          keySet ? 'issuer key refresh failed; keeping the last good keys' : 'issuer keys could not be loaded',
        );
        return { ok: false };
      } finally {
        inflight = undefined;
        onChange();
      }
    })();
    return inflight;
  };

  const schedule = (ok: boolean) => {
    if (closed) return;
    let delay: number;
    if (ok) {
      delay = jwks.refreshIntervalSeconds;
      retryDelay = jwks.retryMinSeconds;
    } else {
      // Backoff while failing (Istio doubles its retry the same way), never slower than the normal refresh.
      delay = Math.min(retryDelay, jwks.refreshIntervalSeconds);
      retryDelay = Math.min(retryDelay * 2, jwks.retryMaxSeconds);
    }
    scheduler.clearTimeout(timer);
    timer = scheduler.setTimeout(() => {
      void fetchOnce().then((r) => schedule(r.ok));
    }, delay * 1000);
  };

  return {
    issuer: cfg.issuer,
    get version() {
      return version;
    },
    get lastError() {
      return lastError;
    },
    isUsable,
    keySet() {
      if (!keySet) {
        throw new KeysUnavailableError(`keys for issuer ${cfg.issuer} are not loaded${lastError ? ` (${lastError})` : ''}`);
      }
      if (!isUsable()) {
        throw new KeysUnavailableError(`keys for issuer ${cfg.issuer} are older than ${jwks.maxStaleSeconds} s and cannot be refreshed`);
      }
      return keySet;
    },
    async refetchForUnknownKey() {
      if (inflight) {
        await inflight;
        return;
      }
      if (clock.now() - lastAttemptAt < jwks.cooldownSeconds * 1000) return;
      await fetchOnce();
    },
    async start() {
      if (closed) return;
      const r = await fetchOnce();
      schedule(r.ok);
    },
    async close() {
      closed = true;
      scheduler.clearTimeout(timer);
      const a = agent;
      agent = undefined;
      // We created the agent, we close it; cutting an in-flight key fetch on shutdown loses nothing.
      if (a) await a.destroy().catch(() => {});
    },
  };
}
