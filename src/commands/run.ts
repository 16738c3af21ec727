import { setTimeout as sleep } from 'node:timers/promises';
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
      // The config serving now: a change on disk that would drop all of its inbound rules is held (see reloadFrom).
      let running = config;
      // Cut short by shutdown: a reload holding a config (see reloadFrom) gives up at once.
      const shutdownBegun = new AbortController();
      // The config files as they were at the last SIGHUP: the operator vouched for those, not for what a writer left
      // on disk by the time a SIGHUP queued behind a slow reload runs.
      let filesAtSighup: FileSignatures | undefined;
      // Reloads run one at a time, and never once shutdown has begun. At most one waits behind the one running: it
      // reads the config when it starts, so it takes in every trigger that came while it waited. A queue of one
      // reload per trigger made repeated SIGHUPs during an IdP outage each wait out a warm-up, the last (the one
      // with the operator's edit) only after all the others.
      let reloading: Promise<void> = Promise.resolve();
      let queued: string | undefined;
      /** Gives up the reload warming up now, if any (see app.reload's `superseded`). */
      let supersede: (() => void) | undefined;
      // The reload after one given up is never given up itself: files rewritten more often than a warm-up lasts (a
      // loop that writes the same config every few seconds during an IdP outage) would otherwise apply none.
      let lastWasSuperseded = false;
      // A reload refused for its config (or its TLS files) is tried again, with backoff, until one applies or another
      // reload runs: in Kubernetes a ConfigMap and the Secret it names are updated apart, often tens of seconds apart,
      // so a config naming a file that is not there yet is refused, and the file's arrival is no change of the config
      // files.
      const retry = createReloadRetry(() => reload('retry'));
      const reload = (trigger: string) => {
        if (stopping) return;
        // Config files that changed since the running reload read them: it would apply a config already replaced, and
        // while it waits on a hanging IdP that takes up to the warm-up's 10 s, and can drop a token still valid (a
        // typo pushed and reverted at once, during an IdP outage). The reload queued below reads the newer files.
        if (supersede && !isSameSignatures(signaturesOf(paths), lastRead)) supersede();
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
            // An edit already read (and refused) by a SIGHUP leaves its retry pending: only a reload that runs replaces it.
            if (trigger === 'file_changed' && isSameSignatures(now, lastRead)) {
              return void logger.debug({ event: 'config_unchanged', trigger }, 'config files unchanged since they were last read; not reloading');
            }
            retry.cancel();
            lastRead = now;
            const superseded = lastWasSuperseded ? undefined : new Promise<void>((resolve) => (supersede = resolve));
            const vouched = trigger === 'SIGHUP' && filesAtSighup !== undefined && isSameSignatures(now, filesAtSighup);
            const outcome = await reloadFrom(paths, trigger, logger, metrics, (next) => app.reload(next, superseded), now, retry.lastFailure, running, { shutdownBegun: shutdownBegun.signal, vouched }).finally(
              () => (supersede = undefined),
            );
            lastWasSuperseded = outcome.superseded === true;
            if (stopping) return;
            if (outcome.applied) {
              running = outcome.applied.config;
              watch.update(outcome.applied.config, outcome.applied.baselines);
            }
            // A reload waiting behind this one cancels the retry when it runs, and its outcome decides; one that finds
            // the files unchanged (this edit, seen again by the watch) does not run, and leaves the retry in place.
            retry.settled(outcome, trigger);
          })
          // Nothing above is expected to throw; if it did, later reloads and shutdown must still run after it.
          .catch((err) => logger.error({ event: 'config_reload_failed', trigger, error: errorSummary(err) }, 'reload failed; keeping the current config'));
      };
      watch.update(config, { config: configBaseline, ca: caBaselineOf(config) });
      process.on('SIGHUP', () => {
        filesAtSighup = signaturesOf(paths);
        reload('SIGHUP');
      });

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
          shutdownBegun.abort();
          watch.stop();
          retry.cancel();
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

interface ReloadOutcome {
  applied?: { config: Config; baselines: { config: FileSignatures; ca: FileSignatures } };
  /** What went wrong, as logged (refused or failed; not a reload a shutdown abandoned). */
  failure?: string;
  /**
   * Whether trying again later may succeed with the same config files: a refused config (a file it names may come,
   * a variable is set by then) or TLS files that are not there or not a pair yet. Not a listener that cannot bind or
   * a change that takes a restart: retried, each would warm the config up again (keys fetched, tokens handed over)
   * and fail the same way.
   */
  retryable?: boolean;
  /** Given up for config files that changed again: the reload queued behind it reads them. */
  superseded?: true;
}

/** How long a config seen on disk that drops every inbound rule waits before it is read as final (ms). */
export const RULES_DROPPED_HOLD_MS = 3_000;

