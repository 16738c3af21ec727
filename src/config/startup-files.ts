import { systemClock } from '../clock.js';
import { issuesOf, type ConfigIssue } from '../errors.js';
import { createClientAuth } from '../outbound/sources/client-auth.js';
import { loadTlsMaterial } from '../proxy/tls.js';
import type { Config, TokenSourceConfig } from './schema.js';

/**
 * Reads and checks the files `run` reads as it starts, besides the CA bundles
 * (ca-bundle.ts): each token source's `clientSecretFile` or `privateKeyFile`
 * (read and parsed by the code that builds the source; nothing is sent to an
 * IdP) and the inbound TLS certificate and key (read and paired as the
 * listener does). Returns every problem, each on its key path, so one error
 * lists them all. Files re-read at every use (`clientAssertionFile`,
 * `subjectTokenFile`, a `file` source's `path`) are read when a token is
 * fetched, not here.
 */
export function startupFileIssues(config: Config): ConfigIssue[] {
  const tls = config.inbound?.tls;
  return [...(tls ? issuesOf(() => loadTlsMaterial(tls)) : []), ...tokenSourceFileIssues(config)];
}

/** The problems with the files every token source of the config reads as it is built (see sourceFileIssues). */
export function tokenSourceFileIssues(config: Config): ConfigIssue[] {
  return tokenSources(config).flatMap(({ source, configPath }) => sourceFileIssues(source, configPath));
}

/**
 * The problems with the files one token source reads as it is built (its client secret or private key), each on its
 * key path under `configPath`: for `run`, through startupFileIssues, and for `token`, which builds one source only.
 */
export function sourceFileIssues(source: TokenSourceConfig, configPath: string): readonly ConfigIssue[] {
  if (source.type !== 'client_credentials' && source.type !== 'token_exchange') return [];
  return issuesOf(() => createClientAuth(source, { clock: systemClock, configPath }));
}

function tokenSources(config: Config): { source: TokenSourceConfig; configPath: string }[] {
  const out: { source: TokenSourceConfig; configPath: string }[] = [];
  if (config.outbound?.tokenSource) out.push({ source: config.outbound.tokenSource, configPath: 'outbound.tokenSource' });
  config.outbound?.routes.forEach((route, i) => {
    if (route.tokenSource) out.push({ source: route.tokenSource, configPath: `outbound.routes.${i}.tokenSource` });
  });
  return out;
}
