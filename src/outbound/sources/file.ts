import { stat } from 'node:fs/promises';
import { describeFsError } from '../../config/configured-files.js';
import type { TokenSourceConfig } from '../../config/schema.js';
import { TokenUnavailableError } from '../../errors.js';
import { readRuntimeFile } from './files.js';
import { assertBearerToken, jwtClaims, toIssuedToken } from './token-format.js';
import type { IssuedToken, SourceDeps, TokenSource } from './types.js';

type Config = Extract<TokenSourceConfig, { type: 'file' }>;

/**
 * Kubernetes advice for projected service-account tokens: re-read the file at
 * least once a minute, since the kubelet rotates it in place (at 80% of its
 * lifetime) and says nothing.
 */
export const FILE_RECHECK_MS = 60_000;

interface Snapshot {
  ino: number;
  size: number;
  mtimeMs: number;
  readAt: number;
  token: IssuedToken;
}

/**
 * A token file kept fresh by someone else (kubelet, spiffe-helper, a CI
 * runner). `path` may contain `{audience}` (from config, never from a
 * request). The file is re-read when stat says it changed (inode, size,
 * mtime; stat follows the symlink swap the kubelet does) and at least once a
 * minute. A missing, unreadable or expired file is an error; the cache above
 * keeps serving the last good token while it is still valid.
 */
export function createFileSource(cfg: Config, deps: SourceDeps): TokenSource {
  const snapshots = new Map<string, Snapshot>();
  return {
    kind: 'file',
    async fetch(req) {
      const path = cfg.path.replaceAll('{audience}', req.audience);
      let st;
      try {
        st = await stat(path);
      } catch (err) {
        snapshots.delete(path);
        throw new TokenUnavailableError(`cannot read token file ${path}: ${describeFsError(err)}`, undefined, { cause: err });
      }
      const now = deps.clock.now();
      const snap = snapshots.get(path);
      const unchanged = snap && snap.ino === st.ino && snap.size === st.size && snap.mtimeMs === st.mtimeMs;
      if (unchanged && now - snap.readAt < FILE_RECHECK_MS && now < snap.token.expiresAt) {
        return { ...snap.token, recheckAt: now + FILE_RECHECK_MS };
      }
      const text = await readRuntimeFile(path, 'token file');
      const what = `token file ${path}`;
      assertBearerToken(text, what);
      if (!jwtClaims(text)) throw new TokenUnavailableError(`${what} does not hold a JWT (its exp claim gives the expiry)`);
      const token = toIssuedToken(text, undefined, now, what);
      snapshots.set(path, { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, readAt: now, token });
      return { ...token, recheckAt: now + FILE_RECHECK_MS };
    },
    async close() {
      snapshots.clear();
    },
  };
}
