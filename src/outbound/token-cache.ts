import type { Metrics } from '../admin/metrics.js';
import type { Clock } from '../clock.js';
import { DEFAULTS } from '../config/defaults.js';
import { SidecarError, TokenUnavailableError } from '../errors.js';
import { audit, capped, MAX_ERROR_TEXT, type Logger } from '../log.js';
import { backoffDelay, clamp01, spreadWait } from '../jitter.js';
import { timerScheduler, type Scheduler } from '../scheduler.js';
import type { IssuedToken, TokenSource } from './sources/index.js';
import { jwtClaims } from './sources/token-format.js';
import { isoTimeOrNumber } from '../time-text.js';

/** One cached token's identity: which source, for which audience and scopes. */
export interface TokenBinding {
  /** Cache key: source identity + audience + scopes. */
  key: string;
  /** The same, stable across config reloads (the source's config rather than its position), for handover. */
  identity: string;
  /**
   * `identity` plus what a request is sent with beyond the config as written (the secret or key read from a file,
   * the CA bundle, the request timeout): a request in flight is handed over only where this is unchanged too.
   */
  requestIdentity: string;
  source: TokenSource;
  audience: string;
  /** Sorted, de-duplicated. */
  scopes: readonly string[];
}

export interface TokenCacheOptions {
  clock: Clock;
  logger: Logger;
  metrics: Metrics;
  /** Long-lived tokens renew no later than this before `exp` (seconds). */
  refreshMarginSeconds: number;
  /** First retry delay after a failed fetch (seconds); doubles per failure. Default DEFAULTS.outbound.retryMinSeconds. */
  retryMinSeconds?: number;
  /** Retry delay ceiling (seconds). Default DEFAULTS.outbound.retryMaxSeconds. */
  retryMaxSeconds?: number;
  /** [0, 1) source for jitter; default Math.random. */
  random?: () => number;
  scheduler?: Scheduler;
  /**
   * The predecessor's tokens (config reload): a binding whose source, audience and scopes are
   * unchanged starts with the token it had, so a reload neither refetches nor, while the IdP is
   * down, loses a token that is still valid. A request for a token that was in flight is awaited,
   * not sent again.
   */
  handover?: TokenCacheSnapshot;
}

/** What one binding had when a reload took the snapshot: a valid token, a request for one in flight, a backoff, or some of them. */
export interface HandedOverToken {
  token?: IssuedToken;
  /** When `token` was due for renewal. */
  refreshAt: number;
  fetch?: HandedOverFetch;
  backoff?: HandedOverBackoff;
}

/**
 * A binding whose last request failed and whose next one waits (backoff, or the IdP's Retry-After). A reload must not
 * ask sooner: during an IdP throttle a config rollout would otherwise send the whole fleet's requests at the moment the
 * IdP asked for quiet, and reset each backoff to its minimum.
 */
export interface HandedOverBackoff {
  failures: number;
  /** Monotonic clock time (ms) of the next request (the same process, so the same clock). */
  retryAt: number;
  lastError: TokenUnavailableError;
  /** TokenBinding.requestIdentity of the binding that failed: a request sent another way (a rotated secret) goes at once. */
  requestIdentity: string;
}

/** A request in flight. It runs on the predecessor's source, which counts and logs its outcome. */
export interface HandedOverFetch {
  promise: Promise<IssuedToken>;
  /** TokenBinding.requestIdentity of the binding that sent it: only a binding with the same one may adopt it. */
  requestIdentity: string;
  /**
   * Called by a successor that adopts it: the predecessor keeps its source open until the request settles or every
   * adopter has called the function returned (when it closes), instead of cutting it when it closes itself.
   */
  claim(): () => void;
}

/** By binding identity (TokenBinding.identity). */
export type TokenCacheSnapshot = ReadonlyMap<string, HandedOverToken>;

