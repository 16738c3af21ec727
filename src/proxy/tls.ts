import { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { Server as HttpsServer } from 'node:https';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { describeFsError, FILE_LIMITS, readSmallFileSync } from '../config/configured-files.js';
import { pollFiles } from '../config/poll-files.js';
import type { Logger } from '../log.js';
import { isoTimeOrNumber } from '../time-text.js';
import { ENCRYPTED_KEY_MESSAGE, isEncryptedPrivateKeyPem } from '../encrypted-pem.js';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
}

/**
 * The inbound certificate or key cannot be read or do not form a usable pair: a config problem on its key path
 * (`inbound.tls.certFile`, `inbound.tls.keyFile`, or `inbound.tls` for the pair), code `tls_invalid`.
 */
export class TlsConfigError extends ConfigError {
  constructor(issues: ConfigIssue[], options?: { cause?: unknown }) {
    super(issues, { ...options, code: 'tls_invalid' });
  }
}

/**
 * Reads the PEM certificate chain and private key and checks that they form a
 * usable pair (the key matches the certificate), so a bad pair is refused
 * before it replaces a good one. Both files are read before anything is
 * thrown, so one error names every file that cannot be read.
 */
export function loadTlsMaterial(files: TlsFiles): TlsMaterial {
  const issues: ConfigIssue[] = [];
  const cert = readPem(files.certFile, 'certFile', issues);
  const key = readPem(files.keyFile, 'keyFile', issues);
  if (!cert || !key) throw new TlsConfigError(issues);
  const contentIssues = pemContentIssues(cert, key);
  if (contentIssues.length > 0) throw new TlsConfigError(contentIssues);
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    const mismatch = (err as { code?: string }).code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH';
    const why = mismatch ? 'the key in keyFile is not the certificate\'s key' : (err as Error).message;
    throw new TlsConfigError([{ path: 'inbound.tls', message: `certFile and keyFile are not a usable pair: ${why}` }], { cause: err });
  }
  return { cert, key };
}

/**
 * The labels under which OpenSSL reads a certificate for a server (PEM_read_bio_X509_AUX): the usual one, the old
 * "X509 CERTIFICATE", and the "TRUSTED CERTIFICATE" that `openssl x509 -trustout` writes. Node serves all three.
 */
const CERTIFICATE_LABELS: ReadonlySet<string> = new Set(['CERTIFICATE', 'X509 CERTIFICATE', 'TRUSTED CERTIFICATE']);

/**
 * The label of each PEM block in `text` (read as latin1) ("CERTIFICATE", "EC PRIVATE KEY", ...), in order. A BEGIN line
 * may start with a UTF-8 byte order mark, as a file saved by a Windows editor (or one such file concatenated into a
 * chain) does: OpenSSL reads those blocks.
 */
function pemLabels(text: string): string[] {
  return [...text.matchAll(/^(?:\u00EF\u00BB\u00BF)?-----BEGIN ([A-Z0-9 ]{1,64})-----\s*$/gm)].map((m) => m[1]!);
}

/**
 * What OpenSSL would only call "bad decrypt", "unsupported" or "no start line": a key protected by a passphrase
 * (the sidecar has no passphrase to give; the file's permissions or the Secret it is mounted from protect it), the
 * two files swapped, or a file with no PEM block of the kind its key expects. Named on the file's own key path.
 */
function pemContentIssues(cert: Buffer, key: Buffer): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const certLabels = pemLabels(cert.toString('latin1'));
  const keyText = key.toString('latin1');
  const keyLabels = pemLabels(keyText);
  const found = (labels: string[]) => (labels.length > 0 ? `it holds ${[...new Set(labels)].join(', ')}` : 'it holds no PEM block');
  if (!certLabels.some((l) => CERTIFICATE_LABELS.has(l))) {
    issues.push({ path: 'inbound.tls.certFile', message: `no PEM certificate (-----BEGIN CERTIFICATE-----): ${found(certLabels)}` });
  }
  if (isEncryptedPrivateKeyPem(keyText)) {
    issues.push({ path: 'inbound.tls.keyFile', message: ENCRYPTED_KEY_MESSAGE });
  } else if (!keyLabels.some((l) => l.endsWith('PRIVATE KEY'))) {
    issues.push({ path: 'inbound.tls.keyFile', message: `no PEM private key (-----BEGIN PRIVATE KEY----- or similar): ${found(keyLabels)}` });
  }
  return issues;
}

/**
 * A regular file of PEM text, of at most 1 MiB. A FIFO would block the event loop waiting for a writer (at start, and
 * at every change the watcher sees) and a device such as /dev/zero would fill memory: both are refused, like every
 * other file the config names. A problem is added to `issues` (worded as for every other file the config names).
 */
function readPem(path: string, key: string, issues: ConfigIssue[]): Buffer | undefined {
  try {
    return Buffer.from(readSmallFileSync(path, FILE_LIMITS.tlsPem));
  } catch (err) {
    issues.push({ path: `inbound.tls.${key}`, message: `cannot read ${path}: ${describeFsError(err)}` });
    return undefined;
  }
}

