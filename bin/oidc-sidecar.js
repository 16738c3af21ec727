#!/usr/bin/env node
// Thin launcher: the CLI runs from dist/bundle/, the compiled and bundled code (`npm run build`), so production
// needs no TypeScript runtime and a sidecar loads one bundle instead of hundreds of modules (docs/performance.md).
// main.js starts a plain `run --config FILE` itself and loads the full CLI (yargs) for anything else.
// V8's heap settings go in before anything else is loaded: the first full GC already runs while the modules
// load, and the old-generation limit it sets holds until the next one (docs/performance.md).
import { tuneRuntimeForProxy } from '../dist/bundle/runtime.js';
import { holdStopSignals } from '../dist/bundle/startup-signals.js';

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
const { main } = await import('../dist/bundle/main.js');

main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  // main() reports every failure itself; this is the last resort (say, a module that does not load), still one line.
  (err) => {
    process.stderr.write(`oidc-sidecar: ${String(err && err.message ? err.message : err).trim().replace(/\s*[\r\n]+\s*/g, ' ')}\n`);
    process.exitCode = 1;
  },
);
