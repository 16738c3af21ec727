import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';

/** Removes the trailing newline editors and `kubectl create secret --from-file` leave behind. */
export function trimTrailingNewline(s: string): string {
  return s.replace(/\r?\n+$/, '');
}

/**
 * Reads a file named in the config (secrets, keys, CA bundles) while the config
 * or a component is built. A problem is a ConfigError on the exact key path, so
 * `run` refuses to start and a reload keeps the old config. The content is
 * never part of the message.
 */
export function readConfiguredFile(path: string, keyPath: string): string {
  try {
    return trimTrailingNewline(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError([{ path: keyPath, message: `cannot read ${path}: ${describeFsError(err)}` }]);
  }
}

/** A short, path-free reason for a failed file operation (`no such file`, `permission denied`, ...). */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  return code ?? (err instanceof Error ? err.message : String(err));
}