export interface TokenCache {
  /** A valid token for the binding: cached, or fetched (one request per key however many callers wait). Rejects with TokenUnavailableError. */
  get(binding: TokenBinding): Promise<string>;
  /** The cached token if it is valid, else undefined; never fetches (a due renewal still starts). The hot path: no promise. */
  peek(binding: TokenBinding): string | undefined;
  /** Fetches if there is no valid token yet; never rejects (start-up prefetch). */
  prefetch(binding: TokenBinding): Promise<void>;
  /** True while the key holds a token that has not expired. */
  hasValid(key: string): boolean;
  /** Why the last fetch for a key failed, while it has failed since the last success. */
  lastError(key: string): string | undefined;
  /** Cancels every timer, stops watching the sources, and forgets every token. */
  close(): void;
  /** The tokens that are still valid and the requests in flight, for a successor built by a config reload. */
  snapshot(): TokenCacheSnapshot;
  /**
   * One promise per request a successor adopted (HandedOverFetch.claim), resolved when the request settles or every
   * adopter has closed: the sources must stay open until then, or closing this config would cut what a new one waits on.
   */
  handedOverFetches(): Promise<void>[];
}

interface Entry {
  binding: TokenBinding;
  token?: IssuedToken;
  refreshAt: number;
  inflight?: Promise<IssuedToken>;
  failures: number;
  /**
   * No caller-triggered fetch before this monotonic time (ms) after a failure (backoff): a backoff is elapsed time, which
   * a step of the wall clock (NTP, `date -s`) must not stretch.
   */
  retryAt: number;
  lastError?: TokenUnavailableError;
  cancel?: () => void;
  /** Stops the source's watch (file sources), if it has one. */
  unwatch?: () => void;
  /** Tells the predecessor this cache no longer waits for the request it adopted (see HandedOverFetch.claim). */
  releaseAdopted?: () => void;
}

/**
 * When to renew a token obtained at `obtainedAt` that expires at `expiresAt`
 * (ms): a point spread evenly between 50% and 80% of its lifetime, no later
 * than `expiresAt - marginMs`, but never before half the lifetime so short
 * tokens do not loop. A token too short for both (at most 2.5 margins) is renewed
 * between 50% and 60%: the window never shrinks to a single point, or a fleet
 * that got its tokens together (an IdP back after an outage) would renew in
 * step for as long as it runs. A source's `recheckAt` wins when earlier.
 * A token is renewed as if it lived at most LONGEST_RENEWAL_LIFETIME_MS: an IdP that says `expires_in: 1e12` (its unit
 * wrong, or a token it may revoke long before) is asked again within a day, not held for ever. The token is still used
 * up to its own expiry while renewals fail.
 */
export function computeRefreshAt(obtainedAt: number, expiresAt: number, marginMs: number, random: number, recheckAt?: number): number {
  const lifetime = Math.min(expiresAt - obtainedAt, LONGEST_RENEWAL_LIFETIME_MS);
  const earliest = obtainedAt + lifetime * 0.5;
  const latest = Math.max(Math.min(obtainedAt + lifetime * 0.8, expiresAt - marginMs), obtainedAt + lifetime * 0.6);
  // Spread over the whole window: clamping a wider spread to its end would put a share of the fleet on one point.
  const at = earliest + (latest - earliest) * clamp01(random);
  return recheckAt !== undefined ? Math.min(at, Math.max(obtainedAt, recheckAt)) : at;
}

/** The longest lifetime computeRefreshAt plans a renewal for: a day, so a token is renewed 12 to 19.2 hours in at the latest. */
export const LONGEST_RENEWAL_LIFETIME_MS = 86_400_000;

/**
 * The outbound token cache: keeps one token per (source, audience, scopes),
 * renews it ahead of expiry in the background (and at once when the source
 * reports a change, as a replaced token file), keeps using it while renewal
 * fails (until it expires) and retries with backoff.
 */
