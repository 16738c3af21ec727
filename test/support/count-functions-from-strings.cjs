// Preloaded with `node --require` by test/e2e/bundle.test.ts: counts the functions a process compiles from source
// text with the Function constructor (as zod's parser JIT does) and prints the count to stderr when it exits.
'use strict';
let compiled = 0;
globalThis.Function = new Proxy(Function, {
  construct(target, args, newTarget) {
    compiled++;
    return Reflect.construct(target, args, newTarget);
  },
  apply(target, self, args) {
    compiled++;
    return Reflect.apply(target, self, args);
  },
});
process.on('exit', () => process.stderr.write(`\nfunctions-from-strings: ${compiled}\n`));
