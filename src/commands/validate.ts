import { stringify } from 'yaml';
import type { CommandModule } from 'yargs';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import { redactConfig } from '../config/redact.js';
import { withConfigOption, type Io } from './shared.js';

interface ValidateArgs {
  config?: string[];
  json?: boolean;
  'skip-file-checks'?: boolean;
}

/**
 * `validate`: the config as `run` would load it, CA bundles read and checked,
 * printed merged and redacted. `--skip-file-checks` checks the shape alone,
 * for CI, where the files a pod mounts do not exist.
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
    handler: (argv) => {
      const opts = argv['skip-file-checks'] ? { readCaFilesFor: [] } : {};
      const config = redactConfig(loadConfig(resolveConfigPaths(argv.config), process.env, opts));
      io.stdout.write(argv.json ? `${JSON.stringify(config, null, 2)}\n` : stringify(config));
      setExit(0);
    },
  };
}
