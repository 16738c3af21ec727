import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const DIST = resolve(import.meta.dirname, '../../dist');

/** Runs an ES module snippet in a fresh Node process (nothing else loaded), as the sidecar's own process is. */
function runFresh(source: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, ['--input-type=module', '-e', source], { cwd: resolve(DIST, '..') }, (err, stdout, stderr) => {
      done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('runtime footprint choices (docs/performance.md)', () => {
  it("loads undici's pools without the package entry point, and the pools still speak undici's full API", async () => {
    const r = await runFresh(`
      import { createRequire } from 'node:module';
      import { createServer } from 'node:http';
      const { Pool, Agent } = await import(${JSON.stringify(`${DIST}/proxy/undici-core.js`)});
      const server = createServer((req, res) => res.end('pong ' + req.url));
      await new Promise((r) => server.listen(0, '127.0.0.1', r));
      const origin = 'http://127.0.0.1:' + server.address().port;
      const pool = new Pool(origin);
      const agent = new Agent();
      const viaPool = await (await pool.request({ path: '/a', method: 'GET' })).body.text();
      const viaAgent = await (await agent.request({ origin, path: '/b', method: 'GET' })).body.text();
      const api = ['request', 'stream', 'pipeline', 'upgrade', 'connect', 'dispatch'].map((m) => typeof pool[m]);
      const loaded = Object.keys(createRequire(import.meta.url).cache);
      console.log(JSON.stringify({ viaPool, viaAgent, api, entryLoaded: loaded.some((k) => /undici[\\\\/]index\\.js$/.test(k)), fetchLoaded: loaded.some((k) => /undici[\\\\/]lib[\\\\/]web[\\\\/]fetch/.test(k)) }));
      await pool.close(); await agent.close(); server.close();
    `);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({
      viaPool: 'pong /a',
      viaAgent: 'pong /b',
      api: ['function', 'function', 'function', 'function', 'function', 'function'],
      entryLoaded: false,
      fetchLoaded: false,
    });
  });

  it('applies its V8 settings on this Node without complaint (a renamed flag would print "unrecognized flag")', async () => {
    const r = await runFresh(`
      const { tuneRuntimeForProxy } = await import(${JSON.stringify(`${DIST}/proxy/runtime.js`)});
      tuneRuntimeForProxy();
      console.log('tuned');
    `);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('tuned');
  });
});
