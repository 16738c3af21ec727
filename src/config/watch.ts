import { unwatchFile, watchFile, type Stats } from 'node:fs';
import { caFilesOf } from './ca-bundle.js';
import type { Config } from './schema.js';

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

/** What `run` watches for a reload: the config files, and the CA bundles the loaded config names. */
export interface ReloadWatch {
  /** Follows a config that was loaded and applied: watches what it names, or nothing when `lifecycle.watchConfig` is off. */
  update(config: Config): void;
  stop(): void;
}

/**
 * Calls `reload('file_changed')` when a config file changes and
 * `reload('ca_file_changed')` when a CA bundle (`caFile`) of the applied config
 * does. The bundles are read only when a config loads, and in Kubernetes a
 * rotated cluster CA (kube-root-ca.crt) changes ca.crt alone, never the config.
 */
export function createReloadWatch(paths: readonly string[], reload: (trigger: 'file_changed' | 'ca_file_changed') => void, intervalMs = 1000): ReloadWatch {
  let stopConfig = () => {};
  let ca: { files: string; stop: () => void } | undefined;
  const stopCa = () => {
    ca?.stop();
    ca = undefined;
  };
  return {
    update(config) {
      stopConfig();
      stopConfig = config.lifecycle.watchConfig ? watchConfigFiles(paths, () => reload('file_changed'), intervalMs) : () => {};
      const files = config.lifecycle.watchConfig ? caFilesOf(config) : [];
      // Kept while the same files are named, so a change just after a reload is not lost to a fresh first look.
      if (ca?.files === JSON.stringify(files)) return;
      stopCa();
      if (files.length > 0) ca = { files: JSON.stringify(files), stop: watchConfigFiles(files, () => reload('ca_file_changed'), intervalMs) };
    },
    stop() {
      stopConfig();
      stopConfig = () => {};
      stopCa();
    },
  };
}
