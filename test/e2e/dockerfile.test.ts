import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
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
  it('copies only files that exist and that the build context lets through', () => {
    expect(contextSources).toEqual(expect.arrayContaining(['package.json', 'src', 'bin', 'config', 'scripts/bundle.mjs']));
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
    expect(readFileSync(join(ROOT, 'bin/oidc-sidecar.js'), 'utf8')).toContain("'../dist/bundle/cli.js'");
  });
});
