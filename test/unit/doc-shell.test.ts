import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DOCS, ROOT } from '../support/docs.js';

// The shell examples in the Markdown docs are pasted into terminals as they stand. A line continued with `\` only
// continues when the backslash is the last character: `\` then a space escapes the space, and a comment after it
// ends the command there, so the next line runs as a command of its own (`--clients: command not found`).

/** The lines of the ```sh / ```bash / ```shell blocks of a file, each with its line number. */
function shellLines(file: string): Array<{ n: number; line: string }> {
  const out: Array<{ n: number; line: string }> = [];
  let inShell: boolean | undefined;
  readFileSync(join(ROOT, file), 'utf8')
    .split('\n')
    .forEach((line, i) => {
      const fence = /^\s*```(\S*)/.exec(line);
      if (fence) inShell = inShell === undefined ? ['sh', 'bash', 'shell'].includes(fence[1]!) : undefined;
      else if (inShell) out.push({ n: i + 1, line });
    });
  return out;
}

describe('shell examples in the Markdown docs paste as written', () => {
  it('finds shell blocks', () => {
    expect(DOCS.flatMap(shellLines).length).toBeGreaterThan(50);
  });

  it.each(DOCS)('%s: a continuation backslash ends its line', (file) => {
    const broken = shellLines(file).filter(({ line }) => /\\[ \t]+(#.*)?$/.test(line)).map(({ n, line }) => `${file}:${n}: ${line.trim()}`);
    expect(broken).toEqual([]);
  });
});
