import { createLocalJWKSet, type JWK, type JWTVerifyGetKey } from 'jose';
import type { Agent } from 'undici';
import type { Metrics } from '../admin/metrics.js';
import type { Clock } from '../clock.js';
import type { InboundConfig, IssuerConfig } from '../config/schema.js';
import { KeysUnavailableError, SidecarError } from '../errors.js';
import { spreadWait } from '../jitter.js';
import { capped, MAX_ERROR_TEXT, type Logger } from '../log.js';
import { discover } from '../oidc/discovery.js';
import { createIdpAgent, IdpHttpError, requestJson, retryAfterMs, shownUrl } from '../oidc/http.js';
import { timerScheduler, type Scheduler } from '../scheduler.js';
import { filterJwks, MAX_JWKS_KEYS, NoUsableKeysError, shownKid, type DroppedKey } from './jwks-filter.js';

/** The keys of one trusted issuer. */
export interface IssuerKeys {
  readonly issuer: string;
  /** Increments whenever the set of usable keys changes (verify-cache entries from an older version are re-checked). */
  readonly version: number;
  /** The key set to verify with; throws KeysUnavailableError when none was loaded or the last good one is older than maxStaleSeconds. */
  keySet(): JWTVerifyGetKey;
  /** True when keySet() would not throw. */
  isUsable(): boolean;
  /**
   * Refetches for a key the set may lack (an unknown `kid`, or a token without kid that no key verifies): at most once
   * per cooldown, concurrent callers share one fetch.
   * Resolves false when the JWKS could not be fetched (now, or at the last attempt inside the cooldown).
   */
  refetchForUnknownKey(): Promise<boolean>;
  /** The last fetch failure, for operators (`verify` prints it). */
  readonly lastError: string | undefined;
}

/** Per-issuer JWKS caches with background refresh. */
export interface KeyStore {
  get(issuer: string): IssuerKeys | undefined;
  readonly issuers: readonly IssuerKeys[];
  /** Starts loading every issuer's keys, or only those of `only`; resolves after the first attempt for each (never rejects). */
  start(only?: readonly string[]): Promise<void>;
  /** True when every issuer has usable keys. */
  isReady(): boolean;
  /** Resolves true once every issuer (or each of `only`) has usable keys, false after `timeoutMs` (milliseconds). */
  waitUntilReady(timeoutMs: number, only?: readonly string[]): Promise<boolean>;
  /** Stops timers and cuts in-flight fetches. */
  close(): Promise<void>;
  /** The keys held now, for a successor built by a config reload (see KeyStoreDeps.handover). */
  snapshot(): KeyStoreSnapshot;
}

/** One issuer's last good keys, as handed from a key store to its successor. */
export interface IssuerKeysSnapshot {
  keys: JWK[];
  /** Monotonic clock time (ms) they were fetched: staleness keeps counting from here (a reload is the same process). */
  fetchedAt: number;
  /** The last fetch failed: the successor fetches at once instead of waiting a refresh interval. */
  failing: boolean;
  /** The jwks_uri discovery gave last, which the successor falls back on while the discovery document fails. */
  discoveredUri?: string | undefined;
}

/** Keyed by what decides which keys an issuer has (issuer, jwksUri, algorithms, caFile). */
export type KeyStoreSnapshot = ReadonlyMap<string, IssuerKeysSnapshot>;

/** The identity of an issuer's key source: a snapshot is reused only when this is unchanged. */
export function issuerKeysIdentity(cfg: IssuerConfig): string {
  return JSON.stringify([cfg.issuer, cfg.jwksUri ?? null, [...cfg.algorithms].sort(), cfg.caFile ?? null]);
}

export interface KeyStoreDeps {
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  /** Default: real unref'd timers. */
  scheduler?: Scheduler;
  /** [0, 1) source for spreading an IdP's Retry-After wait; default Math.random. */
  random?: () => number;
  /**
   * The predecessor's keys (config reload): an unchanged issuer starts with them, so a reload
   * during an IdP outage keeps verifying for what is left of `maxStaleSeconds` instead of failing.
   */
  handover?: KeyStoreSnapshot;
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
  const scheduler = deps.scheduler ?? timerScheduler;
  const all = issuers.map((cfg) => createIssuerKeys(cfg, jwks, deps, scheduler, () => notify(), deps.handover?.get(issuerKeysIdentity(cfg))));
  const byIssuer = new Map(all.map((k) => [k.issuer, k]));
  const waiters = new Set<() => void>();
  const notify = () => {
    for (const w of waiters) w();
  };
  const select = (only: readonly string[] | undefined) => (only ? all.filter((k) => only.includes(k.issuer)) : all);
  /** Whether every issuer, or each of `only`, has usable keys. */
  const isReady = (only?: readonly string[]) => select(only).every((k) => k.isUsable());
  return {
    issuers: all,
    get: (issuer) => byIssuer.get(issuer),
    start: async (only) => {
      await Promise.all(select(only).map((k) => k.start()));
    },
    isReady: () => isReady(),
    waitUntilReady(timeoutMs, only) {
      if (isReady(only)) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = (ok: boolean) => {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(ok);
        };
        const check = () => {
          if (isReady(only)) done(true);
        };
        const timer = setTimeout(() => done(false), timeoutMs);
        waiters.add(check);
      });
    },
    close: async () => {
      await Promise.all(all.map((k) => k.close()));
    },
    snapshot: () => {
      const out = new Map<string, IssuerKeysSnapshot>();
      issuers.forEach((cfg, i) => {
        const snap = all[i]!.snapshot();
        if (snap) out.set(issuerKeysIdentity(cfg), snap);
      });
      return out;
    },
  };
}

