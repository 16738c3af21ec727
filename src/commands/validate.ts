import { stringify } from 'yaml';
import type { CommandModule } from 'yargs';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import { redactConfig } from '../config/redact.js';
import { describeUnreachable, unreachableRules } from '../inbound/unreachable-rules.js';
import { withConfigOption, type Io } from './shared.js';

interface ValidateArgs {
  config?: string[];
  json?: boolean;
  'skip-file-checks'?: boolean;
}

/**
 * `validate`: the config loaded as `run` loads it (loadConfig with
 * `checkStartupFiles`), printed merged and redacted. The files `run` reads at
 * startup are read and checked too: the CA bundles, the token sources' client
 * secrets and private keys (nothing is sent to an IdP), and the inbound TLS
 * certificate and key; every problem is reported at once.
 * `--skip-file-checks` checks the shape alone, for CI, where the files a pod
 * mounts do not exist. A rule that can never be used is a warning on stderr,
 * not an error: the config is valid, and `run` logs the same.
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
      const config = loadConfig(resolveConfigPaths(argv.config), process.env, skipFiles ? { readCaFilesFor: [] } : { checkStartupFiles: true });
      const redacted = escapePlaceholders(redactConfig(config));
      io.stdout.write(argv.json ? `${JSON.stringify(redacted, null, 2)}\n` : stringify(redacted));
      // Valid, and loaded as is by `run`, which logs the same lines (rule_unreachable): on stderr, so stdout stays the config.
      const rules = config.inbound?.rules ?? [];
      for (const u of unreachableRules(rules)) io.stderr.write(`oidc-sidecar: warning: ${describeUnreachable(u, rules)}\n`);
      setExit(0);
    },
  };
}

/**
 * The printed config with every literal `${` written `$${`, as a config file writes it: the values are printed after
 * their placeholders were filled in, so a value that is a literal `${HOME}` (written `$${HOME}`) would otherwise be
 * filled in from the environment when the output is loaded as a config.
 */
function escapePlaceholders(value: unknown): unknown {
  // A function, not '$${': in a replacement string $$ stands for one $.
  if (typeof value === 'string') return value.replaceAll('${', () => '$${');
  if (Array.isArray(value)) return value.map(escapePlaceholders);
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, escapePlaceholders(v)]));
  return value;
}
