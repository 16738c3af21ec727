import type { CommandModule } from 'yargs';
import { startApp, type RunningApp } from '../app.js';
import { loadConfig, resolveConfigPaths } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { caBaselineOf } from '../config/ca-bundle.js';
import { signaturesOf, type FileSignatures } from '../config/poll-files.js';
import { createReloadWatch } from '../config/watch.js';
import { createMetrics } from '../admin/metrics.js';
import { ConfigError, SidecarError, UsageError, formatIssue } from '../errors.js';
import { logCrashes } from '../crash.js';
import { abandonUnwrittenLogs, createLogger, type Logger } from '../log.js';
import { tuneRuntimeForProxy } from '../proxy/runtime.js';
import { releaseStopSignals } from '../startup-signals.js';
import { withConfigOption } from './shared.js';

/**
 * `run`: start the sidecar and keep it running until SIGTERM/SIGINT.
 * SIGHUP, a changed config file or a changed CA bundle the config names
 * reloads; a bad new config is refused and the old one keeps serving.
 */
export function runCommand(): CommandModule<object, { config?: string[] }> {
  return {
    command: 'run',
    describe: 'Start the sidecar',
    builder: (y) => withConfigOption(y),
    handler: async (argv) => {
      // bin/oidc-sidecar.js already did this before loading any module; again here for embedders of main().
      tuneRuntimeForProxy();
      const paths = resolveConfigPaths(argv.config);
      let stopping = false;
      // Taken before the first read: an edit landing while the sidecar starts is still seen.
      const configBaseline = signaturesOf(paths);
      // Every file the config names is read and checked here, before a listener binds or a request leaves: a
      // missing one is the same one line `validate` prints, and nothing else happens.
      const config = loadConfig(paths, process.env, { checkStartupFiles: true });
      const metrics = createMetrics({ service: config.service });
      const logger = createLogger({ level: config.log.level, service: config.service, onLinesDropped: (lines) => metrics.logLinesDropped.inc(lines) });
      logCrashes(logger);
      const app = await startApp(config, { logger, metrics });
      logger.info({ event: 'started', addresses: app.addresses, configFiles: paths }, 'oidc-sidecar started');

      const watch = createReloadWatch(paths, (trigger) => reload(trigger));
      // The config files' signatures when last read. A file change already read by a reload (an edit followed by
      // SIGHUP, as config management does) is seen by the watch a moment later: reloading it again would refetch the
      // keys and log, count and (for a bad file) refuse the same edit twice.
      let lastRead = configBaseline;
      // Reloads run one at a time, and never once shutdown has begun. At most one waits behind the one running: it
      // reads the config when it starts, so it takes in every trigger that came while it waited. A queue of one
      // reload per trigger made repeated SIGHUPs during an IdP outage each wait out a warm-up, the last (the one
      // with the operator's edit) only after all the others.
      let reloading: Promise<void> = Promise.resolve();
      let queued: string | undefined;
      const reload = (trigger: string) => {
        if (stopping) return;
        // A SIGHUP or a CA change merged into a waiting file_changed reload must not be skipped as "unchanged".
        const wasQueued = queued !== undefined;
        if (queued === undefined || queued === 'file_changed') queued = trigger;
        if (wasQueued) return;
        reloading = reloading
          .then(async () => {
            const trigger = queued!;
            queued = undefined;
            if (stopping) return;
            const now = signaturesOf(paths);
            if (trigger === 'file_changed' && isSameSignatures(now, lastRead)) {
              return void logger.debug({ event: 'config_unchanged', trigger }, 'config files unchanged since they were last read; not reloading');
            }
            lastRead = now;
            const applied = await reloadFrom(paths, trigger, logger, metrics, (next) => app.reload(next), now);
            if (applied && !stopping) watch.update(applied.config, applied.baselines);
          })
          // Nothing above is expected to throw; if it did, later reloads and shutdown must still run after it.
          .catch((err) => logger.error({ event: 'config_reload_failed', trigger, error: errorSummary(err) }, 'reload failed; keeping the current config'));
      };
      watch.update(config, { config: configBaseline, ca: caBaselineOf(config) });
      process.on('SIGHUP', () => reload('SIGHUP'));

      const failure = await new Promise<unknown>((resolve) => {
        const stop = (signal: NodeJS.Signals, whileStarting = false) => {
          // A second signal must not end the drain it started: with `once`, a second SIGTERM would fall to Node's
          // default and kill the process mid-drain. A second SIGTERM is ignored (an orchestrator's SIGKILL is the
          // hard stop); SIGINT is a second Ctrl-C, someone at a terminal who wants out now: exit 130 at once,
          // cutting what is in flight, never 0.
          if (stopping) {
            if (signal !== 'SIGINT') return void logger.info({ event: 'signal', signal, ignored: true }, `received ${signal} again; still draining`);
            logger.warn({ event: 'shutdown_forced', signal }, `received ${signal} during the drain; stopping now`);
            logger.flush();
            process.exit(130);
          }
          logger.info({ event: 'signal', signal, ...(whileStarting && { whileStarting }) }, `received ${signal}${whileStarting ? ' while starting' : ''}`);
          stopping = true;
          watch.stop();
          // A reload under way gives up at once (app.shutdown); one queued behind it never starts (`stopping`).
          shutDown(app, logger).then(() => resolve(undefined), resolve);
        };
        // Not `stop` itself: Node passes a signal listener the signal's number too, which would land in `whileStarting`.
        process.on('SIGTERM', (signal) => stop(signal));
        process.on('SIGINT', (signal) => stop(signal));
        // Only now, with these listening, do the launcher's stop up: a moment with neither would leave Node's default.
        const heldSignal = releaseStopSignals();
        if (heldSignal) stop(heldSignal, true);
      });
      logger.flush();
      // Everything we own is closed; should a library still hold a handle, it must not keep a
      // terminating pod alive until SIGKILL.
      // A stdout that has not taken the last lines by then is stuck: they are given up rather than waited for.
      setTimeout(() => {
        abandonUnwrittenLogs(logger);
        process.exit(process.exitCode ?? (failure ? 1 : 0));
      }, 2000).unref();
      // The CLI reports it on stderr and exits 1.
      if (failure) throw failure;
    },
  };
}

