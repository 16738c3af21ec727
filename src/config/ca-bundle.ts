import { X509Certificate } from 'node:crypto';
import { ConfigError, issuesOf, type ConfigIssue } from '../errors.js';
import { FILE_LIMITS, readConfiguredFile } from './configured-files.js';
import { signatureOf, type FileSignatures } from './poll-files.js';
import type { Config } from './schema.js';

/** A PEM CA bundle as read from a `caFile`: `file` names it (pool keys), `pem` (its certificate blocks only) is what a TLS client trusts. */
export interface CaBundle {
  readonly file: string;
  readonly pem: string;
  /** The file's stat signature taken just before it was read: what a watcher compares with, so a rotation during the read is seen. */
  readonly seen: string;
}

const BEGIN = '-----BEGIN CERTIFICATE-----';
const END = '-----END CERTIFICATE-----';
/** OpenSSL's certificate-with-trust-settings form: Node's TLS takes it and applies the settings, which may narrow trust. */
const BEGIN_TRUSTED = '-----BEGIN TRUSTED CERTIFICATE-----';

/**
 * The `CERTIFICATE` blocks of a PEM text, in order, found with indexOf so the
 * time is linear whatever the input (a lazy regex is quadratic on many BEGIN
 * lines without an END). `unterminated` is set when a BEGIN has no END after it.
 */
function certificateBlocks(text: string): { blocks: string[]; unterminated: boolean } {
  const blocks: string[] = [];
  for (let from = 0; ; ) {
    const begin = text.indexOf(BEGIN, from);
    if (begin < 0) return { blocks, unterminated: false };
    const end = text.indexOf(END, begin + BEGIN.length);
    // No END after this BEGIN means none after any later BEGIN either: stop here.
    if (end < 0) return { blocks, unterminated: true };
    from = end + END.length;
    blocks.push(text.slice(begin, from));
  }
}

/**
 * Reads a PEM CA bundle (a regular file of at most 1 MiB) and checks that it
 * holds at least one `-----BEGIN CERTIFICATE-----` block and that every such
 * block parses. Node's TLS takes an empty bundle without a word, and skips a
 * certificate that does not parse while trusting the rest, so the first sign
 * would otherwise be a failed handshake on some request. Only the certificate
 * blocks are kept (joined), so what is checked is exactly what TLS trusts:
 * anything else in the file, such as the private key of a combined cert+key
 * file, is left out. `TRUSTED CERTIFICATE` blocks (OpenSSL's form with trust
 * settings) are refused rather than dropped or passed on: dropped, trust the
 * user expects would quietly go missing; passed on, their trust settings would
 * decide what is trusted, unchecked. A problem is a ConfigError at `keyPath`.
 */
export function readCaBundle(file: string, keyPath: string): CaBundle {
  const seen = signatureOf(file);
  const text = readConfiguredFile(file, keyPath, FILE_LIMITS.caBundle);
  const invalid = (message: string) => new ConfigError([{ path: keyPath, message }]);
  if (text.trim().length === 0) throw invalid(`${file} is empty`);
  if (text.includes(BEGIN_TRUSTED)) {
    throw invalid(`${file} holds a TRUSTED CERTIFICATE block: use plain CERTIFICATE blocks (openssl x509 -in IN -out OUT converts one)`);
  }
  const { blocks, unterminated } = certificateBlocks(text);
  if (unterminated) throw invalid(`certificate ${blocks.length + 1} in ${file} has no END CERTIFICATE line`);
  if (blocks.length === 0) throw invalid(`no PEM certificate found in ${file}`);
  blocks.forEach((certificate, i) => {
    try {
      new X509Certificate(certificate);
    } catch {
      throw invalid(`certificate ${i + 1} of ${blocks.length} in ${file} is not a valid X.509 certificate`);
    }
  });
  return { file, pem: blocks.join('\n'), seen };
}

