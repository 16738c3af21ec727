import { createRequire } from 'node:module';
import type { Agent as UndiciAgent, Pool as UndiciPool } from 'undici';

const require = createRequire(import.meta.url);

/**
 * undici's connection pools without the rest of the package. `import 'undici'`
 * loads fetch, WebSocket, EventSource, caches and mocks as well, ~9 MiB of
 * resident memory in every sidecar for code the data path never runs
 * (measured: docs/performance.md). The dispatcher modules are loaded on their
 * own; should undici's internal layout ever move, this falls back to the
 * package entry point and only the saving is lost.
 */
function load<T>(internalPath: string, exportName: 'Pool' | 'Agent'): T {
  try {
    return require(internalPath) as T;
  } catch {
    return (require('undici') as Record<string, T>)[exportName]!;
  }
}

/**
 * `request()`, `stream()`, `pipeline()`, `upgrade()` and `connect()` are not
 * methods of the dispatcher classes: undici's entry point mixes them into
 * `Dispatcher.prototype`. Do the same (idempotent if the entry point is
 * loaded too), so every pool answers the documented API.
 */
function installApi(): void {
  try {
    const dispatcher = require('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
    Object.assign(dispatcher.prototype, require('undici/lib/api/index.js'));
  } catch {
    require('undici');
  }
}

installApi();

/** undici's `Pool` (one origin, keep-alive connections). */
export const Pool: typeof UndiciPool = load('undici/lib/dispatcher/pool.js', 'Pool');
/** undici's `Agent` (a pool per origin). */
export const Agent: typeof UndiciAgent = load('undici/lib/dispatcher/agent.js', 'Agent');
export type Pool = UndiciPool;
export type Agent = UndiciAgent;
