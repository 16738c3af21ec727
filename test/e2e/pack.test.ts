import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SCRIPT = resolve(import.meta.dirname, '../../scripts/pack-smoke.sh');

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
