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
