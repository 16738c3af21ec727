import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SelfSignedCert {
  /** Path of the PEM certificate (also usable as a `caFile`). */
  cert: string;
  /** Path of the PEM private key. */
  key: string;
  /** The certificate's PEM text. */
  pem: string;
}

/**
 * A self-signed P-256 certificate for 127.0.0.1 (CN = `name`), valid one day,
 * made with the openssl CLI (node:crypto cannot sign X.509). Files go to `dir`,
 * default a fresh temp directory.
 */
export function selfSignedCert(name: string, dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-cert-'))): SelfSignedCert {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`,
    '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return { cert, key, pem: readFileSync(cert, 'utf8') };
}
