import type { CommandModule } from 'yargs';
import { importHoldingWarnings, type Io } from './shared.js';

interface DemoArgs {
  keep: boolean;
  json: boolean;
}

/**
 * `demo`: the dev issuer, three demo apps and their sidecars on loopback,
 * then a table of allowed and refused calls. Exit 0 only if every outcome
 * matched.
 */
export function demoCommand(io: Io, setExit: (code: number) => void): CommandModule<object, DemoArgs> {
  return {
    command: 'demo',
    describe: 'Run the whole thing on this machine (dev issuer, demo apps, sidecars) and show allowed and rejected calls',
    builder: (y) =>
      y
        .option('keep', { type: 'boolean', default: false, describe: 'Keep everything running and print curl commands (Ctrl-C stops)' })
        .option('json', { type: 'boolean', default: false, describe: 'Print the results as JSON' }),
    handler: async (argv) => {
      // Loaded lazily: oidc-provider is only ever needed by the dev commands.
      const { module: { runDemo }, warnings } = await importHoldingWarnings(() => import('../dev/demo.js'));
      const width = (io.stdout as NodeJS.WriteStream).columns;
      const code = await runDemo({ keep: argv.keep, json: argv.json, stdout: io.stdout, stderr: io.stderr, ...(width ? { width: Math.min(width, 160) } : {}) });
      // Held while loading (see importHoldingWarnings): a demo that could not start says so in one line.
      if (code === 0) for (const w of warnings) io.stderr.write(`${w}\n`);
      setExit(code);
    },
  };
}
