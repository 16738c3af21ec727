import { unwatchFile, watchFile, type Stats } from 'node:fs';

/**
 * Calls `onChange` when any of the config files changes on disk. Polls with
 * stat (following symlinks) rather than inotify, because Kubernetes updates a
 * mounted ConfigMap by swapping a symlink, which inotify on the file misses.
 * Returns a function that stops watching.
 */
export function watchConfigFiles(paths: readonly string[], onChange: () => void, intervalMs = 1000): () => void {
  let pending: NodeJS.Timeout | undefined;
  const listener = (curr: Stats, prev: Stats) => {
    if (curr.mtimeMs === prev.mtimeMs && curr.size === prev.size && curr.ino === prev.ino) return;
    // Editors write in several steps; settle before reloading.
    clearTimeout(pending);
    pending = setTimeout(onChange, 200);
  };
  for (const p of paths) watchFile(p, { interval: intervalMs, persistent: false }, listener);
  return () => {
    clearTimeout(pending);
    for (const p of paths) unwatchFile(p, listener);
  };
}
