import { readFileSync } from 'node:fs';

/**
 * This package's version, from its package.json. Found by walking up from this
 * module, because the module is not always at the same depth: `src/` under
 * vitest, `dist/` as tsc writes it, `dist/bundle/` as the CLI runs. (yargs'
 * own `.version()` looks for a package.json beside a `node_modules` folder in
 * its path; inside the bundle there is none, so it used the working
 * directory's.)
 */
export function packageVersion(from: URL = new URL('.', import.meta.url)): string {
  for (let dir = from; ; ) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'oidc-sidecar' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // no (readable) package.json here: keep walking up
    }
    const parent = new URL('..', dir);
    if (parent.href === dir.href) return 'unknown';
    dir = parent;
  }
}
