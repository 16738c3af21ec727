#!/usr/bin/env node
// Thin launcher: the CLI lives in the compiled dist/ so production needs no TypeScript runtime.
import { main } from '../dist/cli.js';

main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => {
    process.stderr.write(`oidc-sidecar: ${err && err.message ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
