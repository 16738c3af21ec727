import { stringify } from 'yaml';
import type { CommandModule } from 'yargs';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import { redactConfig } from '../config/redact.js';
import { withConfigOption, type Io } from './shared.js';

export function validateCommand(io: Io, setExit: (code: number) => void): CommandModule<object, { config?: string[]; json?: boolean }> {
  return {
    command: 'validate',
    describe: 'Validate config files and print the effective merged config (secrets redacted)',
    builder: (y) => withConfigOption(y).option('json', { type: 'boolean', default: false, describe: 'Print JSON instead of YAML' }),
    handler: (argv) => {
      const config = redactConfig(loadConfig(resolveConfigPaths(argv.config)));
      io.stdout.write(argv.json ? `${JSON.stringify(config, null, 2)}\n` : stringify(config));
      setExit(0);
    },
  };
}
