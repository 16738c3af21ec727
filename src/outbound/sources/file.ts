import { stat } from 'node:fs/promises';
import { describeFsError } from '../../config/configured-files.js';
import { pollFiles, signature } from '../../config/poll-files.js';
import type { TokenSourceConfig } from '../../config/schema.js';
import { TokenUnavailableError } from '../../errors.js';
import { readRuntimeFile } from './files.js';
import { assertBearerToken, assertIssuedFor, jwtClaims, toIssuedToken } from './token-format.js';
import type { IssuedToken, SourceDeps, TokenSource } from './types.js';

type Config = Extract<TokenSourceConfig, { type: 'file' }>;

/**
 * Kubernetes advice for projected service-account tokens: re-read the file at
 * least once a minute, since the kubelet rotates it in place (at 80% of its
 * lifetime) and says nothing. A backstop: the stat poll below sees a change
 * within about FILE_POLL_MS.
 */
export const FILE_RECHECK_MS = 60_000;

/** How often a watched token file is stat'ed for a change (ms); the TLS certificate files are polled as often. */
export const FILE_POLL_MS = 1000;

const FILE_AUDIENCE_HINT = '; project one token per audience (serviceAccountToken { audience, path }) and put {audience} in path';

/** Whether text can fill `{audience}` as one file name: no `/` or NUL, and not `.` or `..`. */
export function isFileName(text: string): boolean {
  return !/[/\0]/.test(text) && text !== '.' && text !== '..';
}

interface Snapshot {
  /** The stat signature (inode, size, mtime, ctime) the file had when it was read. */
  signature: string;
  readAt: number;
  token: IssuedToken;
}

/**
 * A token file kept fresh by someone else (kubelet, spiffe-helper, a CI
 * runner). `path` may contain `{audience}` (from config, never from a
 * request). `fetch` re-reads the file when stat says it changed (inode,
 * size, mtime, ctime; stat follows the symlink swap the kubelet does) and at
 * least once a minute. `watch` is what makes a change seen promptly: it stats
 * the file every FILE_POLL_MS with pollFiles (as the config and TLS files are
 * watched: a symlink swap is invisible to an inotify watch on the old file)
 * and tells the cache, which then fetches. So a request never touches the
 * disk, and an unchanged file costs one stat a second and no read. A missing,
 * unreadable or expired file is an error; the cache above keeps serving the
 * last good token while it is still valid.
 */
export function createFileSource(cfg: Config, deps: SourceDeps): TokenSource {
  const snapshots = new Map<string, Snapshot>();
  const watching = new Set<() => void>();
  const pathFor = (audience: string) => cfg.path.replaceAll('{audience}', audience);
  return {
    kind: 'file',
    readsIssuedTokens: true,
    async fetch(req) {
      // The schema refuses such a route audience; this is for the `token` command's --audience, which is no config:
      // `--audience ../ledger` read the token file of another audience and printed it as this one's.
      if (cfg.path.includes('{audience}') && !isFileName(req.audience)) {
        throw new TokenUnavailableError(`the audience "${req.audience}" cannot fill {audience} in ${cfg.path}: it must be one file name (no "/", not "." or "..")`);
      }
      const path = pathFor(req.audience);
      let st;
      try {
        st = await stat(path);
      } catch (err) {
        snapshots.delete(path);
        throw new TokenUnavailableError(`cannot read token file ${path}: ${describeFsError(err)}`, undefined, { cause: err });
      }
      const now = deps.clock.now();
      const sig = signature(st);
      const snap = snapshots.get(path);
      const what = `token file ${path}`;
      // A file without {audience} may serve routes of several audiences: each gets the token only if it is for it.
      if (snap && snap.signature === sig && now - snap.readAt < FILE_RECHECK_MS && now < snap.token.expiresAt) {
        return { ...assertIssuedFor(snap.token, req.audience, what, FILE_AUDIENCE_HINT), recheckAt: now + FILE_RECHECK_MS };
      }
      const text = await readRuntimeFile(path, 'token file');
      assertBearerToken(text, what);
      if (!jwtClaims(text)) throw new TokenUnavailableError(`${what} does not hold a JWT (its exp claim gives the expiry)`);
      const token = toIssuedToken(text, undefined, now, what);
      // The signature taken before the read: a change that lands during the read differs from it and is read again.
      snapshots.set(path, { signature: sig, readAt: now, token });
      return { ...assertIssuedFor(token, req.audience, what, FILE_AUDIENCE_HINT), recheckAt: now + FILE_RECHECK_MS };
    },
    watch(req, onChange) {
      // The baseline is the file as it is now: the caller starts watching before its first fetch, so that fetch
      // reads this version or a later one, and any later change is reported. pollFiles reports a change once the
      // file has settled (an in-place rewrite is several writes) and uses unref'd timers.
      const stopPolling = pollFiles([pathFor(req.audience)], onChange, FILE_POLL_MS);
      const stop = () => {
        stopPolling();
        watching.delete(stop);
      };
      watching.add(stop);
      return stop;
    },
    async close() {
      for (const stop of [...watching]) stop();
      snapshots.clear();
    },
  };
}
