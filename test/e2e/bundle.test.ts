import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire, isBuiltin } from 'node:module';
import { resolve } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { runCli, runCliMain, startSidecar, writeConfig } from '../support/sidecar.js';

// The bundle the CLI runs from (scripts/bundle.mjs; `npm test` builds it first). esbuild's metafile says which
// source file contributed how many bytes to which output file, and what each output imports.
const ROOT = resolve(import.meta.dirname, '../..');

interface Output {
  entryPoint?: string;
  imports: { path: string; kind: string; external?: boolean }[];
  inputs: Record<string, { bytesInOutput: number }>;
}
const { inputs, outputs } = JSON.parse(readFileSync(resolve(ROOT, 'dist/bundle-meta.json'), 'utf8')) as {
  inputs: Record<string, unknown>;
  outputs: Record<string, Output>;
};

function outputOf(entryPoint: string): string {
  const found = Object.entries(outputs).find(([, o]) => o.entryPoint === entryPoint);
  if (!found) throw new Error(`no bundle output for ${entryPoint}`);
  return found[0];
}

/** Every output file loaded when `file` is imported: static imports only, as a running sidecar loads them. */
function staticallyLoaded(file: string, seen = new Set<string>()): Set<string> {
  seen.add(file);
  for (const i of outputs[file]!.imports) {
    if (i.kind === 'import-statement' && !i.external && !seen.has(i.path)) staticallyLoaded(i.path, seen);
  }
  return seen;
}

/** Source files with code in the given outputs. */
function sourcesIn(files: Iterable<string>): string[] {
  return [...files].flatMap((f) => Object.entries(outputs[f]!.inputs).filter(([, i]) => i.bytesInOutput > 0).map(([src]) => src));
}

/**
 * A NODE_OPTIONS entry that preloads a file of test/support/ into a process. Quoted: NODE_OPTIONS splits on spaces,
 * and the checkout's path may have some.
 */
function preload(how: '--require' | '--import', file: string): string {
  return `${how}="${resolve(import.meta.dirname, '../support', file)}"`;
}

const launcher = readFileSync(resolve(ROOT, 'bin/oidc-sidecar.js'), 'utf8');
// The launcher runs main.js: `run` with only config files stays there, every other command line loads cli.js.
const main = outputOf('dist/main.js');
const cli = outputOf('dist/cli.js');
const loadedBySidecar = staticallyLoaded(main);
const loadedByCli = staticallyLoaded(cli);
const sourcesLoadedBySidecar = sourcesIn(loadedBySidecar);
const sourcesLoadedByCli = sourcesIn(loadedByCli);

