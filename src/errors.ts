/**
 * Every failure the sidecar reports carries a stable `code` (the SPEC's reason
 * code where one exists). The same word appears in the HTTP body, the audit log
 * event and the metric label, so callers switch on `code`, never on a message.
 */

/** Inbound reason codes from the product contract (SPEC.md). */
export const INBOUND_REASONS = [
  'missing_token',
  'malformed_token',
  'unsupported_alg',
  'unknown_issuer',
  'unknown_key',
  'bad_signature',
  'expired',
  'not_yet_valid',
  'issued_in_future',
  'audience_mismatch',
  'lifetime_too_long',
  'missing_claim',
  'policy_denied',
  'keys_unavailable',
] as const;
export type InboundReason = (typeof INBOUND_REASONS)[number];

/** Base class: `code` is stable, `status` is the HTTP status a proxy answers with. */
export class SidecarError extends Error {
  /**
   * The error is an answer to a caller (a refused token, path or route), not a fault: it gets no stack. No one reads
   * one, and capturing it was a fifth of the CPU of refusing an expired token (docs/performance.md, "Verifying tokens").
   */
  static readonly isAnswer: boolean = false;
  readonly code: string;
  readonly status: number;

  constructor(code: string, message: string, status: number, options?: { cause?: unknown }) {
    const limit = Error.stackTraceLimit;
    const stackless = (new.target as typeof SidecarError).isAnswer && setStackTraceLimit(0);
    try {
      super(message, options);
    } finally {
      if (stackless) setStackTraceLimit(limit);
    }
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

/**
 * Runs `fn` with V8's stack capture off, for synchronous code whose errors are answers (see SidecarError.isAnswer):
 * nothing else runs meanwhile, and the limit is restored however `fn` ends.
 */
export function withoutStackTraces<T>(fn: () => T): T {
  const limit = Error.stackTraceLimit;
  const stackless = setStackTraceLimit(0);
  try {
    return fn();
  } finally {
    if (stackless) setStackTraceLimit(limit);
  }
}

/**
 * Sets V8's `Error.stackTraceLimit`; false where it cannot be set (`--frozen-intrinsics`), and the stacks are then
 * captured as usual.
 */
function setStackTraceLimit(limit: number): boolean {
  try {
    Error.stackTraceLimit = limit;
    return true;
  } catch {
    return false;
  }
}

/** A bearer token that is missing, malformed or fails verification: 401 (RFC 6750 §3.1 invalid_token). */
export class TokenRejectedError extends SidecarError {
  static override readonly isAnswer = true;
  declare readonly code: InboundReason;
  constructor(reason: InboundReason, message: string, options?: { cause?: unknown }) {
    super(reason, message, 401, options);
  }
}

/** A valid token that the route's rules do not allow: 403 (RFC 6750 §3.1 insufficient_scope). */
export class PolicyDeniedError extends SidecarError {
  static override readonly isAnswer = true;
  constructor(message = 'no allow rule matched this identity') {
    super('policy_denied', message, 403);
  }
}

/** The issuer's keys cannot be obtained, so the token cannot be judged: 503, never a pass. */
export class KeysUnavailableError extends SidecarError {
  static override readonly isAnswer = true;
  /** The configured issuer whose keys are missing (the `verify` command waits for that one only). */
  readonly issuer: string;
  constructor(issuer: string, message: string, options?: { cause?: unknown }) {
    super('keys_unavailable', message, 503, options);
    this.issuer = issuer;
  }
}

/** The outbound side has no route for the requested host: 403. */
export class RouteNotFoundError extends SidecarError {
  static override readonly isAnswer = true;
  constructor(host: string) {
    super('no_route', `no outbound route for host "${host}"`, 403);
  }
}

/** No token could be obtained for an outbound call: 503 with the cause (an OAuth error code when there is one). */
export class TokenUnavailableError extends SidecarError {
  /** The OAuth `error` from the IdP (RFC 6749 §5.2), when it sent one. */
  readonly oauthError: string | undefined;
  /** How long the IdP asked us to wait before asking again (its `Retry-After`, ms), when it said. */
  readonly retryAfterMs: number | undefined;
  /** Asking again soon would get the same answer (a token for another audience): retried at the backoff's ceiling. */
  readonly lasting: boolean;
  /** Monotonic clock time (ms) of the token cache's next request for this binding's token: the app's `Retry-After`. */
  readonly retryAt: number | undefined;
  constructor(
    message: string,
    oauthError?: string,
    options?: { cause?: unknown; retryAfterMs?: number | undefined; lasting?: boolean; retryAt?: number | undefined },
  ) {
    super('token_unavailable', message, 503, options?.cause === undefined ? undefined : { cause: options.cause });
    this.oauthError = oauthError;
    this.retryAfterMs = options?.retryAfterMs;
    this.lasting = options?.lasting ?? false;
    this.retryAt = options?.retryAt;
  }

  /** The same failure for one binding, with when that binding asks next (one failed request can fail several). */
  retryingAt(retryAt: number): TokenUnavailableError {
    return new TokenUnavailableError(this.message, this.oauthError, {
      ...(this.cause === undefined ? {} : { cause: this.cause }),
      retryAfterMs: this.retryAfterMs,
      lasting: this.lasting,
      retryAt,
    });
  }
}

/** Every reason an UpstreamError gives (`oidc_sidecar_upstream_errors_total{reason}`). */
export const UPSTREAM_ERROR_CODES = ['upstream_connect_failed', 'upstream_timeout', 'upstream_reset', 'upstream_bad_response'] as const;

/** Upstream (the app or the peer sidecar) could not be reached, answered too slowly, or answered with broken HTTP. */
export class UpstreamError extends SidecarError {
  constructor(code: (typeof UPSTREAM_ERROR_CODES)[number], message: string, options?: { cause?: unknown }) {
    super(code, message, code === 'upstream_timeout' ? 504 : 502, options);
  }
}

/** One problem in a config file, addressed by its key path (`inbound.issuers.0.issuer`). */
export interface ConfigIssue {
  path: string;
  message: string;
  /** The key path as exact keys, where one of them holds a dot of its own (`log.level` written as one key). */
  keys?: readonly string[];
}

/**
 * An invalid config: lists every problem, each as `path.to.key: message`, joined with "; ". `code` is
 * `invalid_config` unless a subclass names its own kind of problem (`tls_invalid`).
 */
export class ConfigError extends SidecarError {
  readonly issues: readonly ConfigIssue[];
  constructor(issues: ConfigIssue[], options?: { code?: string; cause?: unknown }) {
    super(options?.code ?? 'invalid_config', issues.map(formatIssue).join('; '), 1, options?.cause === undefined ? undefined : { cause: options.cause });
    this.issues = issues;
  }
}

/** The problems a check reports as a ConfigError, or none; any other error is thrown on. Lets a caller gather every problem before it reports. */
export function issuesOf(check: () => unknown): readonly ConfigIssue[] {
  try {
    check();
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.issues;
  }
}

export function formatIssue(issue: ConfigIssue): string {
  return issue.path ? `${issue.path}: ${issue.message}` : issue.message;
}

/**
 * Every issue on one line, for a terminal and for grep: `invalid config: a: x` for one,
 * `invalid config (3 problems): a: x; b: y; c: z` for several. Line breaks inside an issue are
 * left as they are; the CLI escapes them (cli-failure.ts).
 */
export function summarizeIssues(subject: string, issues: readonly ConfigIssue[]): string {
  const listed = issues.map(formatIssue).join('; ');
  if (issues.length <= 1) return listed ? `${subject}: ${listed}` : subject;
  return `${subject} (${issues.length} problems): ${listed}`;
}

/** What a failed bind says: the common errno codes in words, anything else as Node gives it. */
const LISTEN_REASONS: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available on this host',
  EACCES: 'permission denied',
  ENOTFOUND: 'host name not found',
};

/** A listener could not bind the address its config key names: `inbound.listen: cannot listen on 127.0.0.1:15006: address already in use`. */
export class ListenError extends SidecarError {
  /** `isDefault`: the config does not name the address (or names the default): the user may not know the key is there. */
  constructor(key: string, address: string, cause: unknown, isDefault = false) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code;
    const reason = (code && LISTEN_REASONS[code]) ?? code ?? (cause instanceof Error ? cause.message : String(cause));
    // Any free port suits a listener only its own host calls; the inbound one is what peers are pointed at.
    const free = key === 'inbound.listen' ? 'another port' : 'a free address, such as 127.0.0.1:0 for any free port';
    const hint = isDefault ? ` (the default ${key}; set it to ${free})` : '';
    super('listen_failed', `${key}: cannot listen on ${address}: ${reason}${hint}`, 1, { cause });
  }
}

/** A bad command-line usage or an unreadable file: a one-line message, exit 1. */
export class UsageError extends SidecarError {
  /** True when yargs rejected the command line (then --help is worth pointing at). */
  readonly fromParser: boolean;
  /** The command whose options were wrong, when one was named: its own --help lists them. */
  readonly command: string | undefined;
  constructor(message: string, fromParser = false, command?: string) {
    super('usage', message, 1);
    this.fromParser = fromParser;
    this.command = command;
  }
}
