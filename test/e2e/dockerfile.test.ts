import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// There is no Docker engine in CI, so `docker build` cannot catch a Dockerfile that copies something the
// allow-list in .dockerignore keeps out of the build context. This reads both files instead.
const ROOT = resolve(import.meta.dirname, '../..');
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const ignoreRules = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'))
  .map((l) => ({ include: l.startsWith('!'), pattern: l.replace(/^!/, '').replace(/\/$/, '') }));

/** .dockerignore semantics for the patterns this repo uses (`*`, paths, directories): the last match wins. */
function inBuildContext(path: string): boolean {
  let included = true;
  for (const { include, pattern } of ignoreRules) {
    const matches = pattern === '*' || path === pattern || path.startsWith(`${pattern}/`);
    if (matches) included = include;
  }
  return included;
}

/** Sources of every `COPY` from the build context (not `COPY --from=<stage>`), e.g. `src`, `tsconfig.json`. */
const contextSources = dockerfile
  .split('\n')
  .filter((l) => /^COPY\s/.test(l) && !/--from=/.test(l))
  .flatMap((l) => l.replace(/^COPY\s+/, '').trim().split(/\s+/).slice(0, -1))
  .map((s) => s.replace(/^\.\//, '').replace(/\/$/, ''));

describe('Dockerfile and .dockerignore', () => {
  it('builds on an exact Node release, the one CI runs its Node 22 tests on', async () => {
    const image = /^ARG NODE_IMAGE=(\S+)$/m.exec(dockerfile)?.[1];
    const version = /^node:(\d+\.\d+\.\d+)-trixie-slim(?:@sha256:[0-9a-f]{64})?$/.exec(image ?? '')?.[1];
    expect(version, `${image}: a floating tag gives two builds of one commit different Nodes`).toBeDefined();
    const run = (major: string) =>
      promisify(execFile)('bash', [join(ROOT, 'scripts/test-on-node.sh'), major], { env: { ...process.env, TEST_ON_NODE_PRINT_PACKAGE: '1' } }).then((r) => r.stdout.trim());
    expect(await run(version!.split('.')[0]!)).toBe(`node-${process.platform}-${process.arch}@${version}`);
    expect(await run('24')).toBe(`node-${process.platform}-${process.arch}@24`);
  });

  it('copies only files that exist and that the build context lets through', () => {
    expect(contextSources).toEqual(expect.arrayContaining(['package.json', 'src', 'bin', 'config', 'scripts/bundle.mjs', 'LICENSE']));
    for (const source of contextSources) {
      expect(existsSync(join(ROOT, source)), `${source} exists`).toBe(true);
      expect(inBuildContext(source), `${source} is in the build context`).toBe(true);
    }
  });

  it('keeps the rest of the repository out of the build context', () => {
    for (const path of ['node_modules', 'dist', 'test', '.git', 'bench', 'scripts/pack-smoke.sh']) expect(inBuildContext(path), path).toBe(false);
  });

  it('ships the bundle the launcher runs, built in the build stage', () => {
    expect(dockerfile).toMatch(/^COPY --from=build \/src\/dist\/bundle \.\/dist\/bundle$/m);
    expect(readFileSync(join(ROOT, 'bin/oidc-sidecar.js'), 'utf8')).toContain("'../dist/bundle/main.js'");
  });

  it("starts the CLI with the runtime settings it sets, which Node accepts (some V8 flags are refused in NODE_OPTIONS), as the benchmark reads them", async () => {
    const run = promisify(execFile);
    // The benchmark's reader (bench/lib/image-runtime.js), so what `npm run bench` measures is what the image runs.
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', "import { imageRuntime } from './bench/lib/image-runtime.js'; console.log(JSON.stringify(imageRuntime('Dockerfile')));"], { cwd: ROOT });
    const image = JSON.parse(stdout) as { env: Record<string, string>; nodeFlags: string[] };
    expect(image.env.NODE_OPTIONS).toMatch(/--max-semi-space-size=\d+/);
    expect(image.nodeFlags).toContain('--no-concurrent-recompilation');
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", .*"\/opt\/oidc-sidecar\/bin\/oidc-sidecar\.js"\]$/m);
    const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const started = await run(process.execPath, [...image.nodeFlags, join(ROOT, 'bin/oidc-sidecar.js'), '--version'], { env: { ...process.env, ...image.env } });
    expect(started.stdout.trim()).toBe(version);
    expect(started.stderr).toBe('');
  });
});