export function createTokenCache(opts: TokenCacheOptions): TokenCache {
  const { clock, logger, metrics } = opts;
  const random = opts.random ?? Math.random;
  const scheduler = opts.scheduler ?? timerScheduler;
  const marginMs = opts.refreshMarginSeconds * 1000;
  const retryMinMs = (opts.retryMinSeconds ?? DEFAULTS.outbound.retryMinSeconds) * 1000;
  const retryMaxMs = (opts.retryMaxSeconds ?? DEFAULTS.outbound.retryMaxSeconds) * 1000;
  const noTokenRetryMaxMs = DEFAULTS.outbound.retryMaxWithoutTokenSeconds * 1000;
  const entries = new Map<string, Entry>();
  /** Requests in flight that successors adopted: how many adopters still wait, and `done` once none does or it settled. */
  const handedOver = new Map<Promise<IssuedToken>, { adopters: number; done: Promise<void>; end: () => void }>();
  let closed = false;
  const untrackExpiries = metrics.tokenExpiry.track(function* () {
    for (const e of entries.values()) if (e.token) yield [e.binding.audience, e.token.expiresAt] as const;
  });

  const entryFor = (binding: TokenBinding): Entry => {
    let e = entries.get(binding.key);
    if (!e) {
      e = { binding, refreshAt: 0, failures: 0, retryAt: -Infinity };
      entries.set(binding.key, e);
      // Before the first fetch, so that fetch reads the version the watch starts from, or a later one.
      const entry = e;
      e.unwatch = binding.source.watch?.({ audience: binding.audience, scopes: binding.scopes }, () => onSourceChanged(entry));
      const inherited = opts.handover?.get(binding.identity);
      if (inherited?.token && inherited.token.expiresAt > clock.now()) {
        e.token = inherited.token;
        e.refreshAt = inherited.refreshAt;
        logger.info(
          { event: 'token_handed_over', source: binding.source.kind, audience: binding.audience, expiresAt: isoTimeOrNumber(inherited.token.expiresAt) },
          'token carried over from the previous config',
        );
        arm(e, e.refreshAt);
      }
      const inFlight = inherited?.fetch;
      if (inFlight && inFlight.requestIdentity === binding.requestIdentity) adopt(e, inFlight);
      const backoff = inherited?.backoff;
      if (backoff && !e.inflight && backoff.requestIdentity === binding.requestIdentity && clock.monotonic() < backoff.retryAt) {
        // The predecessor's next request, not an earlier one: calls fail fast with its last error until then.
        e.failures = backoff.failures;
        e.retryAt = backoff.retryAt;
        e.lastError = backoff.lastError;
        armIn(e, backoff.retryAt - clock.monotonic());
      }
    }
    return e;
  };

  /**
   * Waits on the predecessor's request for this binding's token instead of sending another: a reload during a
   * cold start or a renewal would otherwise ask the IdP twice for one token. The predecessor counts and logs the
   * outcome; this cache takes the token, or the failure's backoff, as if the request had been its own.
   */
  const adopt = (e: Entry, fetch: HandedOverFetch): void => {
    logger.info({ event: 'token_fetch_handed_over', source: e.binding.source.kind, audience: e.binding.audience }, 'token request in flight carried over from the previous config');
    e.releaseAdopted = fetch.claim();
    const p = fetch.promise
      .then((token) => {
        // Checked by the sender, but time has passed since: an expired token is a failure here too, never handed out.
        assertUnexpired(token);
        if (isCurrent(e)) noteSuccess(e, token);
        return token;
      })
      .catch((raw: unknown) => {
        const err = asTokenError(raw);
        throw isCurrent(e) ? noteFailure(e, err, false) : err;
      })
      .finally(() => {
        if (e.inflight === p) e.inflight = undefined;
      });
    e.inflight = p;
    p.catch(() => {});
  };

  const isValid = (e: Entry, now: number): e is Entry & { token: IssuedToken } => e.token !== undefined && now < e.token.expiresAt;

  /** Renews at `at` on the wall clock (a refresh point, which follows the token's exp). */
  const arm = (e: Entry, at: number): void => armIn(e, at - clock.now(), () => at - clock.now());

  /** Renews after `delayMs`; `left` says how long is left when the timer fires. */
  const armIn = (e: Entry, delayMs: number, left: () => number = () => 0): void => {
    e.cancel?.();
    e.cancel = undefined;
    if (closed) return;
    e.cancel = scheduler.schedule(delayMs, () => {
      e.cancel = undefined;
      if (closed || entries.get(e.binding.key) !== e) return;
      // Timers cap at ~24.8 days; a far-off renewal re-arms instead of firing early.
      const ms = left();
      if (ms > 1000) return armIn(e, ms, left);
      if (!e.inflight) void renew(e).catch(() => {});
    });
  };

  const isCurrent = (e: Entry): boolean => !closed && entries.get(e.binding.key) === e;

  const assertUnexpired = (token: IssuedToken): void => {
    if (!(token.expiresAt > clock.now())) throw new TokenUnavailableError('the token source returned a token that has already expired');
  };

  /** A successor adopts `fetch`: it is handed over until it settles or every adopter lets go (the function returned). */
  const claim = (fetch: Promise<IssuedToken>): (() => void) => {
    let lent = handedOver.get(fetch);
    if (!lent) {
      let resolve!: () => void;
      const done = new Promise<void>((r) => (resolve = r));
      const entry = {
        adopters: 0,
        done,
        // Synchronous, so a request the sources cut after every adopter let go is no longer handed over when it fails.
        end: () => {
          if (handedOver.get(fetch) === entry) handedOver.delete(fetch);
          resolve();
        },
      };
      lent = entry;
      handedOver.set(fetch, entry);
      void fetch.then(entry.end, entry.end);
    }
    const adopted = lent;
    adopted.adopters += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--adopted.adopters === 0) adopted.end();
    };
  };

  /**
   * The source says its token may have changed (a token file was replaced): fetch now rather than at the refresh
   * point, but after any fetch already under way, which may have read the old version.
   */
  const onSourceChanged = (e: Entry): void => {
    if (!isCurrent(e)) return;
    void (e.inflight ?? Promise.resolve())
      .catch(() => {})
      .then(() => (isCurrent(e) ? renew(e, true) : undefined))
      .catch(() => {});
  };

  const renew = (e: Entry, onChange = false): Promise<IssuedToken> => {
    if (e.inflight) return e.inflight;
    const p = fetchOnce(e, onChange).finally(() => {
      if (e.inflight === p) e.inflight = undefined;
    });
    e.inflight = p;
    p.catch(() => {});
    return p;
  };

  const fetchOnce = async (e: Entry, onChange: boolean): Promise<IssuedToken> => {
    const { source, audience, scopes } = e.binding;
    let token: IssuedToken;
    try {
      token = await source.fetch({ audience, scopes });
      assertUnexpired(token);
    } catch (raw) {
      const err = asTokenError(raw);
      // Closed (a reload retired this config, or shutdown), the fetch was cut by us closing its source, not failed by
      // the IdP: counted and logged, every reload during a renewal would report an IdP failure that never happened.
      // A fetch a successor adopted is the exception while it waits for it: its source stays open, so it really failed.
      if (closed && !(e.inflight && handedOver.has(e.inflight))) throw err;
      throw noteFailure(e, err, true);
    }
    const now = clock.now();
    // A fetch that brings back the very token held, on a change (the file touched, or rewritten with the same
    // content) or from a source that only reads tokens (a file's once-a-minute re-read), issued nothing: it moves the
    // renewal point but is neither announced nor counted. After failures it is, as the recovery. An IdP that answers
    // with the token it gave before was still asked, so that stays a counted request.
    const isSameToken = (onChange || source.readsIssuedTokens === true) && e.failures === 0 && e.token?.token === token.token;
    noteSuccess(e, token);
    if (isSameToken) return token;
    metrics.tokenRequests.inc({ source: source.kind, audience, result: 'success' });
    audit(logger, 'token_issued', {
      source: source.kind,
      issuer: token.issuer,
      audience,
      scopes,
      expiresAt: isoTimeOrNumber(token.expiresAt),
      jti: token.jti,
      refreshAt: isoTimeOrNumber(e.refreshAt),
      // issuer, jti and (when it is the earlier) expiresAt are read from the JWT as the IdP sent it, with no signature
      // check (the peer's sidecar does that): marked, as SPEC asks of claims from an unverified token. Once per token.
      ...(jwtClaims(token.token) !== undefined ? { claimsVerified: false } : {}),
    });
    return token;
  };

  /** Holds a new token and schedules its renewal. */
  const noteSuccess = (e: Entry, token: IssuedToken): void => {
    e.token = token;
    e.failures = 0;
    e.retryAt = -Infinity;
    e.lastError = undefined;
    e.refreshAt = computeRefreshAt(clock.now(), token.expiresAt, marginMs, random(), token.recheckAt);
    if (!closed) arm(e, e.refreshAt);
  };

  /**
   * Backs off after a failed request and schedules the retry; `count`: metric and audit line (the cache that sent it).
   * Returns the failure as this binding's callers get it, with when the binding asks next (TokenUnavailableError.retryAt).
   */
  const noteFailure = (e: Entry, err: TokenUnavailableError, count: boolean): TokenUnavailableError => {
    const { source, audience, scopes } = e.binding;
    const now = clock.now();
    e.failures += 1;
    // With no usable token every call is failing, so retry sooner: a recovered IdP should
    // bring calls back within seconds, not after a full backoff ceiling.
    const ceilingMs = isValid(e, now) ? retryMaxMs : Math.min(retryMaxMs, noTokenRetryMaxMs);
    // An IdP that says how long to wait (429/503 Retry-After, RFC 9110 §10.2.3) is not asked sooner, up to
    // retryMaxSeconds; a failure that asking again soon would only repeat (a token for another audience, or one it cannot
    // use, each minted for nothing) waits the whole of it.
    const asked = err.lasting ? retryMaxMs : err.retryAfterMs === undefined ? 0 : spreadWait(err.retryAfterMs, retryMaxMs, random());
    const backoffMs = Math.max(asked, backoffDelay(e.failures, retryMinMs, ceilingMs, random()));
    // Nor past the expiry of the token still held: from then on calls fail, and a retry chosen under the long
    // ceiling would leave them failing for up to retryMaxSeconds after the IdP is back.
    const retryInMs = isValid(e, now) ? Math.min(backoffMs, e.token.expiresAt - now) : backoffMs;
    e.retryAt = clock.monotonic() + retryInMs;
    // Every call refused with this error until then is told when to come back (the outbound 503's Retry-After).
    e.lastError = err.retryingAt(e.retryAt);
    if (count) {
      const result = resultLabel(err);
      metrics.tokenRequests.inc({ source: source.kind, audience, result });
      audit(logger, 'token_fetch_failed', {
        source: source.kind,
        audience,
        scopes,
        reason: result,
        oauthError: err.oauthError,
        error: capped(err.message, MAX_ERROR_TEXT),
        // Closed, it was handed over: what happens next (keeping a token, when to retry) is the new config's to decide.
        ...(closed ? { handedOver: true } : { failures: e.failures, keepingToken: isValid(e, now), retryInMs: Math.round(retryInMs) }),
      });
    }
    if (!closed) armIn(e, retryInMs);
    return e.lastError;
  };

  const peek = (binding: TokenBinding): string | undefined => {
    if (closed) return undefined;
    const e = entryFor(binding);
    const now = clock.now();
    if (!isValid(e, now)) return undefined;
    // The timer normally renews; this catches a late timer (suspended process, fake clock).
    if (now >= e.refreshAt && clock.monotonic() >= e.retryAt && !e.inflight) void renew(e).catch(() => {});
    return e.token.token;
  };

  const get = async (binding: TokenBinding): Promise<string> => {
    if (closed) throw new TokenUnavailableError('the token cache is closed');
    const cached = peek(binding);
    if (cached !== undefined) return cached;
    const e = entryFor(binding);
    // During backoff, fail fast with the last error instead of sending every call to a failing IdP.
    if (!e.inflight && clock.monotonic() < e.retryAt && e.lastError) throw e.lastError;
    return (await renew(e)).token;
  };

  return {
    get,
    peek,
    async prefetch(binding) {
      await get(binding).catch(() => {});
    },
    hasValid(key) {
      const e = entries.get(key);
      return e !== undefined && isValid(e, clock.now());
    },
    lastError: (key) => entries.get(key)?.lastError?.message,
    close() {
      closed = true;
      untrackExpiries();
      for (const e of entries.values()) {
        e.cancel?.();
        e.unwatch?.();
        // An adopted request this cache handed on in turn (a second reload) is released when the next one lets go.
        const onward = e.inflight && handedOver.get(e.inflight);
        if (e.releaseAdopted) void (onward ? onward.done.then(e.releaseAdopted) : e.releaseAdopted());
      }
      entries.clear();
    },
    snapshot() {
      const now = clock.now();
      const out = new Map<string, HandedOverToken>();
      for (const e of entries.values()) {
        const promise = e.inflight;
        const backingOff = !promise && e.lastError !== undefined && clock.monotonic() < e.retryAt;
        if (!isValid(e, now) && !promise && !backingOff) continue;
        out.set(e.binding.identity, {
          ...(isValid(e, now) ? { token: e.token } : {}),
          refreshAt: e.refreshAt,
          ...(promise ? { fetch: { promise, requestIdentity: e.binding.requestIdentity, claim: () => claim(promise) } } : {}),
          ...(backingOff ? { backoff: { failures: e.failures, retryAt: e.retryAt, lastError: e.lastError!, requestIdentity: e.binding.requestIdentity } } : {}),
        });
      }
      return out;
    },
    handedOverFetches: () => [...handedOver.values()].map((l) => l.done),
  };
}

