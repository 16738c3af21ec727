import { ConfigError } from '../../src/errors.js';

/** Runs `fn`, which must throw a ConfigError, and returns its issues as `path: message` lines. */
export function issuesOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`);
    throw err;
  }
  throw new Error('expected a ConfigError');
}
