// Preload (`node --require`): applies scripts/undici-finish-patch.cjs to undici's client-h1.js as it is required, as
// the bundle build does, so a test can run undici from node_modules with and without the change.
'use strict';
const Module = require('node:module');
const { join } = require('node:path');
const drainPausedParserOnFinish = require('../../scripts/undici-finish-patch.cjs');

const compile = Module.prototype._compile;
Module.prototype._compile = function (content, filename) {
  if (filename.endsWith(join('undici', 'lib', 'dispatcher', 'client-h1.js'))) {
    content = drainPausedParserOnFinish(content, (why) => {
      throw new Error(`undici-finish-patch: ${why}`);
    });
  }
  return compile.call(this, content, filename);
};
