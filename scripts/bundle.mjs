// Bundles the compiled CLI (the launcher's dist/main.js and dist/proxy/runtime.js, and dist/cli.js, which main.js
// loads for every command line but a plain `run`) into dist/bundle/, the code bin/oidc-sidecar.js runs. Why: every
// sidecar holds the source text and module records of everything it loads, for as long as it runs. One bundle without whitespace or comments, and without the parts of zod, undici and
// the rest that the CLI never reaches, keeps a sidecar 6-7 MiB smaller at rest and 2-4 MiB at its peak under load
// (docs/performance.md, "The bundle"). Identifiers keep their names, so stack traces stay readable.
//
//   node scripts/bundle.mjs        (part of `npm run build`, after tsc)
import { build } from 'esbuild';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { isBuiltin } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import drainPausedParserOnFinish from './undici-finish-patch.cjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = `${root}dist/bundle`;

await rm(outdir, { recursive: true, force: true });
const { metafile } = await build({
  absWorkingDir: root,
  entryPoints: { main: 'dist/main.js', cli: 'dist/cli.js', runtime: 'dist/proxy/runtime.js', 'startup-signals': 'dist/startup-signals.js' },
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
  // Every bundled package's licence goes to dist/bundle/THIRD-PARTY-LICENSES.txt (below); the comments a package
  // marks as legal (notices of code it vendors) go to dist/bundle/*.LEGAL.txt.
  legalComments: 'external',
  logLevel: 'warning',
  metafile: true,
  plugins: [builtinsByRequire(), lazyStringWidthSegmenter(), lazyUndiciHttp2(), undiciPausedParserFinish()],
});
// What went into the bundle, for test/e2e/bundle.test.ts and for anyone asking why it is the size it is.
// Beside dist/bundle/, not in it: it is not shipped.
await writeFile(`${root}dist/bundle-meta.json`, JSON.stringify(metafile));

await writeFile(`${outdir}/THIRD-PARTY-LICENSES.txt`, await thirdPartyLicenses(metafile));

/**
 * Node's built-in modules are loaded with require(), never with an ESM import. To import a built-in, Node builds a
 * module namespace from its exports and reads every one of them, getters included, once. Two of those getters are
 * expensive: on Node 22.5+ and 24, `node:http`'s WebSocket, CloseEvent and MessageEvent load Node's own copy of undici
 * (fetch, WebSocket and more), which loads http2, tls and zlib: 2.0-2.4 MiB of V8 heap and 10-13 MiB of RSS in a
 * bare process, held for the process's life. `node:tls`'s rootCertificates turns its ~140 CA certificates into
 * strings (0.2 MiB). require() returns the exports object itself, so a getter runs only when code asks for it.
 * Each import of a built-in, static or dynamic, becomes a small CommonJS module that requires it, read through
 * esbuild's usual interop (named imports stay live: each reads the exports object); the require comes from the
 * banner's createRequire, as for the bundled CommonJS packages. test/e2e/bundle.test.ts checks that the bundle
 * imports no built-in (the banner's node:module aside) and that a sidecar does not load Node's undici.
 */
function builtinsByRequire() {
  return {
    name: 'builtins-by-require',
    setup(b) {
      // Our code names them `node:x`; some packages (yargs) import bare names like 'fs'.
      b.onResolve({ filter: /^[\w:/]+$/ }, ({ path, kind }) =>
        (kind === 'import-statement' || kind === 'dynamic-import') && isBuiltin(path) ? { path, namespace: 'builtin-by-require' } : undefined,
      );
      b.onLoad({ filter: /.*/, namespace: 'builtin-by-require' }, ({ path }) => ({
        contents: `module.exports = require(${JSON.stringify(path)});`,
        loader: 'js',
      }));
    },
  };
}

/**
 * yargs renders a command's whole help text every time the command runs (it caches it in case the handler asks for
 * it), and the help renderer measures text with string-width, which segments every string with an `Intl.Segmenter`
 * created when the module loads. That segmenter and the ICU break-iteration data it pulls in would stay resident in
 * every process that runs a command through yargs (a sidecar did, before `run` stopped loading yargs): ~2 MiB.
 * Printable ASCII (all of our help) is one grapheme per character, so string-width gets those characters directly,
 * and a segmenter is created only for the first string that needs one.
 * test/e2e/bundle.test.ts checks that every command's help renders the same as without the rewrite.
 */
