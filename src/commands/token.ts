import type { CommandModule } from 'yargs';
import { systemClock } from '../clock.js';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import { UsageError } from '../errors.js';
import { createTokenBroker } from '../outbound/token-broker.js';
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
 * No cache, no prefetch of other routes; errors are one line on stderr, exit 1.
 */
export function tokenCommand(io: Io, setExit: (code: number) => void): CommandModule<object, TokenArgs> {
  return {
    command: 'token',
    describe: 'Fetch a token from the configured source and print it (for CI jobs and debugging)',
    builder: (y) =>
      withConfigOption(y)
        .option('audience', { alias: 'a', type: 'string', demandOption: true, requiresArg: true, describe: 'Audience of the service the token is for' })
        .option('scope', { type: 'string', array: true, describe: "Scopes to request (repeatable); default: the route's scopes" }) as never,
    handler: async (argv) => {
      // `--audience ""` passes yargs' check; an empty audience is never what the user meant.
      if (!argv.audience) throw new UsageError('--audience is required: the audience of the service the token is for');
      // Only the token sources' CA bundles: a route's target CA, or an issuer's, may exist only in the pod.
      const config = loadConfig(resolveConfigPaths(argv.config), process.env, { readCaFilesFor: ['token-sources'] });
      if (!config.outbound) throw new UsageError('the config has no outbound section, so it names no token source');
      const broker = createTokenBroker(config.outbound, { clock: systemClock, env: process.env });
      try {
        const binding = broker.forAudience(argv.audience, argv.scope);
        const issued = await binding.source.fetch({ audience: binding.audience, scopes: binding.scopes });
        io.stdout.write(`${issued.token}\n`);
        setExit(0);
      } finally {
        await broker.close();
      }
    },
  };
}
