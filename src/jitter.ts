/**
 * Waits spread at random, so a fleet of sidecars that failed, or was throttled, at the same moment does not come back
 * to its IdP at the same moment too. `random` is a draw from [0, 1) (Math.random, or a fixed value in tests).
 */

/**
 * Delay before retry number `failures` (1-based), ms: exponential from
 * `minMs`, ±20% jitter so a fleet does not retry in step, within [minMs, maxMs].
 * The jitter is spread over what of that ±20% lies within the bounds, rather than clamped to them: clamped, half of
 * the draws at the ceiling (and at the first step) landed on the bound itself, and a fleet that lost its tokens
 * together retried in step there. At the ceiling a wait is 80-100% of it.
 */
export function backoffDelay(failures: number, minMs: number, maxMs: number, random: number): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(failures - 1, 30));
  const lowest = Math.min(maxMs, Math.max(minMs, base * 0.8));
  const highest = Math.max(lowest, Math.min(maxMs, base * 1.2));
  return lowest + (highest - lowest) * clamp01(random);
}

/**
 * A wait an IdP asked for (Retry-After), with 0-20% added and capped at `maxMs`: never sooner than asked, and
 * spread, so a fleet throttled at once (an HTTP-date Retry-After names one instant for all) does not come back at once
 * and get throttled again. The ceiling itself is not spread upwards; the fleet's own failures are.
 */
export function spreadWait(askedMs: number, maxMs: number, random: number): number {
  return Math.min(maxMs, askedMs * (1 + 0.2 * clamp01(random)));
}

export function clamp01(n: number): number {
  return Math.min(Math.max(n, 0), 1);
}
