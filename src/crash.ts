import { capped, type Logger } from './log.js';

/**
 * A bug that escapes every handler still ends the process, as Node would end it (exit 1; a promise rejected with
 * nobody to catch it counts too, Node's default since 15), but first it is said as one JSON line of the log, level
 * fatal: Node's own report is a multi-line stack trace on stderr, which log collectors that parse JSON lines split
 * into fragments or drop. The message is capped and JWT-like text in it masked, as everywhere in the log. After an
 * uncaught exception nothing about the process's state can be trusted, so there is no drain: the orchestrator's
 * restart is the recovery.
 */
export function logCrashes(logger: Logger): void {
  process.on('uncaughtException', (err: unknown, origin: NodeJS.UncaughtExceptionOrigin) => {
    const error = err instanceof Error ? err : new Error(String(err));
    try {
      logger.fatal({ event: 'crashed', origin, error: capped(error.message, 2048), stack: capped(error.stack ?? '', 8192) }, 'crashed');
      logger.flush();
    } finally {
      process.exit(1);
    }
  });
}
