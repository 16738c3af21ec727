// Preloaded with `node --require` by test/e2e/bundle.test.ts: counts the Intl.Segmenter objects a process creates
// and prints the count to stderr when it exits, so a test can see whether a code path pulled in ICU's
// break-iteration data.
'use strict';
let created = 0;
const Original = Intl.Segmenter;
Intl.Segmenter = new Proxy(Original, {
  construct(target, args, newTarget) {
    created++;
    return Reflect.construct(target, args, newTarget);
  },
});
process.on('exit', () => process.stderr.write(`\nintl-segmenters-created: ${created}\n`));
