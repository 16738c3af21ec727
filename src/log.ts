import { pino, type Logger, type DestinationStream } from 'pino';
import { isoTimestamp } from './time-text.js';

export type { Logger } from 'pino';

/**
 * Paths pino censors wherever they appear. Defence in depth: the code never
 * passes a token, secret or Authorization header to the logger in the first
 * place; this catches the day someone logs a whole headers object.
 */
const REDACT_PATHS = [
  'authorization', '*.authorization', '*.*.authorization',
  'Authorization', '*.Authorization', '*.*.Authorization',
  'cookie', '*.cookie', '*.*.cookie',
  'set-cookie', '*["set-cookie"]', '*.*["set-cookie"]',
  'token', '*.token', 'access_token', '*.access_token', 'id_token', '*.id_token',
  'clientSecret', '*.clientSecret', '*.*.clientSecret', 'client_secret', '*.client_secret',
  'client_assertion', '*.client_assertion', 'subject_token', '*.subject_token',
  'secret', '*.secret', 'password', '*.password',
];

/**
 * Bytes of log lines held for stdout while it does not take them (a stuck container log driver, a pipe nobody
 * reads); a line that would pass this is dropped whole and counted, as Envoy drops access-log lines, so a log
 * consumer's failure costs log lines and not the data plane: unbounded, a flood of rejections (each one a warn
 * line) grew the heap until the process was killed. 4 MiB is about 10,000 rejection lines (most are 300-500 bytes;
 * 3,000 of the longest, with claims and path at their caps), seconds of logging at thousands of refusals a second:
 * enough to ride out a log driver's hiccup, and small beside the sidecar's own 60-90 MB. Docker's non-blocking log
 * mode buffers 1 MB by default. Not a config key: a bigger buffer only delays the drops when stdout is stuck, and a
 * smaller one saves too little to tune.
 */
export const MAX_BUFFERED_LOG_BYTES = 4 * 1024 * 1024;

export interface LoggerOptions {
  level?: string;
  service?: string;
  /** Where lines go; default stdout. Tests pass a stream to assert on log lines. */
  destination?: DestinationStream;
  /**
   * Told how many lines stdout's buffer dropped (past MAX_BUFFERED_LOG_BYTES), each time it drops some; the
   * default destination only: a stream passed as `destination` is not bounded here.
   */
  onLinesDropped?: (lines: number) => void;
}

/**
 * A JSON logger with the sidecar's redaction rules. On stdout, once a full buffer has dropped lines and stdout
 * has taken all it held, one warn line (`log_lines_dropped`) says how many were lost.
 */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const options = {
    level: opts.level ?? 'info',
    base: opts.service ? { service: opts.service } : {},
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    // pino's isoTime, without Date.prototype.toISOString (src/time-text.ts says why).
    timestamp: () => `,"time":"${isoTimestamp(Date.now())}"`,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (opts.destination) return pino(options, opts.destination);
  // sonic-boom (4.x) drops a write whole, never a part of it, and pino writes each line with one write.
  const stdout = pino.destination({ dest: 1, sync: false, maxLength: MAX_BUFFERED_LOG_BYTES });
  const logger = pino(options, stdout);
  stdoutOf.set(logger, stdout);
  let unreported = 0;
  stdout.on('drop', (data: string | Buffer) => {
    const lines = countLines(data);
    unreported += lines;
    opts.onLinesDropped?.(lines);
  });
  holdThroughWriteErrors(stdout);
  // 'drain' comes when a write finished and nothing is left to write, so the notice always fits, and it is said
  // once per run of drops: it cannot itself overflow the buffer or call for another notice.
  stdout.on('drain', () => {
    if (unreported === 0) return;
    const dropped = unreported;
    unreported = 0;
    logger.warn({ event: 'log_lines_dropped', dropped }, `${dropped} log lines dropped: stdout did not take them in time`);
  });
  return logger;
}

/** The part of sonic-boom (pino.destination) that holdThroughWriteErrors needs. */
interface StdoutStream {
  on(event: 'error', listener: (err: NodeJS.ErrnoException) => void): unknown;
  on(event: 'write', listener: () => void): unknown;
  flushSync(): void;
}

/**
 * Keeps a stdout that fails its writes (ENOSPC from a log file on a full disk, EIO from the terminal of a closed SSH
 * session) from stopping the process. pino lets only EPIPE pass; any other write error was an uncaught exception,
 * and at exit sonic-boom's flushSync retries such a write for ever: the sidecar held its ports, answered nothing and
 * ignored SIGTERM. A line that failed stays held and is written again with the next one, so the log resumes when
 * stdout takes writes again; meanwhile the buffer's bound (MAX_BUFFERED_LOG_BYTES) drops and counts lines, as for a
 * stuck pipe. Said once per run of failures on stderr, the one place left to say it.
 */
