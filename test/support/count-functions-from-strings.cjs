// Preloaded with `node --require` by test/e2e/bundle.test.ts: counts the calls of the Function constructor (which
// compiles a function from source text, as zod's parser JIT does), and of those the ones with a non-empty body, and
// prints both to stderr when the process exits ("functions-from-strings: 7, with a body: 6").
'use strict';
let calls = 0;
let withBody = 0;
const count = (args) => {
  calls++;
  if (args.length > 0 && String(args[args.length - 1]).trim() !== '') withBody++;
};
globalThis.Function = new Proxy(Function, {
  construct(target, args, newTarget) {
    count(args);
    return Reflect.construct(target, args, newTarget);
  },
  apply(target, self, args) {
    count(args);
    return Reflect.apply(target, self, args);
  },
});
process.on('exit', () => process.stderr.write(`\nfunctions-from-strings: ${calls}, with a body: ${withBody}\n`));
