// Preloaded with `node --require` by test/e2e/date-text.test.ts: counts the calls of the Date methods that make V8
// set up its time zone cache (and read the ICU time zone data in the `node` binary, src/time-text.ts): the methods
// that write a Date as text, and those that read it in local time. Prints what was called to stderr when the process
// exits ("date-text calls: 2 toISOString,toUTCString").
'use strict';
const names = [
  'toISOString', 'toUTCString', 'toString', 'toDateString', 'toTimeString', 'toLocaleString', 'toLocaleDateString',
  'toLocaleTimeString', 'getTimezoneOffset', 'getFullYear', 'getMonth', 'getDate', 'getDay', 'getHours',
  'getMinutes', 'getSeconds', 'getMilliseconds',
];
const called = [];
for (const name of names) {
  const original = Date.prototype[name];
  Object.defineProperty(Date.prototype, name, {
    ...Object.getOwnPropertyDescriptor(Date.prototype, name),
    value: {
      [name](...args) {
        called.push(name);
        return Reflect.apply(original, this, args);
      },
    }[name],
  });
}
process.on('exit', () => process.stderr.write(`\ndate-text calls: ${called.length} ${[...new Set(called)].join(',')}\n`));
