import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import type { buildConnector as BuildConnector, Dispatcher } from 'undici';
import type { CaBundle } from '../config/ca-bundle.js';
import type { LimitsConfig } from '../config/schema.js';
import { UpstreamError } from '../errors.js';
import { createDeadlineWatch } from './deadline.js';
import type { OwnConnections } from './own-connections.js';
import { buildConnector, Pool } from './undici-core.js';
import { watchUpstreamResets } from './upstream-reset.js';

export interface UpstreamPools {
  /**
   * The keep-alive pool for an origin (`http://host:port`), created on first use, trusting `ca`
   * (as the config loaded it) for https. Throws UpstreamError once closed.
   */
  get(origin: string, ca?: CaBundle): Dispatcher;
  /** Whether close() or destroy() was called: get() would throw. */
  readonly closed: boolean;
  /** Drains: in-flight requests finish, then connections close. */
  close(): Promise<void>;
  /** Cuts every connection now. */
  destroy(): Promise<void>;
}

/**
 * Most origins with a pool at once. Inbound and routed outbound use a handful
 * of origins; passthrough outbound reaches whatever the app names, and every
 * pool holds sockets and parser buffers, so without a bound a long-running
 * sidecar grows with every origin it ever called. 256 is far above any real
 * working set, so a steady workload never churns connections.
 */
export const MAX_POOLS = 256;

/** A pool nobody looked up for this long is closed (its origin may never be called again). */
export const POOL_IDLE_MS = 60_000;

/**
 * One undici Pool per upstream origin, sized and timed from `limits`. Whoever
 * creates it closes it. The upstream timeout (`limits.upstreamTimeoutSeconds`
 * for the response headers and between body chunks) is kept by one shared
 * deadline watch (src/proxy/deadline.ts) rather than undici's per-request
 * timers, which cost memory at proxy request rates.
 *
 * The pools are bounded (why: MAX_POOLS): at most `maxPools`, the least
 * recently used one goes first, and one idle for `idleMs` goes too (within
 * 1.5 × `idleMs`), found by a single sweep every `idleMs / 2` rather than a
 * timer per pool or request. An evicted pool closes gracefully: its requests
 * in flight finish, then its connections close, and close()/destroy() still
 * wait for it.
 *
 * A dispatcher from get() outlives its pool's eviction, since callers may keep
 * it (inbound keeps one for good): a request through it goes to its origin's
 * current pool, opening a new one if needed. That lookup also counts as a use
 * of the pool, so an origin busy through a kept dispatcher is never idle.
 */
export function createUpstreamPools(
  limits: LimitsConfig,
  opts: { maxPools?: number; idleMs?: number; own?: OwnConnections } = {},
): UpstreamPools {
  const own = opts.own;
  const idleMs = opts.idleMs ?? POOL_IDLE_MS;
  // A queued request may also wait for its connection to be made: that has its own timeout (502
  // upstream_connect_failed), which must have run out before the queue's (504) does.
  const deadlines = createDeadlineWatch(limits.upstreamTimeoutSeconds * 1000, (limits.upstreamTimeoutSeconds + limits.upstreamConnectTimeoutSeconds) * 1000);
  /** Evicted pools still closing, with the promise of their end. */
  const retiring = new Map<Pool, Promise<unknown>>();
  let retireBy: 'close' | 'destroy' = 'close';
  let stopped = false;

  // lru-cache reads its clock twice a lookup (is it stale, then its new age). performance.now() there
  // costs ~50 ns and a heap number each time; idle eviction needs no finer time than the sweep's period,
  // so the cache reads a clock that the sweep advances, and a lookup allocates nothing.
  let now = performance.now();
  const cache = new LRUCache<string, Upstream>({
    max: opts.maxPools ?? MAX_POOLS,
    ttl: idleMs,
    updateAgeOnGet: true,
    perf: { now: () => now },
    // 0: no caching of the clock. The default (1 ms) caches it with a timer to forget it, a timer per millisecond under load.
    ttlResolution: 0,
    dispose: (up) => {
      const done = up.pool[retireBy]()
        .catch(() => {}) // only rejects when destroy() came first, which is the end wanted
        .finally(() => retiring.delete(up.pool));
      retiring.set(up.pool, done);
    },
  });
  // One timer for all pools (lru-cache's ttlAutopurge would start one per pool).
  const sweep = setInterval(
    () => {
      now = performance.now();
      cache.purgeStale();
    },
    Math.max(1, idleMs / 2),
  ).unref();

  // Opening (and reopening after an eviction) happens on the request path: it reads no files, the CA is the PEM the config loaded.
  const open = (key: string, origin: string, ca: CaBundle | undefined): Upstream => {
    const connectOptions = {
      timeout: limits.upstreamConnectTimeoutSeconds * 1000,
      ...(ca ? { ca: ca.pem } : {}),
    };
    const pool = new Pool(origin, {
      connections: limits.upstreamConnections,
      pipelining: 1,
      connect: own ? trackingConnector(connectOptions, own) : connectOptions,
      // 0 = off: the deadline watch enforces limits.upstreamTimeoutSeconds instead.
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: 4_000,
    });
    let send!: Dispatch; // this pool's own dispatch through the deadline watch (compose hands it over at once)
    const dispatcher = pool.compose(deadlines.interceptor, (inner) => {
      send = inner;
      // After close()/destroy() nothing new opens: the request fails on the closed pool, as it always did.
      return (o, handler) => (cache.get(key, GET) ?? (stopped ? up : open(key, origin, ca))).send(o, handler);
    });
    const up: Upstream = { pool, dispatcher, send };
    cache.set(key, up);
    return up;
  };

  const stop = (how: 'close' | 'destroy') => {
    stopped = true;
    retireBy = how;
    clearInterval(sweep);
    cache.clear(); // disposes every pool: they join `retiring`
  };

  return {
    get(origin, ca) {
      // A request that waited (for a token) while its component was retired: no new pool that nobody would close.
      if (stopped) throw new UpstreamError('upstream_reset', 'the upstream connections are closed');
      const key = ca ? `${origin}|${ca.file}` : origin;
      return (cache.get(key, GET) ?? open(key, origin, ca)).dispatcher;
    },
    get closed() {
      return stopped;
    },
    async close() {
      stop('close');
      await Promise.all(retiring.values());
      deadlines.close();
    },
    async destroy() {
      stop('destroy');
      // Pools evicted earlier are still closing gracefully: cut them too.
      await Promise.all([...retiring.keys()].map((pool) => pool.destroy()));
      retiring.clear();
      deadlines.close();
    },
  };
}

type Dispatch = Dispatcher['dispatch'];

/** undici's own connector, with every socket it connects recorded in `own` (see OwnConnections) and its resets marked (see upstream-reset.ts). */
function trackingConnector(options: BuildConnector.BuildOptions, own: OwnConnections): BuildConnector.connector {
  const connect = buildConnector(options);
  return (o, callback) =>
    connect(o, (...args) => {
      if (args[1]) {
        own.track(args[1]);
        watchUpstreamResets(args[1]);
      }
      callback(...args);
    });
}

interface Upstream {
  readonly pool: Pool;
  /** What get() hands out: follows the origin to its current pool (see createUpstreamPools). */
  readonly dispatcher: Dispatcher;
  /** This pool's own dispatch through the deadline watch. */
  readonly send: Dispatch;
}

/** lru-cache's get() allocates an options object when given none; a request reuses this one (get() writes `status` into it). */
const GET: LRUCache.GetOptions<string, Upstream, unknown> = {};
