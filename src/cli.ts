import yargs from 'yargs';
import { Parser } from 'yargs/helpers';
import { describeFailure } from './cli-failure.js';
import { describeFsError } from './config/configured-files.js';
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
  const commands = [runCommand(), validateCommand(io, setExit), schemaCommand(io, setExit), ...extraCommands.map((make) => make(io, setExit))];
  const cli = yargs(argv)
    // No `--config.x y` objects: every option is a string, a number or a flag (an object reached the handlers as a
    // path list and failed as "(flags ?? []).filter is not a function"). With it off, strict() names the flag.
    .parserConfiguration({ 'dot-notation': false })
    .scriptName('oidc-sidecar')
    .usage('$0 <command> [options]\n\nA sidecar proxy that gives every service-to-service hop a short-lived OIDC identity.');
  for (const command of commands) cli.command(command);
  cli
    // getOptions() is yargs' (the check() it documents reads it) but missing from its type definitions.
    .middleware((args) => refuseRepeatedOptions(args, (cli as unknown as { getOptions(): ParserOptions }).getOptions()), true)
    .demandCommand(1)
    .strict()
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
      if (err && err.name !== 'YError') throw err;
      const names = commands.map((c) => String(c.command).split(' ')[0]!);
      throw commandMissing(argv, names) ?? new UsageError(msg ?? err?.message ?? 'invalid command line', true, commandNamed(argv, names));
    });
  dropOutputToClosedPipe(io.stdout, io.stderr);
  try {
    await cli.parseAsync();
  } catch (err) {
    io.stderr.write(`oidc-sidecar: ${describeFailure(err)}\n`);
    return 1;
  }
  return exitCode;
}

/** What refuseRepeatedOptions reads of yargs' parser options: the options declared, the list ones, and aliases. */
interface ParserOptions {
  key: Record<string, unknown>;
  array: string[];
  alias: Record<string, string[]>;
}

/** Why an option that takes one value cannot take several, where there is more to say than that it takes one. */
const ONE_VALUE_BECAUSE: Record<string, string> = {
  audience: 'a token is for one audience (run the command once per audience)',
};

/**
 * yargs gathers an option given twice into a list, which reached handlers that expect one string and failed as
 * "argv.path.startsWith is not a function" (or, for --audience, asked for a token for "payments,ledger"). Options
 * declared as lists (`--config`, `--scope`) are meant to be repeated; any other given twice is a usage error.
 */
function refuseRepeatedOptions(args: Record<string, unknown>, options: ParserOptions): void {
  const repeatable = new Set(options.array);
  // A short alias (-a) holds the same list as its option (--audience), which is the one named.
  const aliases = new Set(Object.values(options.alias).flat());
  for (const [key, value] of Object.entries(args)) {
    if (!Array.isArray(value) || key === '_' || aliases.has(key)) continue;
    // yargs also sets a camel-case copy of a dashed option (logLevel beside log-level); the option is the dashed one.
    const name = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    // One no command declares is strict()'s to name as unknown, given once or twice.
    if (!Object.hasOwn(options.key, name) || repeatable.has(key) || repeatable.has(name)) continue;
    const flag = name.length === 1 ? `-${name}` : `--${name}`;
    throw new UsageError(`${flag} is given more than once: ${ONE_VALUE_BECAUSE[name] ?? 'it takes one value'}`);
  }
}

const guardedOutputs = new WeakSet<NodeJS.WritableStream>();

/**
 * A reader that stops early (`oidc-sidecar demo | head -1`, `schema | head`) closes the pipe: the rest of the output
 * has nowhere to go, and the command still ends with its own exit code. Unhandled, the EPIPE was a stack trace and
 * exit 1. Any other failure (ENOSPC: the output redirected to a file on a full disk) leaves the output incomplete
 * where the reader expects it whole: one line on stderr and exit 1 (it was a stack trace with minified source).
 * Kept for the life of the stream: the error of a command's last write arrives after the command returned.
 */
function dropOutputToClosedPipe(stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream): void {
  if (guardedOutputs.has(stdout)) return;
  guardedOutputs.add(stdout);
  stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') return;
    stderr.write(`oidc-sidecar: cannot write the output: ${describeFsError(err)}\n`);
    // Not an exit code for main() to return: the failure can come after it returned, and later writes fail too.
    process.exit(1);
  });
}

/**
 * The failure when the command line names no command, or one that does not exist, with the list of commands: yargs
 * would say "Unknown argument: bogus", as if a command were a flag's value.
 */
function commandMissing(argv: string[], names: string[]): UsageError | undefined {
  const first = firstWord(argv);
  const list = `commands: ${names.join(', ')}; see --help`;
  if (first === undefined) return new UsageError(`name a command (${list})`);
  if (!names.includes(String(first))) return new UsageError(`unknown command "${String(first)}" (${list})`);
  return undefined;
}

/** The command the command line names, if it names one of `names`. */
function commandNamed(argv: string[], names: string[]): string | undefined {
  const first = firstWord(argv);
  return first !== undefined && names.includes(String(first)) ? String(first) : undefined;
}

/** The first word that is not an option. Parsed as yargs parses the top level (only --help and --version are known there), so `--config x bogus` names bogus. */
function firstWord(argv: string[]): string | number | undefined {
  return Parser(argv, { boolean: ['help', 'version'], alias: { help: ['h'] } })._[0];
}
