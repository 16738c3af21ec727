import { LRUCache } from 'lru-cache';
import type { Adapter, AdapterPayload } from 'oidc-provider';

/**
 * oidc-provider storage for one dev issuer: in memory, bounded, per instance
 * (the library's own memory adapter shares one store across every provider
 * in the process and warns on start). Client credentials access tokens in
 * JWT format need almost no state; what is stored is mostly client assertion
 * `jti`s for replay detection (RFC 7523 §3 item 7).
 */
export function createMemoryAdapterFactory(opts: { reusableAssertionClients: ReadonlySet<string> }): (model: string) => Adapter {
  const store = new LRUCache<string, AdapterPayload>({ max: 10_000, ttlAutopurge: false });
  return (model: string) => ({
    async upsert(id: string, payload: AdapterPayload, expiresIn: number) {
      // A federated assertion (e.g. a projected service-account token) is presented many
      // times while it is valid; clients flagged for it skip replay detection.
      if (model === 'ReplayDetection' && typeof payload.iss === 'string' && opts.reusableAssertionClients.has(payload.iss)) return;
      store.set(`${model}:${id}`, payload, expiresIn > 0 ? { ttl: expiresIn * 1000 } : {});
    },
    async find(id: string) {
      return store.get(`${model}:${id}`);
    },
    async findByUserCode() {
      return undefined;
    },
    async findByUid() {
      return undefined;
    },
    async consume(id: string) {
      const found = store.get(`${model}:${id}`);
      if (found) found.consumed = Math.floor(Date.now() / 1000);
    },
    async destroy(id: string) {
      store.delete(`${model}:${id}`);
    },
    async revokeByGrantId() {},
  });
}
