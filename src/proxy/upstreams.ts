import { readFileSync } from 'node:fs';
import type { Dispatcher } from 'undici';
import type { LimitsConfig } from '../config/schema.js';
import { Pool } from './undici-core.js';

export interface UpstreamPools {
  /** The keep-alive pool for an origin (`http://host:port`), created on first use. */
  get(origin: string, caFile?: string): Dispatcher;
  /** Drains: in-flight requests finish, then connections close. */
  close(): Promise<void>;
  /** Cuts every connection now. */
  destroy(): Promise<void>;
}

/** One undici Pool per upstream origin, sized and timed from `limits`. Whoever creates it closes it. */
export function createUpstreamPools(limits: LimitsConfig): UpstreamPools {
  const pools = new Map<string, Pool>();
  return {
    get(origin, caFile) {
      const key = caFile ? `${origin}|${caFile}` : origin;
      let pool = pools.get(key);
      if (!pool) {
        pool = new Pool(origin, {
          connections: limits.upstreamConnections,
          pipelining: 1,
          connect: {
            timeout: limits.upstreamConnectTimeoutSeconds * 1000,
            ...(caFile ? { ca: readFileSync(caFile) } : {}),
          },
          headersTimeout: limits.upstreamTimeoutSeconds * 1000,
          // Bodies may legitimately stream for a long time; the per-read idle cap is the upstream timeout.
          bodyTimeout: limits.upstreamTimeoutSeconds * 1000,
          keepAliveTimeout: 4_000,
        });
        pools.set(key, pool);
      }
      return pool;
    },
    async close() {
      await Promise.all([...pools.values()].map((p) => p.close()));
      pools.clear();
    },
    async destroy() {
      await Promise.all([...pools.values()].map((p) => p.destroy()));
      pools.clear();
    },
  };
}
