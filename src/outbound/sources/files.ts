import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { ConfigError, TokenUnavailableError } from '../../errors.js';

/** Removes the trailing newline editors and `kubectl create secret --from-file` leave behind. */
export function trimTrailingNewline(s: string): string {
  return s.replace(/\r?\n+$/, '');
}

/**
 * Reads a file named in the config while the source is built (secrets, keys).
 * A problem is a ConfigError on the exact key path, so `run` refuses to start
 * and a reload keeps the old config. The content is never part of the message.
 */
export function readConfiguredFile(path: string, keyPath: string): string {
  try {
    return trimTrailingNewline(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError([{ path: keyPath, message: `cannot read ${path}: ${describeFsError(err)}` }]);
  }
}

/** Reads a file that is re-read at every use (subject tokens, client assertions); failures are TokenUnavailableErrors. */
export async function readRuntimeFile(path: string, what: string): Promise<string> {
  let text: string;
  try {
    text = (await readFile(path, 'utf8')).trim();
  } catch (err) {
    throw new TokenUnavailableError(`cannot read ${what} ${path}: ${describeFsError(err)}`, undefined, { cause: err });
  }
  if (text.length === 0) throw new TokenUnavailableError(`${what} ${path} is empty`);
  return text;
}

/** A short, path-free reason for a failed file operation (`no such file`, `permission denied`, ...). */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  return code ?? (err instanceof Error ? err.message : String(err));
}
