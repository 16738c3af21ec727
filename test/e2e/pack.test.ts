import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, posix, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const SCRIPT = join(ROOT, 'scripts/pack-smoke.sh');

// What `npm pack` would put in the tarball, listed without building or the registry (--ignore-scripts skips prepare).
describe('package contents', () => {
  it('carry the text of the licence package.json names (Apache-2.0 requires giving recipients a copy)', async () => {
    const { stdout } = await promisify(execFile)('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: ROOT });
    const files = (JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path);
    expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).license).toBe('Apache-2.0');
    expect(files).toContain('LICENSE');
    expect(readFileSync(join(ROOT, 'LICENSE'), 'utf8')).toMatch(/^\s*Apache License\s+Version 2\.0, January 2004/);
  }, 60_000);

  it('hold every file and section that their Markdown links to, so a link in an installed README leads somewhere', async () => {
    const { stdout } = await promisify(execFile)('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: ROOT });
    const files = new Set((JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path));
    const markdown = [...files].filter((f) => f.endsWith('.md'));
    expect(markdown).toEqual(expect.arrayContaining(['README.md', 'SECURITY.md']));
    const broken: string[] = [];
    let relativeLinks = 0;
    for (const file of markdown) {
      for (const [, target] of readFileSync(join(ROOT, file), 'utf8').matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z][a-z0-9+.-]*:/i.test(target!)) continue;
        relativeLinks++;
        const [path, anchor] = target!.split('#') as [string, string | undefined];
        const linked = path === '' ? file : posix.normalize(posix.join(posix.dirname(file), path));
        if (!files.has(linked)) broken.push(`${file}: ${target} (no ${linked} in the package)`);
        else if (anchor !== undefined && !headingSlugs(readFileSync(join(ROOT, linked), 'utf8')).has(anchor)) broken.push(`${file}: ${target} (no such heading)`);
      }
    }
    expect(relativeLinks).toBeGreaterThan(0);
    expect(broken).toEqual([]);
  }, 60_000);
});

/** The anchors GitHub and npm give a Markdown file's headings: lower case, punctuation dropped, spaces as `-`. */
function headingSlugs(markdown: string): Set<string> {
  const slugs = new Set<string>();
  for (const [, text] of markdown.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    slugs.add(text!.toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-'));
  }
  return slugs;
}

// Packs, installs from the npm registry and runs the demo: slow and networked,
// so it runs only when asked (CI sets OIDC_SIDECAR_PACK_TEST=1, or run the script).
describe.skipIf(process.env.OIDC_SIDECAR_PACK_TEST !== '1')('packed tarball', () => {
  it('installs with production dependencies only and its `oidc-sidecar demo` passes', async () => {
    const { code, output } = await new Promise<{ code: number | null; output: string }>((res) => {
      const child = spawn('bash', [SCRIPT], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (d) => (output += d));
      child.stderr.on('data', (d) => (output += d));
      child.once('exit', (c) => res({ code: c, output }));
    });
    expect(code, output).toBe(0);
    expect(output).toContain('All 8 outcomes were as expected.');
    expect(output).toContain('pack-smoke: installed package passed its demo');
  }, 300_000);
});
