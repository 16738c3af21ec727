/** Time source, injected so tests control time without sleeping. */
export interface Clock {
  /** Milliseconds since the epoch: the wall clock, for token times (exp, nbf, iat) and dates. It can step (NTP, a resumed VM). */
  now(): number;
  /**
   * Milliseconds since an arbitrary origin, never stepping: for intervals (cooldowns, staleness), which a step must not
   * stretch. It does not count time the machine spent suspended.
   */
  monotonic(): number;
}

export const systemClock: Clock = { now: () => Date.now(), monotonic: () => performance.now() };