function holdThroughWriteErrors(stdout: StdoutStream, stderr: NodeJS.WritableStream = process.stderr): void {
  let failing = false;
  stdout.on('error', (err) => {
    // pino's own listener hands every error but EPIPE on again: the same failure arrives twice.
    if (failing || err.code === 'EPIPE') return;
    failing = true;
    stderr.write(`oidc-sidecar: cannot write the log to stdout (${err.code ?? err.message}): lines are held, then dropped and counted, until it takes them again\n`);
  });
  stdout.on('write', () => {
    failing = false;
  });
  const flushSync = stdout.flushSync.bind(stdout);
  // At exit (pino flushes synchronously), a stdout that is failing is given up on rather than retried for ever.
  stdout.flushSync = () => {
    if (!failing) flushSync();
  };
}

/** The stdout stream of each logger createLogger made with the default destination. */
const stdoutOf = new WeakMap<Logger, { destroy(): void }>();

/**
 * Gives up on the lines stdout has not taken yet, just before the process exits. pino writes what is still held
 * synchronously at exit, and a write to a pipe nobody reads blocks for ever: a sidecar whose log consumer was stuck
 * did not exit after its drain and stayed until the orchestrator's SIGKILL. Called once the normal flush had its
 * time, so it only cuts what stdout would not take.
 */
export function abandonUnwrittenLogs(logger: Logger): void {
  // sonic-boom's destroy() drops what it holds at once (the fd, stdout's, stays open) and does nothing the second time.
  stdoutOf.get(logger)?.destroy();
}

/** Lines in a dropped write: pino ends each with a newline; a write without one is still a line lost. */
function countLines(data: string | Buffer): number {
  let lines = 0;
  for (let i = data.indexOf('\n'); i >= 0; i = data.indexOf('\n', i + 1)) lines++;
  return Math.max(lines, 1);
}

/** Audit events named by the product contract. */
export type AuditEvent = 'token_issued' | 'token_fetch_failed' | 'token_rejected' | 'policy_denied';

export interface AuditFields {
  reason?: string;
  issuer?: string;
  audience?: string | readonly string[];
  path?: string;
  method?: string;
  peer?: string;
  [key: string]: unknown;
}

/** Writes one audit event. Rejections log at warn, issuance at info. */
export function audit(logger: Logger, event: AuditEvent, fields: AuditFields): void {
  const level = event === 'token_issued' ? 'info' : 'warn';
  logger[level]({ event, ...fields }, event);
}

const MAX_LOGGED_CLAIM = 128;

/**
 * Claims read from a token that did not verify, made safe to log: marked as
 * unverified, only a few well-known claims, each length-capped, so an attacker
 * cannot use our logs as a write channel. A claim that is not a string or a
 * number is logged as its JSON text, cut like a string (see cappedJson).
 */
export function unverifiedClaims(payload: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  if (!payload) return undefined;
  const out: Record<string, unknown> = { verified: false };
  for (const key of ['iss', 'sub', 'aud', 'azp', 'client_id', 'exp', 'iat', 'nbf', 'jti']) {
    const v = payload[key];
    if (v === undefined) continue;
    out[key] = typeof v === 'number' ? v : typeof v === 'string' ? capped(v, MAX_LOGGED_CLAIM) : cappedJson(v, MAX_LOGGED_CLAIM);
  }
  return out;
}

/**
 * JSON.stringify of a parsed JSON value, cut to `max` characters and marked `…` like capped(), without writing
 * more than that: the walk stops once `max` characters are out. JSON.stringify itself would throw RangeError
 * (call stack) on an array nested a few thousand levels deep, which JSON.parse accepts from a token of 13 KB;
 * here every level writes a `[` or `{` before going deeper, so the recursion is at most `max` levels deep.
 */
export function cappedJson(value: unknown, max: number): string {
  let out = '';
  /** False once the budget is spent: nothing more is written. */
  const write = (s: string): boolean => {
    out += s.length > max ? s.slice(0, max + 1) : s;
    return out.length <= max;
  };
  const walk = (v: unknown): boolean => {
    if (Array.isArray(v)) {
      if (!write('[')) return false;
      for (let i = 0; i < v.length; i++) if ((i > 0 && !write(',')) || !walk(v[i])) return false;
      return write(']');
    }
    if (typeof v === 'object' && v !== null) {
      if (!write('{')) return false;
      let first = true;
      for (const [k, item] of Object.entries(v)) {
        if (!write(`${first ? '' : ','}${JSON.stringify(k.length > max ? k.slice(0, max) : k)}:`) || !walk(item)) return false;
        first = false;
      }
      return write('}');
    }
    // A string is cut before it is escaped: escaping only lengthens it, so the cut still shows.
    return write(typeof v === 'string' ? JSON.stringify(v.length > max ? v.slice(0, max) : v) : String(JSON.stringify(v) ?? null));
  };
  walk(value);
  return capped(out, max);
}

