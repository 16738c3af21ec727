import { X509Certificate } from 'node:crypto';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { FILE_LIMITS, readConfiguredFile } from './configured-files.js';
import type { Config } from './schema.js';

/** A PEM CA bundle as read from a `caFile`: `file` names it (pool keys), `pem` is what a TLS client trusts. */
export interface CaBundle {
  readonly file: string;
  readonly pem: string;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/**
 * Reads a PEM CA bundle and checks that it holds at least one certificate and
 * that every certificate in it parses. Node's TLS takes an empty or garbled
 * bundle without a word and then trusts nothing in it, so the first sign would
 * otherwise be a failed handshake on some request. A problem is a ConfigError
 * at `keyPath`.
 */
export function readCaBundle(file: string, keyPath: string): CaBundle {
  const pem = readConfiguredFile(file, keyPath, FILE_LIMITS.caBundle);
  const invalid = (message: string) => new ConfigError([{ path: keyPath, message }]);
  if (pem.trim().length === 0) throw invalid(`${file} is empty`);
  const certificates = pem.match(PEM_CERTIFICATE) ?? [];
  if (certificates.length === 0) throw invalid(`no PEM certificate found in ${file}`);
  certificates.forEach((certificate, i) => {
    try {
      new X509Certificate(certificate);
    } catch {
      throw invalid(`certificate ${i + 1} of ${certificates.length} in ${file} is not a valid X.509 certificate`);
    }
  });
  return { file, pem };
}

/**
 * Reads every `caFile` a validated config names (issuers, token sources,
 * routes) and puts the bundle beside it as `ca`, where the TLS clients take it
 * from: no CA file is read on the request path, and each load (so each
 * reload) reads them afresh, which is how a rotated CA is picked up. A file
 * named twice is read once. Every bad file is listed in one ConfigError.
 * Call it before the config is frozen.
 */
export function attachCaBundles(config: Config): void {
  const holders: Array<readonly [object | undefined, string]> = [
    ...(config.inbound?.issuers ?? []).map((issuer, i) => [issuer, `inbound.issuers.${i}`] as const),
    [config.outbound?.tokenSource, 'outbound.tokenSource'],
    ...(config.outbound?.routes ?? []).flatMap((route, i) => [
      [route, `outbound.routes.${i}`] as const,
      [route.tokenSource, `outbound.routes.${i}.tokenSource`] as const,
    ]),
  ];
  const issues: ConfigIssue[] = [];
  const read = new Map<string, CaBundle>();
  for (const [holder, keyPath] of holders) {
    if (!holder || !('caFile' in holder) || typeof holder.caFile !== 'string') continue;
    const file = holder.caFile;
    try {
      let bundle = read.get(file);
      if (!bundle) read.set(file, (bundle = readCaBundle(file, `${keyPath}.caFile`)));
      Object.assign(holder, { ca: bundle });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      issues.push(...err.issues);
    }
  }
  if (issues.length > 0) throw new ConfigError(issues);
}
