import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DOCS, ROOT } from '../support/docs.js';

// Every relative link of the project's Markdown leads somewhere: the file exists and, for a `#fragment` into a
// Markdown file, so does the heading (as GitHub derives its anchor).

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchorsOf(file: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  let inFence = false;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.startsWith('```')) inFence = !inFence;
    const heading = inFence ? null : /^#{1,6} (.*)$/.exec(line);
    if (!heading) continue;
    const slug = heading[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    anchors.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return anchors;
}

/** The targets of `[text](target)` outside code, without URLs (scheme:...). */
function relativeLinks(file: string): string[] {
  const prose = readFileSync(join(ROOT, file), 'utf8')
    .replace(/```[\s\S]*?```/g, '')
    .replace(/`[^`\n]*`/g, '');
  return [...prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!).filter((t) => !/^[a-z][a-z0-9+.-]*:/i.test(t));
}

describe('relative links in the Markdown docs resolve', () => {
  it('finds the docs and their links', () => {
    expect(DOCS).toEqual(expect.arrayContaining(['README.md', 'SECURITY.md', 'docs/hardening.md', 'docs/performance.md', 'examples/docker-compose/README.md']));
    expect(DOCS.flatMap(relativeLinks).length).toBeGreaterThan(20);
  });

  it.each(DOCS)('%s', (file) => {
    const broken: string[] = [];
    for (const link of relativeLinks(file)) {
      const [path, fragment] = link.split('#') as [string, string | undefined];
      const target = path ? resolve(dirname(join(ROOT, file)), decodeURI(path)) : join(ROOT, file);
      if (!existsSync(target)) broken.push(`${link}: no ${relative(ROOT, target)}`);
      else if (fragment !== undefined && target.endsWith('.md') && !anchorsOf(target).has(fragment)) broken.push(`${link}: no heading #${fragment} in ${relative(ROOT, target)}`);
    }
    expect(broken).toEqual([]);
  });
});
