import { format } from 'node:util';
import type { Argv } from 'yargs';

/** The `--config` option every config-reading command takes. */
export function withConfigOption<T>(y: Argv<T>) {
  return y.option('config', {
    alias: 'c',
    type: 'string',
    array: true,
    requiresArg: true,
    describe: 'Config file (YAML or JSON); repeat to deep-merge overlays in order. Fallback: OIDC_SIDECAR_CONFIG (comma-separated)',
  });
}

/** Where a command writes; injected so tests and embedders can capture output. */
export interface Io {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
}

/**
 * Runs `load` (the dynamic import of a module that loads oidc-provider) with console.warn held back, and returns
 * what was held. oidc-provider warns on stderr as it loads on a Node.js release it does not support (before 22);
 * the dev commands show that once they are running, so a start that fails is still one line.
 */
export async function importHoldingWarnings<T>(load: () => Promise<T>): Promise<{ module: T; warnings: string[] }> {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (...args: unknown[]) => void warnings.push(format(...args));
  try {
    return { module: await load(), warnings };
  } finally {
    console.warn = warn;
  }
}
