import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

/**
 * `npm run test:hard`: the slow evidence. The fuzz suites of `npm test` at
 * full volume (over a million cases in all, counted by the global setup),
 * the end-to-end fuzz at volume, and the load and resource tests in
 * test/hard. Override the volume with FUZZ_RUNS / FUZZ_E2E_RUNS, the total
 * the run must reach with FUZZ_MIN_TOTAL (0 to skip the check).
 */
const env = {
  FUZZ_RUNS: process.env.FUZZ_RUNS ?? '54000',
  FUZZ_E2E_RUNS: process.env.FUZZ_E2E_RUNS ?? '20000',
  FUZZ_MIN_TOTAL: process.env.FUZZ_MIN_TOTAL ?? '1000000',
  FUZZ_TALLY_DIR: process.env.FUZZ_TALLY_DIR ?? join(tmpdir(), `oidc-sidecar-fuzz-tally-${process.pid}`),
};
// The global setup runs in this process and reads the same values.
Object.assign(process.env, env);

export default defineConfig({
  test: {
    include: ['test/unit/fuzz-*.test.ts', 'test/e2e/attack-fuzz.test.ts', 'test/hard/**/*.test.ts'],
    globalSetup: ['test/support/temp-root.ts', 'test/hard/fuzz-tally.ts'],
    env,
    testTimeout: 600_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
  },
});
