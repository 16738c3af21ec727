import type { CommandModule } from 'yargs';
import { UsageError } from '../errors.js';
import type { DevClient } from '../dev/provider.js';
import { createLogger } from '../log.js';
import { importHoldingWarnings, type Io } from './shared.js';

interface DevIssuerArgs {
  port: string;
  host: string;
  clients?: string;
  'key-file'?: string;
  issuer?: string;
  alg?: string;
  ttl?: number;
  'log-level': string;
}

/** The warning every start of the dev issuer prints, so nobody mistakes it for a real IdP. */
export const DEV_ISSUER_WARNING = [
  '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!',
  '!!  oidc-sidecar dev-issuer: DEVELOPMENT ONLY - never use in production !!',
  '!!  Clients and secrets are for local testing, keys live in memory or   !!',
  '!!  in a plain file, and anyone who can reach it can mint identities.   !!',
  '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!',
].join('\n');

/**
 * `dev-issuer`: a local OpenID provider (oidc-provider) issuing client
 * credentials JWTs, for laptops and docker-compose. Runs until SIGTERM/SIGINT.
 */
/** Flags whose empty value is refused, with what to do instead. */
const EMPTY_REFUSED = [
  ['host', 'give an address to listen on (127.0.0.1, or 0.0.0.0 in a container)'],
  ['clients', 'give a clients file, or leave the flag out for the built-in clients'],
  ['key-file', 'give a path, or leave the flag out to keep the keys in memory'],
] as const;

