import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { ConfigError } from '../errors.js';

/** How much a file named in the config may hold, and what it holds (for the message when it is larger). */
export interface FileLimit {
  readonly maxBytes: number;
  readonly holds: string;
}

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * Size caps for the files the config names. Generous for what they hold, small
 * enough that a wrong path (a log file, a disk image) fails fast instead of
 * filling memory.
 */
export const FILE_LIMITS = {
  /** `caFile`: 1 MiB; the whole Mozilla root store is about 220 KiB. */
  caBundle: { maxBytes: MiB, holds: 'a CA bundle' },
  /** `privateKeyFile`: 1 MiB; a PEM key or JWK is a few KiB, a JWK Set may list public keys beside it. */
  privateKey: { maxBytes: MiB, holds: 'a private key or JWK Set' },
  /** `clientSecretFile`: 64 KiB. */
  clientSecret: { maxBytes: 64 * KiB, holds: 'a client secret' },
  /** Token files re-read at every use (`path`, `subjectTokenFile`, `clientAssertionFile`): 64 KiB; a JWT is a few KiB. */
  token: { maxBytes: 64 * KiB, holds: 'a token' },
  /** `inbound.tls.certFile` / `keyFile` (PEM), read at start and whenever they change: 1 MiB; a chain is a few KiB. */
  tlsPem: { maxBytes: MiB, holds: 'a PEM certificate chain or private key' },
} as const satisfies Record<string, FileLimit>;

/** A file that is there but must not be read: not a regular file, or larger than its limit. */
class RefusedFileError extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever, on the main thread.
const OPEN_FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0);
const CHUNK_BYTES = 64 * KiB;

function refuseUnlessSmallRegularFile(st: Stats, limit: FileLimit): void {
  // A FIFO, a socket or a device (/dev/zero never ends) is refused before a byte is read.
  if (st.isDirectory()) throw new RefusedFileError('is a directory');
  if (!st.isFile()) throw new RefusedFileError('is not a regular file');
  if (st.size > limit.maxBytes) throw tooLarge(limit);
}

function tooLarge(limit: FileLimit): RefusedFileError {
  return new RefusedFileError(`larger than ${formatBytes(limit.maxBytes)}, which is plenty for ${limit.holds}`);
}

function formatBytes(n: number): string {
  return n % MiB === 0 ? `${n / MiB} MiB` : n % KiB === 0 ? `${n / KiB} KiB` : `${n} bytes`;
}

/**
 * Reads a regular file of at most `limit.maxBytes` as UTF-8, synchronously (it
 * runs while a config loads). Throws a RefusedFileError for anything else, or
 * the fs error.
 */
export function readSmallFileSync(path: string, limit: FileLimit): string {
  const fd = openSync(path, OPEN_FLAGS);
  try {
    refuseUnlessSmallRegularFile(fstatSync(fd), limit);
    // Read to the end rather than trusting the size stat gave: the file may grow meanwhile, never past the limit.
    const text = limitedText(limit);
    for (;;) {
      const chunk = Buffer.allocUnsafe(CHUNK_BYTES);
      if (!text.add(chunk, readSync(fd, chunk, 0, CHUNK_BYTES, null))) return text.result();
    }
  } finally {
    closeSync(fd);
  }
}

/** The same as readSmallFileSync, off the main thread, for files read while the sidecar serves. */
export async function readSmallFile(path: string, limit: FileLimit): Promise<string> {
  const fh = await open(path, OPEN_FLAGS);
  try {
    refuseUnlessSmallRegularFile(await fh.stat(), limit);
    const text = limitedText(limit);
    for (;;) {
      const chunk = Buffer.allocUnsafe(CHUNK_BYTES);
      if (!text.add(chunk, (await fh.read(chunk, 0, CHUNK_BYTES, null)).bytesRead)) return text.result();
    }
  } finally {
    await fh.close();
  }
}

/** Collects a file's chunks up to `limit.maxBytes` (a RefusedFileError past it); `add` is false at the end of the file. */
function limitedText(limit: FileLimit): { add(chunk: Buffer, bytesRead: number): boolean; result(): string } {
  const chunks: Buffer[] = [];
  let total = 0;
  return {
    add(chunk, bytesRead) {
      if (bytesRead === 0) return false;
      total += bytesRead;
      if (total > limit.maxBytes) throw tooLarge(limit);
      chunks.push(chunk.subarray(0, bytesRead));
      return true;
    },
    result: () => Buffer.concat(chunks, total).toString('utf8'),
  };
}

/** Removes the trailing line breaks editors and `kubectl create secret --from-file` leave behind (`\n`, `\r\n`, several). */
export function trimTrailingNewline(s: string): string {
  return s.replace(/[\r\n]+$/, '');
}

/**
 * Reads a file named in the config (secrets, keys, CA bundles) while the config
 * or a component is built: a regular file of at most `limit.maxBytes`. A
 * problem is a ConfigError on the exact key path, so `run` refuses to start and
 * a reload keeps the old config. The content is never part of the message.
 */
export function readConfiguredFile(path: string, keyPath: string, limit: FileLimit): string {
  try {
    return trimTrailingNewline(readSmallFileSync(path, limit));
  } catch (err) {
    throw new ConfigError([{ path: keyPath, message: `cannot read ${path}: ${describeFsError(err)}` }]);
  }
}

/** A short, path-free reason for a failed file operation (`no such file`, `permission denied`, ...). */
export function describeFsError(err: unknown): string {
  if (err instanceof RefusedFileError) return err.reason;
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  if (code === 'ELOOP') return 'too many symbolic links (a symlink loop?)';
  if (code === 'ENOTDIR') return 'a part of the path is not a directory';
  if (code === 'EEXIST') return 'already exists';
  // Any other system error in libuv's words and its code ("i/o error (EIO)"), without the path its message repeats.
  const words = err instanceof Error ? /^[A-Z0-9_]+: ([^,]+),/.exec(err.message)?.[1] : undefined;
  if (code && words) return `${words} (${code})`;
  return code ?? (err instanceof Error ? err.message : String(err));
}
