import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';

// test/support/temp-root.ts points TMPDIR at one directory per run and removes it when the run ends; every temp
// file of the suite, and of the sidecars it starts, must land there and not in the machine's /tmp.
describe('the test run keeps its temp files in a directory of its own', () => {
  it('in the test worker and in the processes it starts', () => {
    expect(basename(tmpdir())).toMatch(/^oidc-sidecar-tests-/);
    const child = execFileSync(process.execPath, ['-p', "require('node:os').tmpdir()"], { encoding: 'utf8' }).trim();
    expect(child).toBe(tmpdir());
  });
});
