import type { CommandModule } from 'yargs';
import { systemClock } from '../clock.js';
import { withCaBundle } from '../config/ca-bundle.js';
import { loadConfig, locateConfigError, resolveConfigPaths } from '../config/load.js';
import type { TokenSourceConfig } from '../config/schema.js';
import { sourceFileIssues } from '../config/startup-files.js';
import { ConfigError, issuesOf, UsageError } from '../errors.js';
import { createTokenSource } from '../outbound/sources/index.js';
import { sourceForAudience } from '../outbound/token-broker.js';
import { withConfigOption, type Io } from './shared.js';

interface TokenArgs {
  config?: string[];
  audience: string;
  scope?: string[];
}

/**
 * `token --config FILE --audience AUD [--scope S ...]`: one token from the
 * source that serves that audience (the first route with it, else
 * `outbound.tokenSource`), printed alone on stdout for `$(...)` in CI jobs.
 * Only that source is built, so only its files (CA bundle, client secret,
 * private key) are read: another route's may exist only where `run` runs.
 * No cache, no prefetch of other routes; errors are one line on stderr, exit 1.
 */
export function tokenCommand(io: Io, setExit: (code: number) => void): CommandModule<object, TokenArgs> {
  return {
    command: 'token',
    describe: 'Fetch a token from the configured source and print it (for CI jobs and debugging)',
    builder: (y) =>
      withConfigOption(y)
        .option('audience', { alias: 'a', type: 'string', demandOption: true, requiresArg: true, describe: 'Audience of the service the token is for' })
        .option('scope', { type: 'string', array: true, requiresArg: true, describe: "Scopes to request (repeatable); default: the route's scopes" }) as never,
    handler: async (argv) => {
      // `--audience ""` passes yargs' check; an empty audience is never what the user meant.
      if (!argv.audience) throw new UsageError('--audience is required: the audience of the service the token is for');
      // As a route's `scopes` (the schema refuses ""): an empty one went out as `scope=` or a list with a blank entry.
      if (argv.scope?.some((s) => s.trim() === '')) throw new UsageError('--scope needs a scope name; an empty one is not a scope (RFC 6749 §3.3)');
      // The config's shape only: the one source used reads its own files below.
      const paths = resolveConfigPaths(argv.config);
      const noOutbound = 'the config has no outbound section, so it names no token source';
      const config = loadConfig(paths, process.env, { readCaFilesFor: [], only: { side: 'outbound', missing: noOutbound } });
      if (!config.outbound) throw new UsageError(noOutbound);
      const chosen = sourceForAudience(config.outbound, argv.audience, argv.scope);
      const source = createTokenSource(checkedSource(chosen.source, chosen.configPath, paths), {
        clock: systemClock,
        env: process.env,
        timeoutMs: config.outbound.tokenRequestTimeoutSeconds * 1000,
        configPath: chosen.configPath,
      });
      try {
        const issued = await source.fetch({ audience: argv.audience, scopes: chosen.scopes });
        io.stdout.write(`${issued.token}\n`);
        setExit(0);
      } finally {
        await source.close();
      }
    },
  };
}

/**
 * The source with its CA bundle read, once all its files are checked: a missing CA file and a missing secret are
 * reported together, as `run` reports them, not one per attempt.
 */
function checkedSource(source: TokenSourceConfig, configPath: string, paths: readonly string[]): TokenSourceConfig {
  let withCa = source;
  const issues = [...issuesOf(() => (withCa = withCaBundle(source, configPath))), ...sourceFileIssues(source, configPath)];
  if (issues.length > 0) throw locateConfigError(paths, new ConfigError(issues));
  return withCa;
}