function lazyStringWidthSegmenter() {
  const eager = 'const segmenter = new Intl.Segmenter();';
  const lazy = [
    'const printableAscii = /^[\\x20-\\x7e]*$/;',
    'let segmenterInstance;',
    'const segmenter = { segment: (text) => printableAscii.test(text)',
    '  ? Array.from(text, (segment) => ({ segment }))',
    '  : (segmenterInstance ??= new Intl.Segmenter()).segment(text) };',
  ].join('\n');
  return rewriteDependency({
    name: 'lazy-string-width-segmenter',
    // Every file of string-width (not of its own dependencies): a release that moves the code out of index.js must
    // not skip the rewrite.
    files: /node_modules[\\/]string-width[\\/][^\\/]+$/,
    rewrite(source, fail) {
      if (source.split(eager).length !== 2) fail(`expected one \`${eager}\``);
      // The stand-in has only segment(); any other use of the segmenter would break at run time.
      const uses = (pattern) => (source.match(pattern) ?? []).length;
      if (uses(/\bsegmenter\./g) !== uses(/\bsegmenter\.segment\(/g)) fail('the segmenter is used for more than segment()');
      return source.replace(eager, () => lazy);
    },
  });
}

/**
 * undici's HTTP/2 client loads node:http2 as soon as undici's Client is loaded, and with it Node's HTTP/2
 * implementation: 0.5 MiB of every sidecar's resident memory on Node 22 (docs/performance.md, "The bundle"). A
 * sidecar's pools never negotiate HTTP/2 (they do not set `allowH2`), so none of it runs. The module reads a few
 * constants from node:http2 when it loads (pseudo-header names and two nghttp2 error codes, all fixed by the HTTP/2
 * RFC and nghttp2) and calls `http2.connect()` when it opens an HTTP/2 session. The rewrite gives it those constants,
 * taken from this Node's node:http2 at build time, and a `connect()` that loads node:http2 on first use.
 * test/e2e/bundle.test.ts checks that a sidecar does not load node:http2.
 */
function lazyUndiciHttp2() {
  const eager = "http2 = require('node:http2')";
  return rewriteDependency({
    name: 'lazy-undici-http2',
    files: /node_modules[\\/]undici[\\/]lib[\\/]dispatcher[\\/]client-h2\.js$/,
    async rewrite(source, fail) {
      if (source.split(eager).length !== 2) fail(`expected one \`${eager}\``);
      const read = /const \{\s*constants: \{([^}]*)\}\s*\} = http2\b/.exec(source);
      if (!read) fail('expected the constants to be read as `const { constants: { ... } } = http2`');
      // Every mention of http2 in the code must be one of these, or the stand-in may lack what the module reads.
      const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
      const known = [/\blet http2\b/g, new RegExp(`\\b${eager.replace(/[()]/g, '\\$&')}`, 'g'), /\bhttp2 = \{ constants: \{\} \}/g, /\} = http2\b/g, /\bhttp2\.connect\(/g];
      const mentions = (text) => (text.match(/\bhttp2\b/g) ?? []).length;
      const accounted = known.reduce((n, pattern) => n + (code.match(pattern) ?? []).reduce((m, hit) => m + mentions(hit), 0), 0);
      if (accounted !== mentions(code)) fail('http2 is used in a way the rewrite does not cover (expected only its constants and http2.connect())');
      const { constants } = await import('node:http2');
      const names = read[1].split(',').map((name) => name.trim()).filter(Boolean);
      const missing = names.filter((name) => !(name in constants));
      if (missing.length > 0) fail(`node:http2 has no ${missing.join(', ')}`);
      const values = JSON.stringify(Object.fromEntries(names.map((name) => [name, constants[name]])));
      return source.replace(eager, () => `http2 = { constants: ${values}, connect: (...args) => require('node:http2').connect(...args) }`);
    },
  });
}

/**
 * undici 7 crashes the process when an upstream ends its connection while the response parser is paused for
 * backpressure; scripts/undici-finish-patch.cjs has the why and the change (nodejs/undici#5360, #5474).
 */
function undiciPausedParserFinish() {
  return rewriteDependency({
    name: 'undici-paused-parser-finish',
    files: /node_modules[\\/]undici[\\/]lib[\\/]dispatcher[\\/]client-h1\.js$/,
    rewrite: drainPausedParserOnFinish,
  });
}

/**
 * A plugin that rewrites dependency modules as they are bundled: `rewrite(source, fail)` returns the new source, or
 * calls `fail(why)` when the module no longer looks as expected, and the build fails instead of shipping the module
 * unchanged. So does a bundle that contains a file matching `files` without the rewrite, or none at all: a release
 * that renamed or moved the code would otherwise skip the rewrite without a word.
 */
function rewriteDependency({ name, files, rewrite }) {
  const rewritten = new Set();
  return {
    name,
    setup(b) {
      b.onLoad({ filter: files }, async ({ path }) => {
        const source = await readFile(path, 'utf8');
        const fail = (why) => {
          throw new Error(`${path}: ${why}; the package changed, so the rewrite ${name} in scripts/bundle.mjs needs a look`);
        };
        const contents = await rewrite(source, fail);
        rewritten.add(resolve(path));
        return { contents, loader: 'js' };
      });
      b.onEnd(({ metafile }) => {
        if (!metafile) return;
        const bundled = Object.keys(metafile.inputs).filter((input) => files.test(input));
        // The metafile names inputs relative to the working directory, with forward slashes.
        const missed = bundled.filter((input) => !rewritten.has(resolve(root, input)));
        if (bundled.length === 0 || missed.length > 0) {
          throw new Error(`${name}: ${bundled.length === 0 ? `no file matching ${files} was bundled` : `bundled without the rewrite: ${missed.join(', ')}`}`);
        }
      });
    },
  };
}

/** The packages with code in the bundle, each with its version, licence name and licence text. */
async function thirdPartyLicenses(meta) {
  const dirs = new Set();
  for (const output of Object.values(meta.outputs)) {
    for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
      const match = bytesInOutput > 0 && /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
      if (match) dirs.add(match[1]);
    }
  }
  const sections = new Map();
  for (const dir of [...dirs].sort()) {
    const pkg = JSON.parse(await readFile(`${root}${dir}/package.json`, 'utf8'));
    if (sections.has(`${pkg.name}@${pkg.version}`)) continue; // the same release nested under two packages
    const licenceFile = (await readdir(`${root}${dir}`)).find((f) => /^licen[cs]e/i.test(f));
    if (!licenceFile) throw new Error(`${pkg.name}: no LICENSE file to ship with the bundle`);
    const text = await readFile(`${root}${dir}/${licenceFile}`, 'utf8');
    sections.set(`${pkg.name}@${pkg.version}`, `${pkg.name}@${pkg.version} (${pkg.license})\n\n${text.trim()}\n`);
  }
  const rule = `\n${'-'.repeat(78)}\n\n`;
  return `oidc-sidecar's bundle (dist/bundle/) contains code from these packages, under these licences.\n${rule}${[...sections.values()].join(rule)}`;
}