/**
 * Why clients would refuse the (first) certificate of `cert` at `now`: expired, or not valid yet. Such a pair is still
 * served when nothing better is at hand (at startup, or over a pair that is not valid either); the warning is what an
 * operator acts on. A reload does not swap it in for a pair that is valid: see watchTlsFiles.
 */
export function certificateValidityProblem(cert: Buffer, now: number = Date.now()): string | undefined {
  return validityOf(cert, now)?.problem;
}

interface ValidityProblem {
  problem: string;
  /** For a certificate not valid yet: when it becomes valid (epoch milliseconds). */
  validFrom?: number;
}

function validityOf(cert: Buffer, now: number): ValidityProblem | undefined {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    return undefined; // OpenSSL accepted it as a certificate already (loadTlsMaterial); nothing to add here.
  }
  const notBefore = Date.parse(x509.validFrom);
  const notAfter = Date.parse(x509.validTo);
  if (now > notAfter) return { problem: `expired at ${isoTimeOrNumber(notAfter)}` };
  if (now < notBefore) return { problem: `not valid until ${isoTimeOrNumber(notBefore)}`, validFrom: notBefore };
  return undefined;
}

function warnIfNotValid(material: TlsMaterial, files: TlsFiles, logger: Logger | undefined): void {
  const problem = certificateValidityProblem(material.cert);
  if (problem) logger?.warn({ event: 'tls_certificate_not_valid', certFile: files.certFile, problem }, `the inbound TLS certificate is ${problem}: clients will refuse it`);
}

/** How often the certificate files are checked for changes (milliseconds). */
export const TLS_POLL_MS = 1000;

/**
 * Swaps the server's certificate when `certFile` or `keyFile` changes on disk
 * (cert-manager renewals, Kubernetes secret updates). Stat polling rather than
 * inotify because secret volumes are updated by swapping a symlink, which an
 * inotify watch on the old file never sees. A new pair that is unreadable or
 * mismatched (for instance the cert written before its key) is logged and the
 * current one keeps serving.
 *
 * The first look always reads the files and compares them with `serving`, the
 * pair the server was started with, rather than trusting a first stat: a
 * renewal that lands between startup and that stat is still picked up. After
 * that, the files are read again only when a stat changes.
 *
 * A new pair whose certificate is expired or not valid yet does not replace one that is valid now: clients would
 * refuse it, and the pair serving is the better of the two (a Secret rolled back to an old revision, a clock ahead of
 * the issuer's). An expired one is refused (`tls_reload_failed`); one not valid yet is taken up the moment it becomes
 * valid (`tls_reload_deferred`), with no further change on disk needed. Over a pair that is not valid either, it is
 * served, with a warning (`tls_certificate_not_valid`), as at startup. Returns a function that stops watching.
 */
export function watchTlsFiles(server: HttpsServer, files: TlsFiles, serving: TlsMaterial, logger: Logger | undefined, pollMs = TLS_POLL_MS): () => void {
  let current = serving;
  let deferred: NodeJS.Timeout | undefined;
  warnIfNotValid(serving, files, logger);
  const reload = () => {
    clearTimeout(deferred);
    try {
      const next = loadTlsMaterial(files);
      if (next.cert.equals(current.cert) && next.key.equals(current.key)) return;
      const now = Date.now();
      const nextProblem = validityOf(next.cert, now);
      const keepServing = nextProblem !== undefined && validityOf(current.cert, now) === undefined;
      if (nextProblem?.validFrom !== undefined && keepServing) {
        // Looked at again once it is valid (plus a second: notBefore has whole seconds), whatever the files do meanwhile.
        deferred = setTimeout(reload, Math.min(nextProblem.validFrom - now + 1000, MAX_TIMER_MS)).unref();
        logger?.warn(
          { event: 'tls_reload_deferred', certFile: files.certFile, problem: nextProblem.problem },
          `the new TLS certificate is ${nextProblem.problem}: keeping the current one until then`,
        );
        return;
      }
      if (nextProblem && keepServing) throw new Error(`the new certificate is ${nextProblem.problem}, and the current one is still valid`);
      server.setSecureContext(next);
      current = next;
      logger?.info({ event: 'tls_reloaded', certFile: files.certFile }, 'inbound TLS certificate reloaded');
      warnIfNotValid(next, files, logger);
    } catch (err) {
      logger?.error({ event: 'tls_reload_failed', error: (err as Error).message }, 'new TLS certificate refused; keeping the current one');
    }
  };
  const stopPolling = pollFiles([files.certFile, files.keyFile], reload, pollMs, new Map());
  return () => {
    clearTimeout(deferred);
    stopPolling();
  };
}

/** The longest delay setTimeout takes; a longer one fires at once. */
const MAX_TIMER_MS = 2_147_483_647;