/** A DNS name has at most 253 characters; a host a caller named is cut past this in a log line. */
export const MAX_LOGGED_HOST = 256;

/**
 * Text that looks like a JWT: base64url of a JSON object (`{"` encodes as `eyJ`) and any segments after it. A
 * header and payload alone identify a token and tell its claims, so they are masked as the whole token is.
 */
const JWT_LIKE = /eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)*/g;

/** `text` with anything JWT-like in it shown as `shown`; the regex runs only where there is an `eyJ` to find. */
export function maskJwts(text: string, shown = '[redacted]'): string {
  return text.includes('eyJ') ? text.replace(JWT_LIKE, shown) : text;
}

/**
 * The longest error text from outside (an IdP's answer, a token file's complaint, a refusal quoting the request) that a
 * log line, `/readyz` or an error body carries, with `capped`.
 */
export const MAX_ERROR_TEXT = 512;

/**
 * A value a caller chose (a path, a host, a message quoting either), cut to `max` characters for a log line, with
 * anything JWT-like in it shown as `[redacted]`: a caller can put a token where a path or host goes
 * (`/verify/eyJ…`, `CONNECT eyJ….eyJ…:443`), and SPEC says a token never appears in a log line.
 */
export function capped(s: string, max: number): string {
  const masked = maskJwts(s);
  return masked.length > max ? `${masked.slice(0, max)}…` : masked;
}

const MAX_LOGGED_PATH = 256;

/** A percent-encoded unreserved character (RFC 3986 §2.3): A-Z, a-z, 0-9, `-`, `.`, `_`, `~`. */
const ENCODED_UNRESERVED = /%(?:4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2[DE]|5F|7E)/gi;
/** `%25` (an encoded `%`) that starts another escape. */
const ENCODED_PERCENT = /%25(?=[0-9A-Fa-f]{2})/g;

function decodeUnreserved(s: string): string {
  return s.replace(ENCODED_UNRESERVED, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
}

/**
 * A request target as a log line may hold it, capped, with every part that can carry a credential taken out:
 * - the query (a token, RFC 6750 §2.3) and a fragment, which a client never sends (RFC 9110 §7.1) but a broken one
 *   does: an OAuth implicit-flow redirect is `/callback#access_token=…`;
 * - `;` path parameters, shown as `;…`: a servlet session id travels as `;jsessionid=…`, and `;` is refused as
 *   bad_path, so the raw target is exactly what would be logged (the marker keeps the reason visible);
 * - the userinfo of an absolute-form or authority-form target (`http://user:pass@host/p`, `user:pass@host:443`),
 *   up to its last `@`: RFC 3986 §3.2.1 deprecates a password there because URLs end up in logs.
 * The scheme and host of an absolute-form target are kept rather than cut down to the path: a target refused
 * before normalisation is logged as the caller sent it, and the host a caller named (a client that takes the
 * sidecar for a forward proxy, say) is what an operator reading that line needs. Targets that passed
 * normalisation are logged as the canonical path alone. Used by both listeners' refusal lines.
 * Percent-encoded letters, digits and `-._~` are decoded first (RFC 3986 §6.2.2.2: the same URI), so a token spelt
 * `%65yJ…` in a target refused before normalisation is still seen, and masked, as one. One encoded twice or more
 * (`%2565yJ…`) is seen once `%25` is undone too; only such a path is logged with it undone, as it is masked.
 */
export function loggedPath(target: string): string {
  const cut = target.search(/[?#]/);
  let path = cut < 0 ? target : target.slice(0, cut);
  if (!path.startsWith('/')) {
    const authorityAt = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(path)?.[0].length ?? 0;
    const slash = path.indexOf('/', authorityAt);
    const at = path.lastIndexOf('@', slash < 0 ? path.length : slash);
    if (at >= authorityAt) path = path.slice(0, authorityAt) + path.slice(at + 1);
  }
  if (path.includes('%')) path = decodeUnreserved(path);
  if (path.includes('%25')) {
    let probe = path;
    for (let i = 0; i < 4 && probe.includes('%25'); i++) probe = decodeUnreserved(probe.replace(ENCODED_PERCENT, '%'));
    if (probe.includes('eyJ')) path = probe;
  }
  return capped(path.includes(';') ? path.replace(/;[^/]*/g, ';…') : path, MAX_LOGGED_PATH);
}
