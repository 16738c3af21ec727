import yargs from 'yargs';
import { describeFailure } from './cli-failure.js';
import { UsageError } from './errors.js';
import { runCommand } from './commands/run.js';
import { validateCommand } from './commands/validate.js';
import { schemaCommand } from './commands/schema.js';
import { extraCommands } from './commands/index.js';
import type { Io } from './commands/shared.js';
import { packageVersion } from './version.js';

/**
 * The `oidc-sidecar` command line: parses flags and hands over to one command
 * module. Returns the exit code. Every expected failure (bad flag, missing file,
 * invalid config) is one clear line on stderr, never a stack trace.
 */
export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin }): Promise<number> {
  let exitCode = 0;
  const setExit = (code: number) => {
    exitCode = code;
  };
  const cli = yargs(argv)
    .scriptName('oidc-sidecar')
    .usage('$0 <command> [options]\n\nA sidecar proxy that gives every service-to-service hop a short-lived OIDC identity.')
    .command(runCommand())
    .command(validateCommand(io, setExit))
    .command(schemaCommand(io, setExit));
  for (const make of extraCommands) cli.command(make(io, setExit));
  cli
    .demandCommand(1, 'name a command (see --help)')
    .strict()
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(packageVersion())
    // yargs translates its own words ("Options", "Show help") from files beside its sources, which the bundle does
    // not carry; the rest of the help is English, so all of it is.
    .locale('en')
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .exitProcess(false)
    .fail((msg, err) => {
      // Throwing stops yargs before the command's handler runs (a missing required option must not run it).
      throw err && err.name !== 'YError' ? err : new UsageError(msg ?? err?.message ?? 'invalid command line', true);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    io.stderr.write(`oidc-sidecar: ${describeFailure(err)}\n`);
    return 1;
  }
  return exitCode;
}
