#!/usr/bin/env node
// Thin launcher: the CLI runs from dist/bundle/, the compiled and bundled code (`npm run build`), so production
// needs no TypeScript runtime and a sidecar loads one bundle instead of hundreds of modules (docs/performance.md).
// main.js starts a plain `run --config FILE` itself and loads the full CLI (yargs) for anything else.
// V8's heap settings go in before anything else is loaded: the first full GC already runs while the modules
// load, and the old-generation limit it sets holds until the next one (docs/performance.md).
// Loaded with import() rather than statically, so that a bundle that is not there (a checkout installed with
// --ignore-scripts, or one being rebuilt) is said in one line, not as Node's stack trace.
const { tuneRuntimeForProxy } = await loadBuilt('../dist/bundle/runtime.js');
const { holdStopSignals } = await loadBuilt('../dist/bundle/startup-signals.js');

tuneRuntimeForProxy();
// To a sidecar, SIGHUP means "reload". Until `run` installs that handler, once its modules are loaded and it
// listens, Node's default for SIGHUP would end the process; a sidecar ignores it instead. The config that
// startup reads is the newest, and with `lifecycle.watchConfig` an edit that lands meanwhile still triggers a
// reload (the watch compares with what startup read). SIGTERM and SIGINT are held until then, and `run` stops as
// soon as it can, in the usual way, rather than being ended without a word by Node's default (src/startup-signals.ts).
if (process.argv[2] === 'run') {
  process.on('SIGHUP', () => {});
  holdStopSignals();
}
const { main } = await loadBuilt('../dist/bundle/main.js');

main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  // main() reports every failure itself; this is the last resort (say, a module that does not load), still one line.
  (err) => {
    process.stderr.write(`oidc-sidecar: ${oneLine(err)}\n`);
    process.exitCode = 1;
  },
);

/** A module of dist/bundle/; a missing one is a build that has not run (or a package that lost files), exit 1. */
async function loadBuilt(path) {
  try {
    return await import(path);
  } catch (err) {
    // The module asked for is missing (not a package it imports): the bundle is not there.
    const notBuilt = err && err.code === 'ERR_MODULE_NOT_FOUND' && err.url === new URL(path, import.meta.url).href;
    const advice = 'in a source checkout run `npm run build`; an installed package is incomplete: install it again';
    process.stderr.write(`oidc-sidecar: ${notBuilt ? `the CLI is not built: ${oneLine(err)} (${advice})` : oneLine(err)}\n`);
    process.exit(1);
  }
}

function oneLine(err) {
  return String(err && err.message ? err.message : err).trim().replace(/\s*[\r\n]+\s*/g, ' ');
}
