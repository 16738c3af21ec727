import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Metrics } from '../admin/metrics.js';
import type { Clock } from '../clock.js';

/** What a cache hit gives back: enough to skip signature and claim checks except the time-based ones. */
export interface CacheEntry<T> {
  value: T;
  /** Clock time (ms) after which the entry is dead: the token's exp plus the allowed skew. */
  expiresAt: number;
  /** The issuer key-set version the token was verified against. */
  keyVersion: number;
}

/** A bounded LRU of verified tokens. */
export interface VerifyCache<T> {
  /** The live entry for `token`, if any; `isCurrent` may veto it (the entry is dropped). Counts hit/miss. */
  get(token: string, isCurrent?: (entry: CacheEntry<T>) => boolean): CacheEntry<T> | undefined;
  set(token: string, entry: CacheEntry<T>): void;
  readonly size: number;
}

export type VerifyCacheOptions<T> = {
  /** Most entries kept (least recently used go first); 0 disables the cache. Default 10000. */
  maxEntries: number;
  clock: Clock;
  metrics: Metrics;
} & (
  | {
      /** Most memory the values may take together, as `sizeOf` estimates it; least recently used go first. */
      maxBytes: number;
      /** About how many bytes a value holds in memory. */
      sizeOf: (value: T) => number;
    }
  | { maxBytes?: undefined; sizeOf?: undefined }
);

/**
 * The verified-token cache, so a hot caller costs a hash and a map lookup
 * instead of a signature check. Keyed by the SHA-256 of the token, so the
 * cache never holds a token; what an entry holds (the identity) grows with
 * the token's claims, so the entries are weighed too (`maxBytes`).
 * An entry never outlives its token (`expiresAt`), and the caller vetoes
 * entries verified against an older key set (rotation removes keys).
 */
export function createVerifyCache<T>(opts: VerifyCacheOptions<T>): VerifyCache<T> {
  const { clock, metrics } = opts;
  if (opts.maxEntries === 0) {
    return { get: () => undefined, set: () => {}, size: 0 };
  }
  // Entries are counted and, with a size, weighed: a count alone let 10,000 identities of 8 KB tokens take 120 MB.
  const { maxBytes, sizeOf } = opts;
  const lru = new LRUCache<string, CacheEntry<T>>(
    maxBytes !== undefined && sizeOf !== undefined
      ? // lru-cache throws on a size that is not a positive integer, and it would throw on the request's path.
        { max: opts.maxEntries, maxSize: maxBytes, sizeCalculation: (entry) => entrySize(sizeOf(entry.value), maxBytes) }
      : { max: opts.maxEntries },
  );
  // One-shot hash: no Hash object (a native handle) per request on the hot path.
  const keyOf = (token: string) => hash('sha256', token, 'base64url');
  return {
    get(token, isCurrent) {
      const key = keyOf(token);
      const entry = lru.get(key);
      if (entry && clock.now() < entry.expiresAt && (!isCurrent || isCurrent(entry))) {
        metrics.verifyCacheLookups.inc({ result: 'hit' });
        return entry;
      }
      if (entry) lru.delete(key);
      metrics.verifyCacheLookups.inc({ result: 'miss' });
      return undefined;
    },
    set(token, entry) {
      if (entry.expiresAt <= clock.now()) return;
      lru.set(keyOf(token), entry);
    },
    get size() {
      return lru.size;
    },
  };
}

/** A size lru-cache takes (a positive integer): what cannot be told is 1, what is beyond counting is too big to keep. */
function entrySize(bytes: number, maxBytes: number): number {
  if (Number.isFinite(bytes)) return Math.max(1, Math.ceil(bytes));
  return bytes === Number.POSITIVE_INFINITY ? maxBytes + 1 : 1;
}
