// undici 7 crashes the process when an upstream closes or resets its connection while the HTTP/1 response parser is
// paused for backpressure (a client reading slowly; a body without Content-Length, or with `Connection: close`): the
// socket's 'end' or 'error' handler calls the parser's finish(), which asserts that it is not paused, and the
// AssertionError escapes every handler (nodejs/undici#5360). Any app, or any host an outbound sidecar passes calls
// through to, could end a sidecar that way. undici 8 fixes it (nodejs/undici#5474) but needs Node 22.19; this is the
// same change for undici 7, made to client-h1.js as the bundle is built (scripts/bundle.mjs): finish() resumes a
// paused parser and feeds it what the socket still holds, resuming across pauses (the response has already taken
// what it was given, so the bytes reach the client in order), and a body that ends with the connection is then
// completed by llhttp_finish(), or cut if the connection was reset (src/proxy/upstream-reset.ts).
// test/unit/undici-finish-patch.test.ts runs undici with and without it.
'use strict';

const ASSERTED = [
  'assert(!this.paused)',
  '',
  '    const { llhttp } = this',
  '',
  '    let ret',
  '',
  '    try {',
  '      currentParser = this',
  '      ret = llhttp.llhttp_finish(this.ptr)',
].join('\n');

const DRAINED = [
  'const { llhttp } = this',
  '    if (this.paused) {',
  '      let data',
  '      do {',
  '        llhttp.llhttp_resume(this.ptr)',
  '        this.paused = false',
  '        data = this.socket.read() || EMPTY_BUF',
  '        this.execute(data)',
  '      } while (this.paused && data.length > 0)',
  '      if (this.paused) {',
  '        llhttp.llhttp_resume(this.ptr)',
  '        this.paused = false',
  '      }',
  '    }',
  '    let ret',
  '    try {',
  '      currentParser = this',
  '      ret = llhttp.llhttp_finish(this.ptr)',
].join('\n');

/** client-h1.js with finish() draining a paused parser; `fail(why)` when the file no longer looks as expected. */
module.exports = function drainPausedParserOnFinish(source, fail) {
  const finish = source.indexOf('  finish () {');
  if (finish < 0 || source.indexOf('  finish () {', finish + 1) >= 0) fail('expected one `finish () {` method');
  if (source.split(ASSERTED).length !== 2 || source.indexOf(ASSERTED) < finish) fail('expected finish() to assert `!this.paused` before llhttp_finish()');
  if (!/\bconst EMPTY_BUF = Buffer\.alloc\(0\)/.test(source)) fail('expected EMPTY_BUF');
  return source.replace(ASSERTED, () => DRAINED);
};
