import { caFilesOf } from './ca-bundle.js';
import { pollFiles, signaturesOf, type FileSignatures } from './poll-files.js';
import type { Config } from './schema.js';

/** What `run` watches for a reload: the config files, and the CA bundles the applied config names. */
export interface ReloadWatch {
  /**
   * Follows a config that was loaded and applied: watches what it names, or
   * nothing when `lifecycle.watchConfig` is off. `baselines` are the files'
   * signatures from just before they were read (`signaturesOf(paths)` before
   * loading; `caBaselineOf(config)`), so a change during the load or while
   * the config is applied is still seen.
   */
  update(config: Config, baselines?: { config?: FileSignatures; ca?: FileSignatures }): void;
  stop(): void;
}

/**
 * Calls `reload('file_changed')` when a config file changes and
 * `reload('ca_file_changed')` when a CA bundle (`caFile`) of the applied config
 * does. The bundles are read only when a config loads, and in Kubernetes a
 * rotated cluster CA (kube-root-ca.crt) changes ca.crt alone, never the config.
 * Watchers are kept across reloads that name the same files, so a change
 * during a reload is not lost to a fresh first look.
 */
export function createReloadWatch(paths: readonly string[], reload: (trigger: 'file_changed' | 'ca_file_changed') => void, intervalMs = 1000): ReloadWatch {
  let stopConfig: (() => void) | undefined;
  let ca: { files: string; stop: () => void } | undefined;
  const stopCa = () => {
    ca?.stop();
    ca = undefined;
  };
  const stopAll = () => {
    stopConfig?.();
    stopConfig = undefined;
    stopCa();
  };
  return {
    update(config, baselines = {}) {
      if (!config.lifecycle.watchConfig) {
        stopAll();
        return;
      }
      stopConfig ??= pollFiles(paths, () => reload('file_changed'), intervalMs, baselines.config ?? signaturesOf(paths));
      const files = caFilesOf(config);
      if (ca?.files === JSON.stringify(files)) return;
      stopCa();
      if (files.length > 0) {
        const stop = pollFiles(files, () => reload('ca_file_changed'), intervalMs, baselines.ca ?? signaturesOf(files));
        ca = { files: JSON.stringify(files), stop };
      }
    },
    stop: stopAll,
  };
}
