import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * undici 7 asserts, and takes the process down, when a connection ends while the response parser is paused for
 * backpressure (nodejs/undici#5360); the bundle carries the fix (scripts/undici-finish-patch.cjs). A handler pauses
 * on the body's last bytes, so the parser is paused when the server's FIN or RST arrives: every time, not by luck of
 * timing. Run in a child process, with undici from node_modules as it is and with the change the bundle makes.
 */
const SCENARIO = `
const net = require('node:net');
const { Pool } = require('undici');
process.on('uncaughtException', (e) => { console.log('crashed: ' + e.message); process.exit(3); });
const [framing, ending] = process.argv.slice(1);
const body = 'a'.repeat(1000);
const server = net.createServer((s) => {
  s.on('error', () => {});
  s.once('data', () => {
    const length = framing === 'length' ? 'content-length: ' + body.length + '\\r\\n' : '';
    s.write('HTTP/1.1 200 OK\\r\\n' + length + 'connection: close\\r\\n\\r\\n' + body);
    setTimeout(() => (ending === 'reset' ? s.resetAndDestroy() : s.end()), 100);
  });
});
server.listen(0, '127.0.0.1', () => {
  const pool = new Pool('http://127.0.0.1:' + server.address().port);
  let got = 0;
  const done = (what) => { console.log(what + ' ' + got); pool.destroy().then(() => server.close()); };
  pool.dispatch({ method: 'GET', path: '/' }, {
    onRequestStart() {},
    onResponseStart() {},
    // Backpressure on the last bytes, never released: the client that stopped reading.
    onResponseData(controller, chunk) { got += chunk.length; if (got === body.length) controller.pause(); },
    onResponseEnd() { done('end'); },
    onResponseError(_controller, err) { done('error ' + (err.code || err.message)); },
  });
});
`;

function run(framing: 'length' | 'none', ending: 'close' | 'reset', patched: boolean): string {
  const preload = patched ? ['--require', resolve(import.meta.dirname, '../support/undici-finish-patch.cjs')] : [];
  const r = spawnSync(process.execPath, [...preload, '-e', SCENARIO, framing, ending], { cwd: resolve(import.meta.dirname, '../..'), encoding: 'utf8', timeout: 10_000 });
  return `${r.stdout.trim()}${r.stderr.trim() ? ` [stderr: ${r.stderr.trim().split('\n')[0]}]` : ''}`;
}

describe('undici with a paused parser when its connection ends (nodejs/undici#5360)', () => {
  it('as published: the process crashes on the assertion (the control)', () => {
    expect(run('none', 'close', false)).toMatch(/^crashed: /);
  });

  it('with the bundle\'s change: a body that ends with the connection completes on a close; a reset, or one with Content-Length, is settled; no crash', () => {
    expect(run('none', 'close', true)).toBe('end 1000');
    expect(run('length', 'close', true)).toBe('end 1000');
    // undici completes a close-delimited body on a reset (forward() cuts it then: upstream-reset.ts); a whole body
    // with Content-Length was complete before the reset.
    expect(run('none', 'reset', true)).toMatch(/^(end|error \w+) 1000$/);
    expect(run('length', 'reset', true)).toBe('end 1000');
  });
});