interface IssuerKeysInternal extends IssuerKeys {
  start(): Promise<void>;
  close(): Promise<void>;
  snapshot(): IssuerKeysSnapshot | undefined;
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
  seed: IssuerKeysSnapshot | undefined,
): IssuerKeysInternal {
  const { clock, metrics } = deps;
  const random = deps.random ?? Math.random;
  const logger = deps.logger.child({ issuer: cfg.issuer });
  const timeoutMs = jwks.timeoutSeconds * 1000;
  let agent: Agent | undefined;
  let keySet: JWTVerifyGetKey | undefined;
  let fingerprint = '';
  let version = 0;
  // The intervals below (staleness, cooldown, Retry-After) are kept on the monotonic clock: a wall clock stepping back
  // (NTP, `date -s`) would otherwise hold off every refetch for as long as the step, and one stepping forward would
  // call fresh keys stale.
  /** Monotonic time (ms) of the last successful fetch. */
  let fetchedAt = -Infinity;
  /** Monotonic time (ms) the last fetch of any kind started: the unknown-kid cooldown counts from here. */
  let lastAttemptAt = -Infinity;
  let discoveredUri: string | undefined;
  /** The discovery failure last logged while the jwks_uri found before was used instead. */
  let discoveryFailure: string | undefined;
  let inflight: Promise<FetchResult> | undefined;
  let cancelTimer: (() => void) | undefined;
  let retryDelay = jwks.retryMinSeconds;
  /**
   * Monotonic time (ms) before which the IdP asked not to be asked again (a 429 or 503 with `Retry-After` from its JWKS or
   * discovery endpoint), at most as far off as a retry could be: neither the backoff nor an unknown kid fetches sooner.
   */
  let quietUntil = -Infinity;
  let lastError: string | undefined;
  let closed = false;
  let failing = false;
  /** The keys as fetched (after filtering), for snapshot(). */
  let currentKeys: JWK[] = [];
  /** Whether the last refetch (unknown kid) or refresh could reach the JWKS. */
  let lastFetchOk = true;
  /** The unusable keys last logged (jwks_keys_dropped), as JSON. */
  let droppedLogged = '[]';

  const dispatcher = () => {
    if (closed) throw new IdpHttpError('closed', 'key store is closed');
    return (agent ??= createIdpAgent({ ca: cfg.ca, timeoutMs }));
  };

  /** The longest a failing fetch waits before the next: the backoff's ceiling, and never past a normal refresh. */
  const longestRetryMs = Math.min(jwks.retryMaxSeconds, jwks.refreshIntervalSeconds) * 1000;

  const isUsable = () => keySet !== undefined && clock.monotonic() - fetchedAt <= jwks.maxStaleSeconds * 1000;

  /** Installs a key set fetched at `at`; false when it is the set already held. */
  const apply = (keys: JWK[], at: number): boolean => {
    const next = keySetFingerprint(keys);
    fetchedAt = at;
    if (next === fingerprint) return false;
    fingerprint = next;
    currentKeys = keys;
    keySet = createLocalJWKSet({ keys });
    version++;
    return true;
  };

  /** Drops the keys held: nothing verifies for this issuer until a fetch finds usable keys again. */
  const withdraw = (why: string): void => {
    if (keySet === undefined) return;
    logger.warn(
      { event: 'jwks_keys_withdrawn', kids: currentKeys.map((k) => (k.kid === undefined ? null : shownKid(k.kid))), detail: why },
      "the issuer's JWKS lists no usable key; the keys held before are withdrawn",
    );
    keySet = undefined;
    currentKeys = [];
    fingerprint = '';
    version++;
  };

  if (seed) {
    apply(seed.keys, seed.fetchedAt);
    discoveredUri = seed.discoveredUri;
    failing = seed.failing;
    lastFetchOk = !seed.failing;
    logger.info({ event: 'jwks_handed_over', keyCount: seed.keys.length, ageSeconds: Math.round((clock.monotonic() - seed.fetchedAt) / 1000) }, 'issuer keys carried over from the previous config');
  }

  /** Says which keys the JWKS has that were left out, once per change of that list: the IdP publishes them until someone fixes it. */
  const reportDropped = (dropped: readonly DroppedKey[], ignored: number) => {
    const droppedNow = JSON.stringify([dropped, ignored]);
    if (droppedNow === droppedLogged) return;
    droppedLogged = droppedNow;
    if (dropped.some((d) => d.compromised)) {
      // Not a key to fix at leisure: whoever read the JWKS can sign as the issuer wherever else that key is trusted.
      logger.error({ event: 'jwks_keys_dropped', dropped }, 'issuer publishes a private signing key: that key is compromised and left out, with its public half');
    } else if (dropped.length) {
      logger.warn({ event: 'jwks_keys_dropped', dropped }, 'issuer publishes signing keys that cannot be used; they are left out');
    }
    if (ignored > 0) {
      logger.warn({ event: 'jwks_keys_ignored', ignored, limit: MAX_JWKS_KEYS }, `issuer publishes more than ${MAX_JWKS_KEYS} keys; only the first ${MAX_JWKS_KEYS} are used`);
    }
  };

  /** The jwks_uri to fetch: the configured one, else the discovery document's (read again with `rediscover`). */
  const jwksUri = async (rediscover: boolean): Promise<string> => {
    if (cfg.jwksUri) return cfg.jwksUri;
    if (discoveredUri && !rediscover) return discoveredUri;
    try {
      discoveredUri = (await discover(cfg.issuer, dispatcher(), timeoutMs)).jwks_uri;
      discoveryFailure = undefined;
    } catch (err) {
      // A discovery document that cannot be read now says nothing against the jwks_uri it gave before; said once per
      // failure, not hidden, since a document that stays broken is a restart (or a changed jwksUri) from an outage.
      if (!discoveredUri || closed) throw err;
      const detail = capped(err instanceof Error ? err.message : String(err), MAX_ERROR_TEXT);
      if (detail !== discoveryFailure) {
        discoveryFailure = detail;
        logger.warn({ event: 'discovery_failed', detail, jwksUri: shownUrl(discoveredUri) }, 'discovery failed; fetching the jwks_uri it gave last time');
      }
    }
    return discoveredUri;
  };

  /**
   * `rediscover`: read the discovery document again rather than use the jwks_uri it gave last time. The refresh timer
   * does, so a jwks_uri the IdP moved (or a discovery answer that was wrong once) is left within a refresh interval,
   * not kept for as long as the old URL answers; an unknown-kid refetch, which a caller can set off, uses the last one.
   */
  const fetchKeys = async (rediscover: boolean): Promise<void> => {
    const uri = await jwksUri(rediscover);
    const res = await requestJson(dispatcher(), uri, { timeoutMs });
    // Only a 200 counts (no redirects are followed, see createIdpAgent): anything else keeps the last good keys.
    if (res.status !== 200) {
      throw new IdpHttpError('jwks_http_error', `${shownUrl(uri)}: HTTP ${res.status}`, res.status, undefined, { retryAfter: res.headers['retry-after'] });
    }
    let filtered: Awaited<ReturnType<typeof filterJwks>>;
    try {
      filtered = await filterJwks(res.body, cfg.algorithms);
    } catch (err) {
      // A JWKS the IdP serves with nothing usable in it (no keys, or only keys we cannot verify with) is still its
      // word on which keys it vouches for: the ones held before are withdrawn, as a rotation that removes them would
      // withdraw them, and the fetch counts as failed. A document that is no JWKS at all (garbage, an error page)
      // says nothing about the keys, and the last good ones stay.
      if (err instanceof NoUsableKeysError) {
        // A leaked private key is said as loudly when it was the only key (the likeliest shape of the mistake); other
        // unusable keys are named in the failure itself.
        if (err.dropped.some((d) => d.compromised)) reportDropped(err.dropped, 0);
        withdraw(err.message);
      }
      throw err;
    }
    const { keys, dropped, ignored } = filtered;
    reportDropped(dropped, ignored);
    const first = keySet === undefined;
    if (apply(keys, clock.monotonic())) {
      logger.info(
        { event: 'jwks_updated', kids: keys.map((k) => (k.kid === undefined ? null : shownKid(k.kid))), keyCount: keys.length },
        first ? 'issuer keys loaded' : 'issuer keys changed',
      );
    }
  };

  const fetchOnce = (rediscover = false): Promise<FetchResult> => {
    if (inflight) return inflight;
    lastAttemptAt = clock.monotonic();
    inflight = (async () => {
      try {
        await fetchKeys(rediscover);
        metrics.jwksFetches.inc({ issuer: cfg.issuer, result: 'success' });
        if (failing) logger.info({ event: 'jwks_fetch_recovered' }, 'issuer keys fetched again');
        failing = false;
        lastFetchOk = true;
        lastError = undefined;
        quietUntil = -Infinity;
        return { ok: true };
      } catch (err) {
        // Cut by close() (shutdown, or a reload that retired this store): not the IdP failing, so neither counted nor
        // logged, as a token fetch cut the same way is not; nothing reads this store's state any more.
        if (closed) return { ok: false };
        const code = err instanceof SidecarError ? err.code : 'error';
        // Capped once here for the log line, /readyz and the 503 that name it: an IdP's text can be any length.
        lastError = capped(err instanceof Error ? err.message : String(err), MAX_ERROR_TEXT);
        failing = true;
        lastFetchOk = false;
        const asked = err instanceof IdpHttpError ? retryAfterMs(err.retryAfter, clock.now()) : undefined;
        // Spread by up to a fifth more, as the token cache does: an HTTP-date Retry-After names one instant for a
        // whole fleet, which would otherwise come back to the IdP together and be throttled again.
        const waitMs = asked === undefined ? undefined : spreadWait(asked, longestRetryMs, random());
        if (waitMs !== undefined) quietUntil = clock.monotonic() + waitMs;
        metrics.jwksFetches.inc({ issuer: cfg.issuer, result: code });
        logger.warn(
          {
            event: 'jwks_fetch_failed',
            error: code,
            detail: lastError,
            keysUsable: isUsable(),
            ...(waitMs === undefined ? {} : { retryAfterSeconds: Math.ceil(waitMs / 1000) }),
          },
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
      // Backoff while failing (Istio doubles its retry the same way), never slower than the normal refresh; an IdP's
      // Retry-After is waited for within the same bound.
      delay = Math.max(Math.min(retryDelay, jwks.refreshIntervalSeconds), (quietUntil - clock.monotonic()) / 1000);
      retryDelay = Math.min(retryDelay * 2, jwks.retryMaxSeconds);
    }
    cancelTimer?.();
    cancelTimer = scheduler.schedule(delay * 1000, () => {
      void fetchOnce(true).then((r) => schedule(r.ok));
    });
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
        throw new KeysUnavailableError(cfg.issuer, `keys for issuer ${cfg.issuer} are not loaded${lastError ? ` (${lastError})` : ''}`);
      }
      if (!isUsable()) {
        throw new KeysUnavailableError(cfg.issuer, `keys for issuer ${cfg.issuer} are older than ${jwks.maxStaleSeconds} s and cannot be refreshed`);
      }
      return keySet;
    },
    async refetchForUnknownKey() {
      if (inflight) return (await inflight).ok;
      // Inside the cooldown, or while the IdP asked for quiet, no fetch is made; whether the JWKS is reachable is what
      // the last attempt said.
      const now = clock.monotonic();
      if (now - lastAttemptAt < jwks.cooldownSeconds * 1000 || now < quietUntil) return lastFetchOk;
      const r = await fetchOnce();
      // A failure is retried on the backoff, as one the timer's fetch met: left to the refresh timer, keys this fetch
      // withdrew (an empty set for a moment) stayed away for up to refreshIntervalSeconds, and a caller can time an
      // unknown kid to catch such a moment at every cooldown.
      if (!r.ok) schedule(false);
      return r.ok;
    },
    async start() {
      if (closed) return;
      // Always fetch, handed-over keys or not: a SIGHUP doubles as "refresh the keys now" (e.g. after
      // a key compromise), discovery included; if the fetch fails, the handed-over keys keep verifying as before.
      const r = await fetchOnce(true);
      schedule(r.ok);
    },
    snapshot() {
      return keySet ? { keys: currentKeys, fetchedAt, failing, discoveredUri } : undefined;
    },
    async close() {
      closed = true;
      cancelTimer?.();
      const a = agent;
      agent = undefined;
      // We created the agent, we close it; cutting an in-flight key fetch on shutdown loses nothing.
      if (a) await a.destroy().catch(() => {});
    },
  };
}

/**
 * The same keys whatever the order of the set and of each key's members: an IdP that builds its JWKS from a map may
 * list them differently at each fetch, and a new fingerprint empties the verified-token cache and logs a change.
 * A JWK's members are strings and arrays of strings (RFC 7517), so sorting the top-level names is enough.
 */
function keySetFingerprint(keys: readonly JWK[]): string {
  return JSON.stringify(keys.map((k) => JSON.stringify(k, Object.keys(k).sort())).sort());
}
