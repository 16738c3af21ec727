import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/e2e/**/*.test.ts'],
    // One temp directory for the whole run, removed at its end (test/support/temp-root.ts).
    globalSetup: ['test/support/temp-root.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // e2e suites spawn sidecars and IdPs; two cores, so keep parallelism modest.
    pool: 'forks',
    maxWorkers: 2,
  },
});
