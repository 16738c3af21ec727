import { statSync } from 'node:fs';
import { stat } from 'node:fs/promises';

/** What identifies a file's current version without reading it: inode, size, mtime and ctime ('-' if missing). */
export type FileSignatures = ReadonlyMap<string, string>;

/** A stat result's signature, as signatureOf and pollFiles compare it. */
export const signature = (s: { ino: number; size: number; mtimeMs: number; ctimeMs: number }): string => `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;

/** One file's signature now ('-' if it cannot be stat'ed). stat follows symlinks: a Kubernetes volume update swaps a symlink, which changes the target's inode. */
export function signatureOf(path: string): string {
  try {
    return signature(statSync(path));
  } catch {
    return '-';
  }
}

/**
 * The files' signatures now. Taken before a file is read, it is the baseline
 * a watcher compares with, so a change that lands while the file is read or
 * applied is still seen.
 */
export function signaturesOf(paths: readonly string[]): FileSignatures {
  return new Map(paths.map((p) => [p, signatureOf(p)]));
}

/**
 * Polls `paths` at once and then every `intervalMs`, and calls `onChange`
 * once they have settled (editors, `kubectl cp` and certificate renewals
 * write in several steps) after any of them differs from `baseline` or from
 * the last change seen; an empty baseline makes the first look a change.
 * `onChange` must not throw. ctime is part of the signature because `cp -p`
 * and `rsync --inplace -t` keep inode, size and mtime. Returns a function that
 * stops polling.
 */
export function pollFiles(paths: readonly string[], onChange: () => void, intervalMs: number, baseline: FileSignatures = signaturesOf(paths)): () => void {
  const seen = new Map(baseline);
  let settling: NodeJS.Timeout | undefined;
  let polling = false;
  let stopped = false;
  /** Stats every file and records what changed; true when anything did. */
  const look = async (): Promise<boolean> => {
    const now = await Promise.all(paths.map((p) => stat(p).then(signature, () => '-')));
    let changed = false;
    paths.forEach((p, i) => {
      if (seen.get(p) !== now[i]) {
        seen.set(p, now[i]!);
        changed = true;
      }
    });
    return changed && !stopped;
  };
  // A change is reported only once a look SETTLE_MS later finds nothing new: a writer still at work re-arms it.
  const settle = () => {
    settling = setTimeout(() => void confirm(), SETTLE_MS).unref();
  };
  const confirm = async () => {
    polling = true;
    try {
      const changed = await look();
      settling = undefined;
      if (stopped) return;
      if (changed) settle();
      else onChange();
    } finally {
      polling = false;
    }
  };
  const poll = async () => {
    if (polling || settling) return;
    polling = true;
    try {
      if (await look()) settle();
    } finally {
      polling = false;
    }
  };
  const timer = setInterval(() => void poll(), intervalMs).unref();
  void poll();
  return () => {
    stopped = true;
    clearInterval(timer);
    clearTimeout(settling);
  };
}

/**
 * How long files must stay unchanged before a change is reported (milliseconds): one poll interval. A writer that
 * pauses longer than this mid-file (200 ms was too short for a script appending section by section) has its partial
 * file read; writing to a temporary file and renaming it over the config is the way to never be read half-written.
 */
export const SETTLE_MS = 1000;
