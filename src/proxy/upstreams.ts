import { readFileSync } from 'node:fs';
import type { Dispatcher } from 'undici';
import type { LimitsConfig } from '../config/schema.js';
import { createDeadlineWatch } from './deadline.js';
import { Pool } from './undici-core.js';

export interface UpstreamPools {
  /** The keep-alive pool for an origin (`http://host:port`), created on first use. */
  get(origin: string, caFile?: string): Dispatcher;
  /** Drains: in-flight requests finish, then connections close. */
  close(): Promise<void>;
  /** Cuts every connection now. */
  destroy(): Promise<void>;
}

/**
 * One undici Pool per upstream origin, sized and timed from `limits`. Whoever
 * creates it closes it. The upstream timeout (`limits.upstreamTimeoutSeconds`
 * for the response headers and between body chunks) is kept by one shared
 * deadline watch (src/proxy/deadline.ts) rather than undici's per-request
 * timers, which cost memory at proxy request rates.
 */
export function createUpstreamPools(limits: LimitsConfig): UpstreamPools {
  const pools = new Map<string, { pool: Pool; dispatcher: Dispatcher }>();
  const deadlines = createDeadlineWatch(limits.upstreamTimeoutSeconds * 1000);
  return {
    get(origin, caFile) {
      const key = caFile ? `${origin}|${caFile}` : origin;
      let entry = pools.get(key);
      if (!entry) {
        const pool = new Pool(origin, {
          connections: limits.upstreamConnections,
          pipelining: 1,
          connect: {
            timeout: limits.upstreamConnectTimeoutSeconds * 1000,
            ...(caFile ? { ca: readFileSync(caFile) } : {}),
          },
          // 0 = off: the deadline watch enforces limits.upstreamTimeoutSeconds instead.
          headersTimeout: 0,
          bodyTimeout: 0,
          keepAliveTimeout: 4_000,
        });
        entry = { pool, dispatcher: pool.compose(deadlines.interceptor) };
        pools.set(key, entry);
      }
      return entry.dispatcher;
    },
    async close() {
      await Promise.all([...pools.values()].map((p) => p.pool.close()));
      pools.clear();
      deadlines.close();
    },
    async destroy() {
      await Promise.all([...pools.values()].map((p) => p.pool.destroy()));
      pools.clear();
      deadlines.close();
    },
  };
}
