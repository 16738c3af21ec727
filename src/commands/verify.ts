import { METHODS } from 'node:http';
import type { CommandModule } from 'yargs';
import { createMetrics } from '../admin/metrics.js';
import { oneLine } from '../cli-failure.js';
import { systemClock } from '../clock.js';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import { MAX_TIMER_SECONDS } from '../config/schema.js';
import { KeysUnavailableError, UsageError } from '../errors.js';
import { createInboundParts } from '../inbound/handler.js';
import { jwtClaims } from '../outbound/sources/token-format.js';
import { createLogger, unverifiedClaims } from '../log.js';
import type { InboundConfig } from '../config/schema.js';
import { withConfigOption, type Io } from './shared.js';

interface VerifyArgs {
  config?: string[];
  token?: string;
  method?: string;
  path?: string;
  json?: boolean;
  timeout?: number;
}

/** Longest token read from stdin; the configured maxTokenBytes still applies after it. */
const MAX_STDIN_BYTES = 1024 * 1024;

/**
 * `verify`: the inbound pipeline on one token, for operators and CI. Without
 * `--path` only the token is judged; with it the rules are applied as for a
 * request with that method and path. Only the keys of the token's issuer are
 * fetched, and only when its claims pass. Exit 0 allow, 1
 * reject/deny/keys_unavailable.
 */
export function verifyCommand(io: Io, setExit: (code: number) => void): CommandModule<object, VerifyArgs> {
  return {
    command: 'verify',
    describe: 'Verify a token (from --token or stdin) against the inbound config and rules',
    builder: (y) =>
      withConfigOption(y)
        .option('token', { type: 'string', requiresArg: true, describe: 'The JWT; read from stdin when omitted' })
        .option('method', { type: 'string', requiresArg: true, describe: 'Request method the rules are evaluated for, with --path (default GET)' })
        .option('path', { type: 'string', requiresArg: true, describe: 'Request path the rules are evaluated for; omit to check only the token' })
        .option('json', { type: 'boolean', default: false, describe: 'Print the result as JSON' })
        .option('timeout', { type: 'number', requiresArg: true, default: 10, describe: 'Seconds to wait for the keys of the token\'s issuer' }) as never,
    handler: async (argv) => {
      // Only the issuers' CA bundles: the outbound side's may exist only in the pod.
      const noInbound = 'the config has no inbound section to verify against';
      const config = loadConfig(resolveConfigPaths(argv.config), process.env, { readCaFilesFor: ['issuers'], only: { side: 'inbound', missing: noInbound } });
      if (!config.inbound) throw new UsageError(noInbound);
      if (argv.path !== undefined && !argv.path.startsWith('/')) throw new UsageError('--path must start with "/"');
      // Without --path the rules are not evaluated, so a method alone would be ignored while the answer looked like one for it.
      if (argv.method !== undefined && argv.path === undefined) throw new UsageError('--method applies to the rules, which are evaluated only with --path; add --path');
      const method = (argv.method ?? 'GET').toUpperCase();
      // A decision for a request that cannot reach the rules: Node's HTTP parser answers any other method 400 itself,
      // and the inbound listener answers CONNECT 405 before any token check.
      if (!METHODS.includes(method)) throw new UsageError(`--method ${argv.method}: no request arrives with this method (Node's HTTP parser refuses it); use one such as GET, POST, PUT, PATCH or DELETE`);
      if (method === 'CONNECT') throw new UsageError('--method CONNECT: the inbound listener answers every CONNECT 405 connect_not_supported before the rules');
      // NaN or a negative number gave up at once, and one past what a Node timer holds printed a TimeoutOverflowWarning and waited 1 ms.
      const timeout = argv.timeout ?? 10;
      if (!(timeout > 0 && timeout <= MAX_TIMER_SECONDS)) throw new UsageError(`--timeout must be a number of seconds above 0 and at most ${MAX_TIMER_SECONDS}, got ${Number.isNaN(timeout) ? 'something that is not a number' : timeout}`);
      const token = (argv.token ?? (await readStdin(io.stdin))).trim();
      const inbound = argv.path === undefined ? { ...config.inbound, rules: undefined } : config.inbound;
      const { keyStore, authorizer } = createInboundParts(inbound, {
        // Audit lines would only repeat the result on stdout; errors still reach stderr.
        logger: createLogger({ level: 'silent' }),
        metrics: createMetrics({ processMetrics: false }),
        clock: systemClock,
        service: config.service,
      });
      const path = argv.path ?? '/';
      const { tokenHeader } = config.inbound;
      const authorize = () =>
        authorizer.authorize({
          method,
          url: path,
          // The header the inbound listener reads the token from (`inbound.tokenHeader`), as a caller would send it.
          // A value copied from a request (`Bearer eyJ…`, any case) is taken as the header value it already is.
          rawHeaders: token ? [tokenHeader, /^bearer[ \t]/i.test(token) ? token : `Bearer ${token}`] : [],
        });
      try {
        // Decide as a running sidecar would, loading only the keys the token needs: first with none loaded, so a token
        // refused on its claims, from an unknown issuer or on a public route is decided without a network call, and a
        // down issuer the token does not name cannot turn its answer into keys_unavailable.
        let decision = await authorize();
        const needs = !decision.allowed && decision.error instanceof KeysUnavailableError ? keyStore.get(decision.error.issuer) : undefined;
        if (needs && !needs.isUsable()) {
          await keyStore.start([needs.issuer]);
          // The first fetch failed, and the key store now retries with its backoff: say so at once, rather than sit
          // silent for the whole --timeout in front of an IdP that refuses connections.
          if (!needs.isUsable()) {
            const why = needs.lastError ? ` (${needs.lastError})` : '';
            io.stderr.write(`oidc-sidecar: ${oneLine(`cannot load keys for ${needs.issuer} yet${why}; retrying for up to ${timeout} s (--timeout)`)}\n`);
          }
          if (!(await keyStore.waitUntilReady(timeout * 1000, [needs.issuer]))) {
            const detail = `${needs.issuer}${needs.lastError ? ` (${needs.lastError})` : ''}`;
            // On stdout as every other result is (a script reads `decision:` there), and as the error line on stderr
            // (after the retry notice above).
            const result = { decision: 'error', reason: 'keys_unavailable', detail, ...(argv.path !== undefined ? { method, path: decision.target ?? path } : {}) };
            io.stdout.write(argv.json ? `${JSON.stringify(result, null, 2)}\n` : humanReadable(result));
            io.stderr.write(`oidc-sidecar: ${oneLine(`keys_unavailable: cannot load keys for ${detail}`)}\n`);
            setExit(1);
            return;
          }
          decision = await authorize();
        }
        const rule = decision.rule ? `#${decision.rule.index} ${decision.rule.methods ? [...decision.rule.methods].join(',') : '*'} ${decision.rule.pattern}` : undefined;
        // A refused token's own claims, as sent (never verified), and what the config expected where that is the
        // question: `token issuer is not trusted` alone leaves the operator to decode the token by hand.
        const payload = decision.allowed || decision.identity ? undefined : jwtClaims(token.replace(/^bearer[ \t]+/i, ''));
        const asSent = unverifiedClaims(payload);
        const expected = decision.allowed ? undefined : expectedFor(decision.error.code, config.inbound, payload);
        const result = {
          decision: decision.allowed ? 'allow' : decision.error.status === 403 ? 'deny' : decision.error.status >= 500 ? 'error' : 'reject',
          reason: decision.allowed ? decision.reason : decision.error.code,
          ...(decision.allowed ? {} : { detail: !token && decision.error.code === 'missing_token' ? noTokenDetail(argv.token) : decision.error.message }),
          ...(argv.path !== undefined ? { method, path: decision.target ?? path } : {}),
          ...(rule ? { rule } : {}),
          ...(decision.identity ? { issuer: decision.identity.issuer, claims: decision.identity.claims } : {}),
          ...(asSent ? { unverifiedClaims: asSent } : {}),
          ...(expected ? { expected } : {}),
        };
        io.stdout.write(argv.json ? `${JSON.stringify(result, null, 2)}\n` : humanReadable(result));
        setExit(decision.allowed ? 0 : 1);
      } finally {
        await keyStore.close();
      }
    },
  };
}

