/** Runs a callback later; injected so tests drive renewals with a fake clock instead of sleeping. */
export interface Scheduler {
  /** Calls `fn` after about `delayMs` (ms); returns a function that cancels it. */
  schedule(delayMs: number, fn: () => void): () => void;
}

/** setTimeout's ceiling (2^31 - 1 ms, about 24.8 days); longer delays fire early and the caller re-arms. */
export const MAX_TIMER_MS = 2_147_483_647;

/** Real timers, unref'd so a pending renewal never keeps the process alive. */
export const timerScheduler: Scheduler = {
  schedule(delayMs, fn) {
    const timer = setTimeout(fn, Math.min(Math.max(0, delayMs), MAX_TIMER_MS));
    timer.unref();
    return () => clearTimeout(timer);
  },
};