describe('the bundle the CLI runs from (docs/performance.md, "The bundle")', () => {
  it('is what the launcher runs', () => {
    expect(launcher).toContain(`'../${main}'`);
    expect(launcher).toContain(`'../${outputOf('dist/proxy/runtime.js')}'`);
    expect(launcher).toContain(`'../${outputOf('dist/startup-signals.js')}'`);
    // The launcher holds the stop signals in the module that `run` takes them from: one copy of it, or `run` would
    // read a copy that never saw them.
    const holders = Object.entries(outputs).filter(([, o]) => (o.inputs['dist/startup-signals.js']?.bytesInOutput ?? 0) > 0);
    expect(holders).toHaveLength(1);
    expect(staticallyLoaded(main).has(holders[0]![0])).toBe(true);
    // The full CLI is there for every other command line, loaded on demand.
    expect(outputs[main]!.imports).toContainEqual(expect.objectContaining({ path: cli, kind: 'dynamic-import' }));
  });

  it('runs a sidecar without the CLI parser: no yargs, cliui or string-width in what `run` loads', () => {
    expect(sourcesLoadedByCli.some((s) => s.includes('node_modules/yargs/'))).toBe(true);
    expect(sourcesLoadedBySidecar.filter((s) => /node_modules\/(yargs|yargs-parser|cliui|string-width|y18n)\//.test(s))).toEqual([]);
    expect(sourcesLoadedBySidecar).toContain('dist/commands/run.js');
  });

  it('a sidecar started as `run --config FILE` never loads the full CLI; any other command line does, and runs as before', async () => {
    const reportLoads = { NODE_OPTIONS: preload('--import', 'bundle-loads/register.mjs') };
    // As dist/bundle/<file>, the metafile's names.
    const loaded = (output: string) => [...output.matchAll(/^bundle-load: (\S+)$/gm)].map((m) => `dist/bundle/${m[1]}`);
    const config = { service: 'fast-path', admin: { listen: '127.0.0.1:0' }, outbound: { listen: '127.0.0.1:0', routes: [] } };
    const plain = await startSidecar(config, { env: reportLoads });
    await plain.stop();
    expect(loaded(plain.output())).toContain(main);
    expect(loaded(plain.output())).not.toContain(cli);
    // `-c=FILE` is a form only the full CLI takes (an empty overlay here), so this sidecar starts through yargs.
    const viaCli = await startSidecar(config, { env: reportLoads, extraArgs: [`-c=${writeConfig({})}`] });
    await viaCli.stop();
    expect(loaded(viaCli.output())).toContain(cli);
  });

  it("needs nothing from node_modules to run a sidecar: every import outside the bundle is one of Node's own modules", () => {
    const external = [...loadedBySidecar, ...loadedByCli].flatMap((f) => outputs[f]!.imports.filter((i) => i.external).map((i) => i.path));
    expect(external.length).toBeGreaterThan(0);
    // A `node:` name is Node's own even where this Node lacks it (undici probes for node:sqlite, Node 22.5+).
    expect(external.filter((p) => !p.startsWith('node:') && !isBuiltin(p))).toEqual([]);
  });

  describe("Node's built-in modules, loaded with require() rather than import (scripts/bundle.mjs)", () => {
    const reportBuiltins = preload('--require', 'report-builtins.cjs');
    // The whole line, up to its newline: the process has exited, but the end of its stderr may still be on the way.
    const builtinsLoaded = (stderr: string) => /^builtins-loaded: (.*)\n/m.exec(stderr)?.[1]?.split(',');
    // Node's own copy of undici (fetch, WebSocket), which the getters of `node:http` load when it is imported.
    const nodesUndici = 'internal/deps/undici/undici';

    it('no output imports a built-in module: each is required, so none of its getters runs unasked', () => {
      // Our own imports of node:http and node:tls, each turned into a module that requires it.
      expect(inputs).toHaveProperty(['builtin-by-require:node:http']);
      expect(inputs).toHaveProperty(['builtin-by-require:node:tls']);
      const imports = Object.values(outputs).flatMap((o) => o.imports.filter((i) => i.external && i.kind !== 'require-call').map((i) => i.path));
      expect(imports.filter((p) => p.startsWith('node:') || isBuiltin(p))).toEqual([]);
    });

    it("a sidecar loads neither Node's own undici (an import of node:http does, from Node 22.5), node:http2 nor node:zlib", async () => {
      // A sidecar loads all of its code at startup (the static graph above), whichever listeners its config has.
      const sidecar = await startSidecar(
        { service: 'builtins-check', admin: { listen: '127.0.0.1:0' }, outbound: { listen: '127.0.0.1:0', routes: [] } },
        { env: { NODE_OPTIONS: reportBuiltins } },
      );
      await sidecar.stop();
      // The process has exited, but its last stderr line may still be on the way.
      await vi.waitFor(() => expect(builtinsLoaded(sidecar.output())).toBeDefined());
      const loaded = builtinsLoaded(sidecar.output())!;
      expect(loaded).toContain('http');
      expect(loaded).toContain('tls');
      expect(loaded).not.toContain(nodesUndici);
      // Nor node:http2, which undici's HTTP/2 client loads only on its first connect() in the bundle (scripts/bundle.mjs).
      expect(loaded).not.toContain('http2');
      // Nor node:zlib, which prom-client's entry point loads for its Pushgateway client (src/admin/prom-client-core.ts).
      expect(loaded).not.toContain('zlib');
      // The control: an ESM import of node:http, in the same Node. Only a Node whose http has these getters (22.5 and
      // later) loads its undici then.
      const control = spawnSync(process.execPath, ['--input-type=module', '-e', "import 'node:http';"], {
        env: { ...process.env, NODE_OPTIONS: reportBuiltins },
        encoding: 'utf8',
      });
      expect(control.status).toBe(0);
      // The exports object as require() returns it: a module namespace would show the getter as a plain value.
      const httpExports = createRequire(import.meta.url)('node:http') as object;
      const httpHasWebSocketGetter = typeof Object.getOwnPropertyDescriptor(httpExports, 'WebSocket')?.get === 'function';
      expect(builtinsLoaded(control.stderr)?.includes(nodesUndici)).toBe(httpHasWebSocketGetter);
    });
  });

  it('a sidecar never calls the Function constructor: zod validates its config without its JIT (src/zod.ts)', async () => {
    const countFunctions = preload('--require', 'count-functions-from-strings.cjs');
    const counted = (stderr: string) => {
      const m = /^functions-from-strings: (\d+), with a body: (\d+)$/m.exec(stderr);
      return m ? { calls: Number(m[1]), withBody: Number(m[2]) } : undefined;
    };
    // No config watch: the reload is the SIGHUP's, of the file as a whole.
    const config = { service: 'jitless-check', lifecycle: { watchConfig: false }, admin: { listen: '127.0.0.1:0' }, outbound: { listen: '127.0.0.1:0', routes: [] } };
    const sidecar = await startSidecar(config, { env: { NODE_OPTIONS: countFunctions } });
    sidecar.rewriteConfig({ ...config, log: { level: 'debug' } });
    sidecar.signal('SIGHUP');
    // A reload validates the new config too.
    const reload = await sidecar.waitForLog((l) => typeof l.event === 'string' && l.event.startsWith('config_reload'));
    expect(reload.event).toBe('config_reloaded');
    await sidecar.stop();
    // The process has exited, but its last stderr line may still be on the way.
    await vi.waitFor(() => expect(counted(sidecar.output())).toBeDefined());
    expect(counted(sidecar.output())).toEqual({ calls: 0, withBody: 0 });
    // The control: zod as published compiles a parser for an object schema the first time it parses.
    const control = spawnSync(process.execPath, ['-e', "require('zod').object({ a: require('zod').string() }).parse({ a: 'x' })"], {
      cwd: ROOT,
      env: { ...process.env, NODE_OPTIONS: countFunctions },
      encoding: 'utf8',
    });
    expect(control.status).toBe(0);
    expect(counted(control.stderr)?.withBody).toBeGreaterThan(0);
  });

  it('loads the dev issuer (oidc-provider) only when `demo` or `dev-issuer` asks for it', () => {
    expect([...sourcesLoadedBySidecar, ...sourcesLoadedByCli].filter((s) => s.startsWith('dist/dev/'))).toEqual([]);
    const everywhere = sourcesIn(Object.keys(outputs).filter((f) => f.endsWith('.js')));
    expect(everywhere).toContain('dist/dev/issuer.js');
    const importers = Object.entries(outputs).filter(([, o]) => o.imports.some((i) => i.path === 'oidc-provider'));
    expect(importers.length).toBeGreaterThan(0);
    for (const [file] of importers) expect(loadedByCli.has(file) || loadedBySidecar.has(file)).toBe(false);
  });

  it("leaves out what a sidecar never runs: zod's translations, undici's entry point, fetch(), WebSocket and caches, and prom-client's Pushgateway, Summary and cluster aggregator", () => {
    expect(sourcesLoadedBySidecar).toContain('node_modules/zod/v4/locales/en.js');
    expect(sourcesLoadedBySidecar).toContain('node_modules/undici/lib/dispatcher/pool.js');
    expect(sourcesLoadedBySidecar.filter((s) => /zod\/v4\/locales\/(?!en\.js)/.test(s))).toEqual([]);
    // Parts of lib/web/fetch/ stay: undici's HTTP/1.1 client requires its body helpers, lazily, for FormData bodies.
    const undiciLeftOut = /undici\/(index\.js|lib\/web\/(fetch\/index|websocket|eventsource|cache)|lib\/(cache|interceptor|mock)\/)/;
    expect([...sourcesLoadedBySidecar, ...sourcesLoadedByCli].filter((s) => undiciLeftOut.test(s))).toEqual([]);
    // Of prom-client, the registry, the three metric types and the process metrics (src/admin/prom-client-core.ts).
    expect(sourcesLoadedBySidecar).toContain('node_modules/prom-client/lib/histogram.js');
    const promClientLeftOut = /prom-client\/(index\.js|lib\/(pushgateway|summary|cluster)\.js)|node_modules\/(tdigest|bintrees)\//;
    expect([...sourcesLoadedBySidecar, ...sourcesLoadedByCli].filter((s) => promClientLeftOut.test(s))).toEqual([]);
  });

  it("names every package it contains, with that package's licence text, in THIRD-PARTY-LICENSES.txt", () => {
    const licences = readFileSync(resolve(ROOT, 'dist/bundle/THIRD-PARTY-LICENSES.txt'), 'utf8');
    const bundled = new Set(
      sourcesIn(Object.keys(outputs).filter((f) => f.endsWith('.js')))
        .map((src) => /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*node_modules\/)/.exec(src)?.[1])
        .filter((name): name is string => name !== undefined),
    );
    expect(bundled).toContain('zod');
    expect(bundled).toContain('undici');
    expect(bundled).not.toContain('oidc-provider');
    for (const name of bundled) expect(licences, name).toMatch(new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}@\\d\\S* \\(`, 'm'));
    expect(licences).toContain('Apache License'); // prom-client's full text, not just its name
  });

  describe("string-width's segmenter, created on first need instead of at load (scripts/bundle.mjs)", () => {
    const countSegmenters = preload('--require', 'count-intl-segmenters.cjs');
    const segmentersCreated = (stderr: string) => Number(/intl-segmenters-created: (\d+)/.exec(stderr)?.[1]);
    /** `oidc-sidecar <args>` run from tsc's output and the packages as published, without the bundle's rewrite. */
    const unbundled = (args: string[], nodeOptions = '') => runCliMain('./dist/cli.js', args, { cwd: ROOT, env: { NODE_OPTIONS: nodeOptions } });

    it('a command creates none (yargs renders the help of the command it runs, help asked for or not), nor does a sidecar', async () => {
      const config = writeConfig({ service: 'segmenter-check', outbound: { listen: '127.0.0.1:0', routes: [] } });
      const validate = await runCli(['validate', '--config', config], { env: { NODE_OPTIONS: countSegmenters } });
      expect(validate.code).toBe(0);
      expect(segmentersCreated(validate.stderr)).toBe(0);
      const sidecar = await startSidecar(
        { service: 'segmenter-check', admin: { listen: '127.0.0.1:0' }, outbound: { listen: '127.0.0.1:0', routes: [] } },
        { env: { NODE_OPTIONS: countSegmenters }, waitReady: false },
      );
      await sidecar.stop();
      // The process has exited, but its last stderr line may still be on the way.
      await vi.waitFor(() => expect(sidecar.output()).toContain('intl-segmenters-created:'));
      expect(segmentersCreated(sidecar.output())).toBe(0);
      // The control: the packages as published create theirs as soon as yargs is loaded.
      const control = await unbundled(['--version'], countSegmenters);
      expect(control.code).toBe(0);
      expect(segmentersCreated(control.stderr)).toBeGreaterThan(0);
    });

    it('renders every help text exactly as string-width as published does', async () => {
      const commands = [[], ['run'], ['validate'], ['schema'], ['token'], ['verify'], ['demo'], ['dev-issuer']];
      // runCli runs the launcher, so the bundle; NODE_OPTIONS cleared as for the unbundled run.
      const helps = await Promise.all(
        commands.map((args) => Promise.all([unbundled([...args, '--help']), runCli([...args, '--help'], { cwd: ROOT, env: { NODE_OPTIONS: '' } })])),
      );
      for (const [i, [expected, actual]] of helps.entries()) {
        expect(expected.code, commands[i]!.join(' ')).toBe(0);
        expect(expected.stdout.length, commands[i]!.join(' ')).toBeGreaterThan(200);
        expect(actual.code, commands[i]!.join(' ')).toBe(0);
        expect(actual.stdout, commands[i]!.join(' ')).toBe(expected.stdout);
      }
    });
  });
});
