import { describeFailure } from './cli-failure.js';
import { runCommand } from './commands/run.js';
import type { Io } from './commands/shared.js';

/**
 * What the launcher (bin/oidc-sidecar.js) runs. `run` with nothing but
 * config files, the command line every sidecar starts with, goes straight to
 * the run command; every other command line goes to the full CLI (src/cli.ts),
 * whose parser (yargs) is loaded only then. A running sidecar so never holds
 * the CLI framework: about 2 MiB less resident (docs/performance.md, "The
 * bundle"). Both paths run the same handler and report failures the same way.
 */
export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin }): Promise<number> {
  const configs = plainRunConfigs(argv);
  if (configs === undefined) return (await import('./cli.js')).main(argv, io);
  try {
    await runCommand().handler({ ...(configs.length > 0 ? { config: configs } : {}), _: ['run'], $0: 'oidc-sidecar' });
    return 0;
  } catch (err) {
    io.stderr.write(`oidc-sidecar: ${describeFailure(err)}\n`);
    return 1;
  }
}

/**
 * The config files of `run` followed only by `--config FILE`, `--config=FILE`
 * or `-c FILE` (any number, none at all too); undefined for any other command
 * line, which the full CLI parses, help and errors included. Deliberately
 * narrower than the CLI: an empty value, one that starts with `-`, or with a
 * quote (yargs strips the quotes around `--config="FILE"`), or anything else
 * sends the whole line to yargs.
 */
export function plainRunConfigs(argv: readonly string[]): string[] | undefined {
  if (argv[0] !== 'run') return undefined;
  const configs: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = arg.startsWith('--config=') ? arg.slice('--config='.length) : arg === '--config' || arg === '-c' ? argv[++i] : undefined;
    if (!value || /^[-"']/.test(value)) return undefined;
    configs.push(value);
  }
  return configs;
}