function asTokenError(raw: unknown): TokenUnavailableError {
  return raw instanceof TokenUnavailableError
    ? raw
    : new TokenUnavailableError(`token source failed: ${raw instanceof Error ? raw.message : String(raw)}`, undefined, { cause: raw });
}

/**
 * The registered OAuth error codes a token endpoint answers with (RFC 6749 §5.2 and §4.1.2.1, RFC 8707 §2,
 * RFC 9449 §12.2): the only IdP words that become a label value. Any other code is the IdP's to invent, one per
 * request if it likes (`err_8f3a…`), and each would be a new series for as long as the process runs.
 */
const OAUTH_ERROR_CODES: ReadonlySet<string> = new Set([
  'invalid_request', 'invalid_client', 'invalid_grant', 'unauthorized_client', 'unsupported_grant_type', 'invalid_scope',
  'invalid_target', 'access_denied', 'server_error', 'temporarily_unavailable', 'invalid_dpop_proof', 'use_dpop_nonce',
]);

/** Low-cardinality metric label for a failure: a registered OAuth error code (else `oauth_error`), else the failing step's code. */
function resultLabel(err: TokenUnavailableError): string {
  if (err.oauthError) return OAUTH_ERROR_CODES.has(err.oauthError) ? err.oauthError : 'oauth_error';
  const cause = err.cause;
  if (cause instanceof SidecarError && /^[a-z0-9_]{1,40}$/.test(cause.code)) return cause.code;
  return 'error';
}
