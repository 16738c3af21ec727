import type { Agent as UndiciAgent, buildConnector as undiciBuildConnector, Pool as UndiciPool } from 'undici';
import buildConnectorFunction from 'undici/lib/core/connect.js';
import Dispatcher from 'undici/lib/dispatcher/dispatcher.js';
import dispatcherApi from 'undici/lib/api/index.js';
import UndiciPoolClass from 'undici/lib/dispatcher/pool.js';
import UndiciAgentClass from 'undici/lib/dispatcher/agent.js';

/*
 * undici's connection pools without the rest of the package. `import 'undici'`
 * loads fetch, WebSocket, EventSource, caches and mocks as well, ~9 MiB of
 * resident memory in every sidecar for code the data path never runs
 * (measured: docs/performance.md). These are undici's own modules, so a
 * release that moves them fails the build (the bundle cannot resolve them)
 * and the tests, not a running sidecar: the CLI runs from the bundle made
 * at build time (scripts/bundle.mjs).
 *
 * `request()`, `stream()`, `pipeline()`, `upgrade()` and `connect()` are not
 * methods of the dispatcher classes: undici's entry point mixes them into
 * `Dispatcher.prototype`. Do the same (idempotent if the entry point is
 * loaded too), so every pool answers the documented API.
 */
Object.assign(Dispatcher.prototype, dispatcherApi);

/** undici's `Pool` (one origin, keep-alive connections). */
export const Pool = UndiciPoolClass as typeof UndiciPool;
/** undici's connector factory: what a pool builds from its `connect` options, for a pool given a connector of its own. */
export const buildConnector = buildConnectorFunction as typeof undiciBuildConnector;
/** undici's `Agent` (a pool per origin). */
export const Agent = UndiciAgentClass as typeof UndiciAgent;
export type Pool = UndiciPool;
export type Agent = UndiciAgent;
