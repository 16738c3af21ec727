// Bundles the compiled CLI (dist/cli.js and the launcher's dist/proxy/runtime.js) into dist/bundle/, the code
// bin/oidc-sidecar.js runs. Why: every sidecar holds the source text and module records of everything it loads,
// for as long as it runs. One bundle without whitespace or comments, and without the parts of zod, undici and
// the rest that the CLI never reaches, keeps a sidecar ~10 MiB smaller at rest and at its peak under load
// (docs/performance.md, "The bundle"). Identifiers keep their names, so stack traces stay readable.
//
//   node scripts/bundle.mjs        (part of `npm run build`, after tsc)
import { build } from 'esbuild';
import { rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = `${root}dist/bundle`;

await rm(outdir, { recursive: true, force: true });
const { metafile } = await build({
  absWorkingDir: root,
  entryPoints: { cli: 'dist/cli.js', runtime: 'dist/proxy/runtime.js' },
  outdir,
  bundle: true,
  // Code that only `demo` and `dev-issuer` load stays in chunks of its own, read when those commands run.
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: 'linked',
  // The dev issuer and its dependency tree are only for `demo` and `dev-issuer`: loaded from node_modules when used.
  external: ['oidc-provider'],
  // The bundled CommonJS packages (undici, pino, yargs' parser…) call require() for Node's built-in modules.
  banner: { js: "import { createRequire as __bundleCreateRequire } from 'node:module'; const require = __bundleCreateRequire(import.meta.url);" },
  // Licence comments kept by the packages go to dist/bundle/*.LEGAL.txt; the packages themselves stay installed dependencies.
  legalComments: 'external',
  logLevel: 'warning',
  metafile: true,
});
// What went into the bundle, for test/e2e/bundle.test.ts and for anyone asking why it is the size it is.
// Beside dist/bundle/, not in it: it is not shipped.
await writeFile(`${root}dist/bundle-meta.json`, JSON.stringify(metafile));
