import { stringify } from 'yaml';
import type { CommandModule } from 'yargs';
import { systemClock } from '../clock.js';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import { redactConfig } from '../config/redact.js';
import { createTokenBroker } from '../outbound/token-broker.js';
import { loadTlsMaterial } from '../proxy/tls.js';
import { withConfigOption, type Io } from './shared.js';

interface ValidateArgs {
  config?: string[];
  json?: boolean;
  'skip-file-checks'?: boolean;
}

/**
 * `validate`: the config as `run` would load it, printed merged and redacted.
 * The files `run` reads at startup are read and checked too: the CA bundles,
 * the token sources' client secrets and private keys (the same code that
 * builds the sources in `run`; nothing is sent to an IdP), and the inbound
 * TLS certificate and key.
 * `--skip-file-checks` checks the shape alone, for CI, where the files a pod
 * mounts do not exist.
 */
export function validateCommand(io: Io, setExit: (code: number) => void): CommandModule<object, ValidateArgs> {
  return {
    command: 'validate',
    describe: 'Validate config files and print the effective merged config (secrets redacted)',
    builder: (y) =>
      withConfigOption(y)
        .option('json', { type: 'boolean', default: false, describe: 'Print JSON instead of YAML' })
        .option('skip-file-checks', {
          type: 'boolean',
          default: false,
          describe: "Check the config's shape only, not the files it names (e.g. in CI, where the pod's mounted files do not exist)",
        }),
    handler: async (argv) => {
      const skipFiles = argv['skip-file-checks'] === true;
      const config = loadConfig(resolveConfigPaths(argv.config), process.env, skipFiles ? { readCaFilesFor: [] } : {});
      if (!skipFiles && config.outbound) await createTokenBroker(config.outbound, { clock: systemClock, env: process.env }).close();
      // The inbound certificate and key, read and paired as the listener does at start.
      if (!skipFiles && config.inbound?.tls) loadTlsMaterial(config.inbound.tls);
      const redacted = redactConfig(config);
      io.stdout.write(argv.json ? `${JSON.stringify(redacted, null, 2)}\n` : stringify(redacted));
      setExit(0);
    },
  };
}
