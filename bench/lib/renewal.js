// The renewal check of `npm run bench`. One route of the outbound sidecar gets its tokens from a second issuer
// whose tokens live a short time, and a steady trickle of requests uses that route through both sidecars while the
// chains are under load. The sidecar renews a token ahead of expiry, at a jittered 50–80 % of its lifetime (50–60 % for tokens as short as this one)
// (src/outbound/token-cache.ts), so every token request after the first must reach the issuer between half the
// previous token's lifetime and its expiry: one request per token lifetime, never two, never late. A late renewal
// would also show as errors in the trickle, since the inbound sidecar refuses an expired token.
import autocannon from 'autocannon';

/** Requests at `rate` per second over a few connections until stop(), which resolves with the counts. */
export function startTrickle({ url, host, rate, connections = 4 }) {
  const tracker = autocannon({ url, connections, overallRate: rate, duration: 24 * 3600, headers: { host } });
  return {
    async stop() {
      tracker.stop();
      const r = await tracker;
      return { requests: r.requests.total, errors: r.non2xx + r.errors + r.timeouts };
    },
  };
}

// A token's `exp` is in whole seconds, so seen from the request that got it, a token lives between ttl − 1 s and
// ttl. The sidecar times a renewal from when the response arrived, the issuer stamps a request when it arrives.
const EXP_ROUNDING_MS = 1000;
const TOLERANCE_MS = 100;

/**
 * Checks the issuer's token request times (ms) against tokens issued for `ttlSeconds`: each request after the first
 * must come no earlier than half the shortest lifetime a token can have, and before the previous token expired.
 * Returns the intervals between requests (s), the bounds (s) and the verdict.
 */
export function checkRenewals(times, ttlSeconds) {
  const shortestLifetimeMs = ttlSeconds * 1000 - EXP_ROUNDING_MS;
  const bounds = [shortestLifetimeMs / 2 - TOLERANCE_MS, shortestLifetimeMs];
  const intervals = times.slice(1).map((t, i) => t - times[i]);
  const ok = times.length >= 2 && intervals.every((ms) => ms >= bounds[0] && ms < bounds[1]);
  return { requests: times.length, intervalsSeconds: intervals.map((ms) => ms / 1000), boundsSeconds: bounds.map((ms) => ms / 1000), ok };
}