async function reloadFrom(
  paths: string[],
  trigger: string,
  logger: Logger,
  metrics: ReturnType<typeof createMetrics>,
  apply: (c: Config) => Promise<void>,
  // Taken before the read, so an edit that lands while this config loads or is applied triggers the next reload.
  configBaseline: FileSignatures,
  // The previous attempt's failure: a retry that fails the same way is logged at debug, so a config that stays broken
  // is one error line, not one per retry. It is counted each time (config_reloads_total counts every attempt).
  previousFailure: string | undefined,
  running: Config,
  opts: {
    shutdownBegun: AbortSignal;
    /** Read by a SIGHUP as the files were when it came: the operator saying they are ready. */
    vouched: boolean;
  },
): Promise<ReloadOutcome> {
  const { shutdownBegun } = opts;
  // Shutdown began before the new config was applied: nothing failed, it will not be needed.
  const abandonedForShutdown = (): ReloadOutcome => {
    logger.info({ event: 'config_reload_abandoned', trigger, reason: 'shutdown' }, 'shutdown began; the new config is not applied');
    return {};
  };
  const level = (failure: string) => (trigger === 'retry' && failure === previousFailure ? 'debug' : 'error');
  let next: Config;
  try {
    next = loadConfig(paths, process.env, { checkSourceFiles: true, regularFilesOnly: true });
  } catch (err) {
    metrics.configReloads.inc({ result: 'invalid' });
    // A config file that cannot be read is a UsageError to the CLI; its `usage` code would only puzzle in a log line.
    const errors = err instanceof ConfigError ? err.issues.map(formatIssue) : err instanceof UsageError ? [err.message] : [errorSummary(err)];
    const failure = `invalid: ${errors.join('\n')}`;
    logger[level(failure)]({ event: 'config_reload_refused', trigger, errors }, 'new config is invalid; keeping the current one');
    return { failure, retryable: true };
  }
  const dropsRules = running.inbound?.rules !== undefined && next.inbound !== undefined && next.inbound.rules === undefined;
  // A file read while it is being written (a script that appends, a template piped from a slow producer) ends before
  // its last section, often the rules: applied, it would let every valid token in. Unless a SIGHUP vouched for these
  // very files, a config that drops them all is held a while, and given up if the files changed meanwhile (the reload
  // queued behind this one reads them).
  if (dropsRules && !opts.vouched) {
    logger.debug({ event: 'config_reload_held', trigger, holdSeconds: RULES_DROPPED_HOLD_MS / 1000 }, 'the new config has no inbound.rules; waiting to see that the files are complete');
    await sleep(RULES_DROPPED_HOLD_MS, undefined, { signal: shutdownBegun, ref: false }).catch(() => {});
    if (shutdownBegun.aborted) return abandonedForShutdown();
    if (!isSameSignatures(signaturesOf(paths), configBaseline)) {
      logger.info({ event: 'config_reload_abandoned', trigger, reason: 'superseded' }, 'the config files changed again while a config without inbound.rules waited; the newer one is read instead');
      return { superseded: true };
    }
  }
  try {
    await apply(next);
    metrics.configReloads.inc({ result: 'success' });
    if (dropsRules) logger.warn({ event: 'inbound_rules_removed', trigger }, 'the new config has no inbound.rules: every valid token is let in');
    logger.info({ event: 'config_reloaded', trigger }, 'config reloaded');
    return { applied: { config: next, baselines: { config: configBaseline, ca: caBaselineOf(next) } } };
  } catch (err) {
    if (err instanceof SidecarError && err.code === 'shutting_down') return abandonedForShutdown();
    // The config files changed while it warmed up: the reload queued behind this one reads them.
    if (err instanceof SidecarError && err.code === 'superseded') {
      logger.info({ event: 'config_reload_abandoned', trigger, reason: 'superseded' }, 'the config files changed while the new config warmed up; the newer one is read instead');
      return { superseded: true };
    }
    metrics.configReloads.inc({ result: 'error' });
    const failure = `error: ${errorSummary(err)}`;
    logger[level(failure)]({ event: 'config_reload_failed', trigger, error: errorSummary(err) }, 'reload failed; keeping the current config');
    return { failure, retryable: err instanceof ConfigError };
  }
}

/** The first retry of a refused reload comes this long after it (ms); each next one waits twice as long. */
export const RELOAD_RETRY_MIN_MS = 5_000;
/** ... up to this (ms). */
export const RELOAD_RETRY_MAX_MS = 60_000;

/** Schedules the retries of a reload that did not apply (see `reload` in runCommand). */
function createReloadRetry(retry: () => void) {
  let timer: NodeJS.Timeout | undefined;
  let delayMs = RELOAD_RETRY_MIN_MS;
  const state = {
    /** The last attempt's failure while retries go on; undefined once one applied. */
    lastFailure: undefined as string | undefined,
    /** Called with each attempt's outcome and what triggered it. */
    settled(outcome: ReloadOutcome, trigger: string) {
      state.cancel();
      state.lastFailure = outcome.failure;
      // A new edit or signal starts the backoff again: its config is another one.
      if (outcome.failure === undefined || trigger !== 'retry') delayMs = RELOAD_RETRY_MIN_MS;
      if (!outcome.retryable) return;
      timer = setTimeout(retry, delayMs);
      // A pending retry never holds the process: shutdown cancels it anyway.
      timer.unref();
      delayMs = Math.min(delayMs * 2, RELOAD_RETRY_MAX_MS);
    },
    cancel() {
      clearTimeout(timer);
      timer = undefined;
    },
  };
  return state;
}

function isSameSignatures(a: FileSignatures, b: FileSignatures): boolean {
  return a.size === b.size && [...a].every(([path, sig]) => b.get(path) === sig);
}

function errorSummary(err: unknown): string {
  if (err instanceof SidecarError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
