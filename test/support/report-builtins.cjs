// Preloaded with `node --require` by test/e2e/bundle.test.ts: when the process exits, prints to stderr the names of
// Node's built-in modules it loaded ("builtins-loaded: http,https,..."), so a test can see what a code path pulled in.
'use strict';
process.on('exit', () => {
  const builtins = process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice('NativeModule '.length));
  process.stderr.write(`\nbuiltins-loaded: ${builtins.join(',')}\n`);
});
