import { ConfigError, SidecarError, UsageError, summarizeIssues } from './errors.js';
import { maskJwts } from './log.js';

/**
 * What a failed command prints after `oidc-sidecar: `: one line (a config's issues joined with "; "), never a
 * stack trace, so a log collector keeps it whole and `grep` finds it. Config values and file paths reach the
 * message, so any line break in one is escaped (`oneLine`).
 */
export function describeFailure(err: unknown): string {
  const line = oneLine(failureText(err));
  // A token given without --token (`verify --config f.yaml eyJ...`) reaches the message as a config file's name or
  // an unknown argument, and a CI job's log would keep it whole, usable until it expires.
  return maskJwts(line, TOKEN_NOT_SHOWN);
}

const TOKEN_NOT_SHOWN = '[a JWT, not shown; verify takes one with --token]';

function failureText(err: unknown): string {
  if (err instanceof ConfigError) return summarizeIssues('invalid config', err.issues);
  // yargs lays some messages out over lines ("Invalid values:\n  Argument: ..."); its own layout, so it is joined, not escaped.
  if (err instanceof UsageError && err.fromParser) {
    // The command's own help: the top-level one lists only the commands, not the option that was wrong.
    return `${err.message.trim().replace(/\s*\n\s*/g, ' ')} (see "oidc-sidecar ${err.command ? `${err.command} ` : ''}--help")`;
  }
  if (err instanceof SidecarError) return err.message;
  return err instanceof Error ? err.message : String(err);
}

const ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `text` as one line: CR, LF and every other control character (C0, DEL, C1, and the Unicode line and
 * paragraph separators, which some terminals and log viewers also break on) written as an escape
 * (`\n`, `\r`, `\x1b`, `\u2028`); a trailing line break is dropped.
 */
export function oneLine(text: string): string {
  return text
    .replace(/[\r\n]+$/, '')
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => ESCAPES[c] ?? (c.charCodeAt(0) <= 0xff ? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}` : `\\u${c.charCodeAt(0).toString(16)}`));
}
