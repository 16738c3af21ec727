import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
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

/**
 * A self-signed P-256 certificate valid only on 1 January 2020 (expired), made
 * with `openssl ca -selfsign`, the one openssl 3.0 command that takes explicit
 * dates. Files go to a fresh temp directory.
 */
export function expiredSelfSignedCert(name: string): SelfSignedCert {
  return datedSelfSignedCert(name, new Date('2020-01-01T00:00:00Z'), new Date('2020-01-02T00:00:00Z'));
}

/** A self-signed P-256 certificate for 127.0.0.1 valid from `notBefore` to `notAfter` (whole seconds), as expiredSelfSignedCert. */
export function datedSelfSignedCert(name: string, notBefore: Date, notAfter: Date): SelfSignedCert {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-dated-'));
  const [cert, key, csr, config] = ['crt', 'key', 'csr', 'cnf'].map((ext) => join(dir, `${name}.${ext}`)) as [string, string, string, string];
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '01\n');
  writeFileSync(
    config,
    ['[ca]', 'default_ca = self', '[self]', `database = ${join(dir, 'index.txt')}`, `new_certs_dir = ${dir}`, `serial = ${join(dir, 'serial')}`, 'default_md = sha256', 'policy = any', '[any]', 'commonName = supplied', ''].join('\n'),
  );
  // openssl's date form: YYYYMMDDHHMMSSZ.
  const asn1 = (d: Date) => `${d.toISOString().slice(0, 19).replace(/[-T:]/g, '')}Z`;
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], { stdio: 'ignore' });
  execFileSync('openssl', ['ca', '-batch', '-config', config, '-selfsign', '-keyfile', key, '-in', csr, '-out', cert, '-notext', '-startdate', asn1(notBefore), '-enddate', asn1(notAfter)], { stdio: 'ignore' });
  return { cert, key, pem: readFileSync(cert, 'utf8') };
}
