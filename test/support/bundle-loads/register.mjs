// `node --import <this file>`: reports on stderr each file of dist/bundle/ the process loads ("bundle-load: cli.js"),
// so a test can see which parts of the bundle a command really loaded (test/e2e/bundle.test.ts) and when the
// launcher starts loading it (test/e2e/lifecycle.test.ts).
import * as nodeModule from 'node:module';
import { reportBundleLoad } from './report.mjs';

if (typeof nodeModule.registerHooks === 'function') {
  // Node 22.15+: the hook runs on the main thread, so its line is written before the module loads. module.register()
  // runs hooks on a separate thread whose output can arrive after the process has started (Node 26 also deprecates it).
  nodeModule.registerHooks({
    resolve(specifier, context, next) {
      const resolved = next(specifier, context);
      reportBundleLoad(resolved.url);
      return resolved;
    },
  });
} else {
  nodeModule.register('./hooks.mjs', import.meta.url);
}