/** What a `caFile` secures: an issuer's JWKS and discovery, a token source's IdP, a route's https target. */
export type CaUse = 'issuers' | 'token-sources' | 'targets';

/** Every use: what `run` (and `validate`) read. */
export const ALL_CA_USES: readonly CaUse[] = ['issuers', 'token-sources', 'targets'];

interface CaHolder {
  holder: object | undefined;
  keyPath: string;
  use: CaUse;
}

function caHolders(config: Config): CaHolder[] {
  return [
    ...(config.inbound?.issuers ?? []).map((issuer, i): CaHolder => ({ holder: issuer, keyPath: `inbound.issuers.${i}`, use: 'issuers' })),
    { holder: config.outbound?.tokenSource, keyPath: 'outbound.tokenSource', use: 'token-sources' },
    ...(config.outbound?.routes ?? []).flatMap((route, i): CaHolder[] => [
      { holder: route, keyPath: `outbound.routes.${i}`, use: 'targets' },
      { holder: route.tokenSource, keyPath: `outbound.routes.${i}.tokenSource`, use: 'token-sources' },
    ]),
  ];
}

function caFileOf(holder: object | undefined): string | undefined {
  return holder && 'caFile' in holder && typeof holder.caFile === 'string' ? holder.caFile : undefined;
}

/** The distinct `caFile` paths a config names for `uses` (default all), in config order. */
export function caFilesOf(config: Config, uses: readonly CaUse[] = ALL_CA_USES): string[] {
  const files = caHolders(config)
    .filter((h) => uses.includes(h.use))
    .map((h) => caFileOf(h.holder));
  return [...new Set(files.filter((f) => f !== undefined))];
}

/**
 * The signatures of the CA bundles a loaded config holds, as they were just
 * before each was read: the baseline for watching them. A file named but not
 * read (a command that skipped it) is stat'ed now.
 */
export function caBaselineOf(config: Config): FileSignatures {
  const baseline = new Map<string, string>();
  for (const { holder } of caHolders(config)) {
    const file = caFileOf(holder);
    if (file === undefined || baseline.has(file)) continue;
    const bundle = (holder as { ca?: CaBundle }).ca;
    baseline.set(file, bundle?.seen ?? signatureOf(file));
  }
  return baseline;
}

/**
 * A copy of one config block (a token source) with the bundle its `caFile` names read now and put beside it as
 * `ca`, for a command that uses that block alone from a config loaded without CA bundles. A bad file is a
 * ConfigError naming `keyPath.caFile`. A block without `caFile` is returned as it is.
 */
export function withCaBundle<T extends object>(holder: T, keyPath: string): T {
  const file = caFileOf(holder);
  return file === undefined ? holder : { ...holder, ca: readCaBundle(file, `${keyPath}.caFile`) };
}

/**
 * Reads every `caFile` a validated config names for `uses` (issuers, token
 * sources, routes' targets; default all) and puts the bundle beside it as
 * `ca`, where the TLS clients take it from: no CA file is read on the request
 * path, and each load (so each reload) reads them afresh. A command that uses
 * one part of the config reads only the bundles of that part, so a file that
 * exists only where another part runs (a pod's mounted CA) does not stop it.
 * A file named twice is read once. Returns every problem (each on its
 * `caFile` key path) for the caller to report with any others it finds, in
 * one ConfigError. Call it before the config is frozen.
 */
export function attachCaBundles(config: Config, uses: readonly CaUse[] = ALL_CA_USES): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const read = new Map<string, CaBundle>();
  for (const { holder, keyPath, use } of caHolders(config)) {
    const file = caFileOf(holder);
    if (file === undefined || !uses.includes(use)) continue;
    issues.push(
      ...issuesOf(() => {
        let bundle = read.get(file);
        if (!bundle) read.set(file, (bundle = readCaBundle(file, `${keyPath}.caFile`)));
        Object.assign(holder!, { ca: bundle });
      }),
    );
  }
  return issues;
}
