import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The repository's root. */
export const ROOT = resolve(import.meta.dirname, '../..');

/** The Markdown files under `dir` (relative to ROOT), recursively. */
function markdownUnder(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap((entry) => {
    const rel = `${dir}/${entry}`;
    if (statSync(join(ROOT, rel)).isDirectory()) return markdownUnder(rel);
    return entry.endsWith('.md') ? [rel] : [];
  });
}

/** Every Markdown document of the project a user reads, relative to ROOT. */
export const DOCS = ['README.md', 'SECURITY.md', ...markdownUnder('docs'), ...markdownUnder('examples'), ...markdownUnder('bench')];
