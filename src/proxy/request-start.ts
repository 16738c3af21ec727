import { performance } from 'node:perf_hooks';
import type { Refusal } from './limits.js';

/** When the handler took a request (performance.now()), kept on the request itself: see refusalStartedAt. */
const STARTED_AT = Symbol('startedAt');

/** Notes that the handler takes `req` now, and returns that time. */
export function markStarted(req: object): number {
  const now = performance.now();
  (req as { [STARTED_AT]?: number })[STARTED_AT] = now;
  return now;
}

/**
 * Where the duration of a request the listener refused starts (`oidc_sidecar_request_duration_seconds`):
 * - handed on before its body broke or stalled: when the handler took it, so the stalled request is timed as what it
 *   was, not as an instant one;
 * - refused on its head (a parse error, an expectation, too many headers): now, as the answer is immediate;
 * - refused because its head did not arrive in time (408 `request_timeout` before any handler saw it): undefined, not
 *   timed, since when it began is not known and timing it from the refusal would record a slow request as instant.
 */
export function refusalStartedAt(req: object, refusal: Pick<Refusal, 'reason'>): number | undefined {
  const started = (req as { [STARTED_AT]?: number })[STARTED_AT];
  if (started !== undefined) return started;
  return refusal.reason === 'request_timeout' ? undefined : performance.now();
}
