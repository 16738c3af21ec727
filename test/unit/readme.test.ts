import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { interpolateEnv } from '../../src/config/interpolate.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError, type ConfigIssue } from '../../src/errors.js';

const readme = readFileSync(join(import.meta.dirname, '../../README.md'), 'utf8');

/** Every ```yaml block of the README whose top level is a sidecar config (it names `service:`). */
function configExamples(): Array<{ line: number; text: string }> {
  const out: Array<{ line: number; text: string }> = [];
  const re = /```ya?ml\n([\s\S]*?)```/g;
  for (let m = re.exec(readme); m; m = re.exec(readme)) {
    if (/^service:/m.test(m[1]!)) out.push({ line: readme.slice(0, m.index).split('\n').length, text: m[1]! });
  }
  return out;
}

describe('README config examples', () => {
  const examples = configExamples();

  it('has examples to check', () => {
    expect(examples.length).toBeGreaterThanOrEqual(10);
  });

  it.each(examples.map((e) => [e.line, e.text] as const))('the example at README.md:%i is a valid config', (_line, text) => {
    // Placeholders with a default take it; the others get a value, as a user's environment would give them.
    const withDefault = new Set([...text.matchAll(/\$\{(\w+):-/g)].map((m) => m[1]));
    const env = new Proxy({} as NodeJS.ProcessEnv, {
      get: (_t, name) => (typeof name === 'string' && !withDefault.has(name) ? `value-of-${name.toLowerCase()}` : undefined),
    });
    const issues: ConfigIssue[] = [];
    const doc = interpolateEnv(parse(text), env, issues);
    expect(issues).toEqual([]);
    // The shape only, as `validate --skip-file-checks`: the files an example names (a caFile under /var/run/secrets) exist where it runs, not here.
    let problems: readonly ConfigIssue[] = [];
    try {
      parseConfig(doc, { readCaFilesFor: [] });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems = err.issues;
    }
    expect(problems).toEqual([]);
  });
});