/**
 * Shuts the app down. A failed shutdown is logged and rejects with `shutdown_failed`, so the process
 * exits 1: exit 0 tells an orchestrator that the drain completed, and only then.
 */
export async function shutDown(app: Pick<RunningApp, 'shutdown'>, logger: Logger): Promise<void> {
  try {
    await app.shutdown();
  } catch (err) {
    logger.error({ event: 'shutdown_failed', error: errorSummary(err) }, 'shutdown failed');
    throw new SidecarError('shutdown_failed', `shutdown failed: ${errorSummary(err)}`, 500, { cause: err });
  }
}

async function reloadFrom(
  paths: string[],
  trigger: string,
  logger: Logger,
  metrics: ReturnType<typeof createMetrics>,
  apply: (c: Config) => Promise<void>,
  // Taken before the read, so an edit that lands while this config loads or is applied triggers the next reload.
  configBaseline: FileSignatures,
): Promise<{ config: Config; baselines: { config: FileSignatures; ca: FileSignatures } } | undefined> {
  let next: Config;
  try {
    next = loadConfig(paths, process.env, { checkSourceFiles: true, regularFilesOnly: true });
  } catch (err) {
    metrics.configReloads.inc({ result: 'invalid' });
    // A config file that cannot be read is a UsageError to the CLI; its `usage` code would only puzzle in a log line.
    const errors = err instanceof ConfigError ? err.issues.map(formatIssue) : err instanceof UsageError ? [err.message] : [errorSummary(err)];
    logger.error({ event: 'config_reload_refused', trigger, errors }, 'new config is invalid; keeping the current one');
    return undefined;
  }
  try {
    await apply(next);
    metrics.configReloads.inc({ result: 'success' });
    logger.info({ event: 'config_reloaded', trigger }, 'config reloaded');
    return { config: next, baselines: { config: configBaseline, ca: caBaselineOf(next) } };
  } catch (err) {
    // Shutdown began while the new config warmed up: nothing failed, it will not be needed.
    if (err instanceof SidecarError && err.code === 'shutting_down') {
      logger.info({ event: 'config_reload_abandoned', trigger }, 'shutdown began; the new config is not applied');
      return undefined;
    }
    metrics.configReloads.inc({ result: 'error' });
    logger.error({ event: 'config_reload_failed', trigger, error: errorSummary(err) }, 'reload failed; keeping the current config');
    return undefined;
  }
}

function isSameSignatures(a: FileSignatures, b: FileSignatures): boolean {
  return a.size === b.size && [...a].every(([path, sig]) => b.get(path) === sig);
}

function errorSummary(err: unknown): string {
  if (err instanceof SidecarError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