export function devIssuerCommand(io: Io, setExit: (code: number) => void): CommandModule<object, DevIssuerArgs> {
  return {
    command: 'dev-issuer',
    describe: 'Run a local OIDC issuer for development (built on oidc-provider; never for production)',
    // Async so the help can name the built-in clients from their table (loaded only when this command is used).
    builder: async (y) => {
      const { DEFAULT_DEV_CLIENTS } = await import('../dev/clients-file.js');
      return y
        // A string, read below: yargs turns an empty value of a number option into 0, which would pick a random port.
        .option('port', { alias: 'p', requiresArg: true, type: 'string', default: '9000', describe: 'Port to listen on (0 picks a free one)' })
        .option('host', { requiresArg: true, type: 'string', default: '127.0.0.1', describe: 'Address to listen on (0.0.0.0 in a container)' })
        .option('clients', { requiresArg: true, type: 'string', describe: `Clients file (YAML/JSON); default: built-in demo clients ${DEFAULT_DEV_CLIENTS.map((c) => c.clientId).join(', ')}` })
        .option('key-file', { requiresArg: true, type: 'string', describe: 'JWKS file of private signing keys; created with a new key if missing, so tokens survive restarts' })
        .option('issuer', { requiresArg: true, type: 'string', describe: 'Issuer URL in tokens and discovery (default http://HOST:PORT); set it when clients use another name, e.g. http://dev-issuer:9000' })
        .option('alg', { requiresArg: true, type: 'string', choices: ['RS256', 'PS256', 'ES256', 'EdDSA'], describe: 'Algorithm of generated keys (default RS256, or the clients file `alg`)' })
        .option('ttl', { requiresArg: true, type: 'number', describe: 'Access token lifetime in seconds (default 300, or the clients file `accessTokenTtlSeconds`)' })
        .option('log-level', { type: 'string', default: 'info', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], describe: 'Level of its JSON log lines on stdout (start, tokens issued and refused, errors)' });
    },
    handler: async (argv) => {
      // An empty value is a variable left unset (`--host=${HOST}`), never a choice: it would fall back to what leaving
      // the flag out gives, every interface for --host, the public built-in clients for --clients.
      for (const [flag, leftOut] of EMPTY_REFUSED) {
        if (argv[flag] === '') throw new UsageError(`--${flag} is empty (a variable left unset?): ${leftOut}`);
      }
      const port = /^\d{1,5}$/.test(argv.port) ? Number(argv.port) : Number.NaN;
      if (!(port <= 65535)) throw new UsageError(`--port must be 0-65535, got ${argv.port === '' ? 'an empty value' : argv.port}`);
      if (argv.issuer !== undefined && !/^https?:\/\/[^/]+/.test(argv.issuer)) throw new UsageError(`--issuer must be an http(s) URL, got ${argv.issuer}`);
      // Tokens and discovery would carry it without the slash, and an inbound config that names the issuer as given
      // (\`iss\` is compared exactly) would refuse every token as unknown_issuer.
      if (argv.issuer?.endsWith('/')) throw new UsageError(`--issuer must not end with "/": tokens carry the issuer exactly as given, and the endpoints are under it (got ${argv.issuer})`);
      const { DEFAULT_DEV_CLIENTS, loadDevClientsFile, MAX_DEV_TOKEN_TTL_SECONDS } = await import('../dev/clients-file.js');
      if (argv.ttl !== undefined && (!Number.isInteger(argv.ttl) || argv.ttl <= 0 || argv.ttl > MAX_DEV_TOKEN_TTL_SECONDS)) {
        throw new UsageError(`--ttl must be a whole number of seconds from 1 to ${MAX_DEV_TOKEN_TTL_SECONDS} (a year), got ${given(argv.ttl)}`);
      }
      const { loadOrCreateKeyFile } = await import('../dev/keys.js');
      const file = argv.clients ? loadDevClientsFile(argv.clients, process.env) : undefined;
      const chosenAlg = argv.alg ?? file?.alg;
      const alg = (chosenAlg ?? 'RS256') as 'RS256';
      const signingKeys = argv['key-file'] ? await loadOrCreateKeyFile(argv['key-file'], alg) : undefined;
      // A key file that already holds a key signs with it: an algorithm asked for in vain would show up only as
      // unsupported_alg at a sidecar that allows that algorithm alone.
      const held = signingKeys?.[0]?.alg;
      if (chosenAlg !== undefined && held !== undefined && held !== chosenAlg) {
        const from = argv.alg !== undefined ? `--alg ${chosenAlg}` : `the clients file's alg ${chosenAlg}`;
        throw new UsageError(`${from}: key file ${argv['key-file']} already holds an ${held} key, which signs the tokens; remove the file for a new ${chosenAlg} key, or ask for ${held}`);
      }
      // Loaded lazily and only after the inputs are valid: oidc-provider is needed by the dev commands alone.
      const { module: { startDevIssuer }, warnings } = await importHoldingWarnings(() => import('../dev/issuer.js'));
      const ttl = argv.ttl ?? file?.accessTokenTtlSeconds;
      const clients = file?.clients ?? DEFAULT_DEV_CLIENTS;
      const logger = createLogger({ level: argv['log-level'], service: 'dev-issuer' });

      let running;
      try {
        running = await startDevIssuer({
          host: argv.host,
          port,
          clients,
          alg,
          logger,
          ...(argv.issuer ? { issuer: argv.issuer } : {}),
          ...(signingKeys ? { signingKeys } : {}),
          ...(ttl !== undefined ? { accessTokenTtlSeconds: ttl } : {}),
        });
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') throw new UsageError(`cannot listen on ${argv.host}:${argv.port}: no such host name here (check --host)`);
        if (e.code === 'EADDRINUSE') throw new UsageError(`cannot listen on ${argv.host}:${argv.port}: address already in use (try --port 0)`);
        if (e.code === 'EADDRNOTAVAIL') throw new UsageError(`cannot listen on ${argv.host}:${argv.port}: address not available on this host (check --host)`);
        if (e.code === 'EACCES') throw new UsageError(`cannot listen on ${argv.host}:${argv.port}: permission denied (try a port above 1023)`);
        throw err;
      }
      // Printed once it listens, so a start that fails says so in one line (like every other command's failure).
      io.stderr.write(`${DEV_ISSUER_WARNING}\n`);
      for (const w of warnings) io.stderr.write(`${w}\n`);
      io.stderr.write(
        [
          `dev issuer ready`,
          `  issuer:         ${running.issuer}`,
          `  discovery:      ${running.issuer}/.well-known/openid-configuration`,
          `  token endpoint: ${running.tokenEndpoint}`,
          `  jwks:           ${running.jwksUri}`,
          `  clients:        ${clients.map((c) => c.clientId).join(', ')}`,
          ...tryLine(clients, !file, running.tokenEndpoint),
          '',
        ].join('\n'),
      );
      logger.info(
        { event: 'started', issuer: running.issuer, tokenEndpoint: running.tokenEndpoint, jwksUri: running.jwksUri, port: running.port, clients: clients.map((c) => c.clientId), kid: running.signingKeys[0]!.kid },
        `dev issuer listening: ${running.issuer}`,
      );

      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          logger.info({ event: 'signal', signal }, `received ${signal}`);
          void running.close().then(resolve);
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      logger.info({ event: 'stopped' }, 'dev issuer stopped');
      logger.flush();
      setExit(0);
    },
  };
}

/** yargs turns a non-numeric value of a number option into NaN; say so in words. */
function given(value: number): string {
  return Number.isNaN(value) ? 'something that is not a number' : String(value);
}

/**
 * A curl line that gets a token, ready to paste: the built-in clients' secrets are public (`<client>-secret`), so
 * theirs is written out; a clients file's secret stays a quoted placeholder (quoted, so a paste is no shell
 * redirect). None when no client takes client_secret_basic.
 */
function tryLine(clients: readonly DevClient[], builtIn: boolean, tokenEndpoint: string): string[] {
  const client = clients.find((c) => c.clientSecret !== undefined && (c.authMethod ?? 'client_secret_basic') === 'client_secret_basic');
  if (!client) return [];
  const user = builtIn ? `${client.clientId}:${client.clientSecret}` : `'${client.clientId}:<secret>'`;
  return [`  try: curl -s -u ${user} -d grant_type=client_credentials -d audience=payments ${tokenEndpoint}`];
}
