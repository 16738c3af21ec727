import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Vitest global setup: every temp file of the run goes under one directory
 * that is removed when the run ends. Tests and the sidecars they start make
 * their temp dirs with `os.tmpdir()` and never delete them one by one (a
 * config file must outlive the process that reads it); pointing TMPDIR here
 * keeps a reused CI machine's /tmp from filling up run after run.
 */
export default function setup(): () => void {
  const previous = process.env.TMPDIR;
  const root = mkdtempSync(join(tmpdir(), 'oidc-sidecar-tests-'));
  process.env.TMPDIR = root;
  return () => {
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
    rmSync(root, { recursive: true, force: true });
  };
}