/** Why there was no token, in the CLI's terms: the sidecar's own "no authorization header" would point at a header nobody sent. */
function noTokenDetail(flag: string | undefined): string {
  return flag === undefined ? 'no token given: stdin was empty (pipe a token in, or pass --token JWT)' : 'no token given: --token is empty';
}

/** What the config would have taken, for a refusal about the issuer or the audience (the issuer found by the whole `iss`). */
function expectedFor(code: string, inbound: InboundConfig, payload: Record<string, unknown> | undefined): Record<string, string[]> | undefined {
  if (code === 'unknown_issuer') return { issuers: inbound.issuers.map((i) => i.issuer) };
  if (code !== 'audience_mismatch') return undefined;
  const issuer = inbound.issuers.find((i) => i.issuer === payload?.iss);
  return { audience: ([] as string[]).concat(issuer?.audience ?? inbound.audience) };
}

function humanReadable(r: Record<string, unknown>): string {
  const lines = [`decision: ${r.decision}`, `reason:   ${r.reason}`];
  if (r.detail) lines.push(`detail:   ${r.detail}`);
  if (r.path) lines.push(`request:  ${r.method} ${r.path}`);
  if (r.rule) lines.push(`rule:     ${r.rule}`);
  if (r.issuer) lines.push(`issuer:   ${r.issuer}`);
  if (r.claims) lines.push('claims (verified):', ...JSON.stringify(r.claims, null, 2).split('\n').map((l) => `  ${l}`));
  if (r.expected) for (const [key, values] of Object.entries(r.expected as Record<string, string[]>)) lines.push(`expected: ${key} ${values.join(', ')}`);
  if (r.unverifiedClaims) lines.push('claims (as sent, NOT verified):', ...JSON.stringify(r.unverifiedClaims, null, 2).split('\n').map((l) => `  ${l}`));
  return `${lines.join('\n')}\n`;
}

async function readStdin(stdin: NodeJS.ReadableStream): Promise<string> {
  if ((stdin as { isTTY?: boolean }).isTTY) throw new UsageError('no token: pass --token JWT or pipe the token on stdin');
  let text = '';
  for await (const chunk of stdin) {
    text += chunk.toString();
    if (text.length > MAX_STDIN_BYTES) throw new UsageError(`token on stdin is larger than ${MAX_STDIN_BYTES} bytes`);
  }
  return text;
}
