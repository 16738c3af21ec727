import { caFilesOf } from './ca-bundle.js';
import { pollFiles, signaturesOf, type FileSignatures } from './poll-files.js';
import type { Config } from './schema.js';

/** What `run` watches for a reload: the config files, and the CA bundles the applied config names. */
export interface ReloadWatch {
  /**
   * Follows a config that was loaded and applied: watches what it names, or
   * nothing when `lifecycle.watchConfig` is off. `caBaseline` is the CA files'
   * signatures taken right after the config (and so its bundles) was read.
   */
  update(config: Config, caBaseline?: FileSignatures): void;
  stop(): void;
}

/**
 * Calls `reload('file_changed')` when a config file changes and
 * `reload('ca_file_changed')` when a CA bundle (`caFile`) of the applied config
 * does. The bundles are read only when a config loads, and in Kubernetes a
 * rotated cluster CA (kube-root-ca.crt) changes ca.crt alone, never the config.
 *
 * Create it before the config is first read: the config files' signatures
 * taken here are the baseline, so an edit that lands while the sidecar starts
 * is still seen. Watchers are kept across reloads that name the same files,
 * so a change during a reload is not lost to a fresh first look either.
 */
export function createReloadWatch(paths: readonly string[], reload: (trigger: 'file_changed' | 'ca_file_changed') => void, intervalMs = 1000): ReloadWatch {
  let configBaseline: FileSignatures | undefined = signaturesOf(paths);
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
    update(config, caBaseline) {
      if (!config.lifecycle.watchConfig) {
        stopAll();
        return;
      }
      // Turned back on by a reload: that config was just read, so now is the baseline.
      stopConfig ??= pollFiles(paths, () => reload('file_changed'), intervalMs, configBaseline ?? signaturesOf(paths));
      configBaseline = undefined;
      const files = caFilesOf(config);
      if (ca?.files === JSON.stringify(files)) return;
      stopCa();
      if (files.length > 0) {
        const stop = pollFiles(files, () => reload('ca_file_changed'), intervalMs, caBaseline ?? signaturesOf(files));
        ca = { files: JSON.stringify(files), stop };
      }
    },
    stop: stopAll,
  };
}
