import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { startSidecar } from '../support/sidecar.js';

const DIST = resolve(import.meta.dirname, '../../dist');

/** Runs an ES module snippet in a fresh Node process (nothing else loaded), as the sidecar's own process is. */
function runFresh(source: string, nodeArgs: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [...nodeArgs, '--input-type=module', '-e', source], { cwd: resolve(DIST, '..') }, (err, stdout, stderr) => {
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

  // undici's HTTP parser is WebAssembly. Set at run time, --liftoff-only alone kept it off TurboFan on Node 20 and 22
  // but not on Node 24; this checks the effect on whichever Node runs the tests (scripts/test-on-node.sh runs 22).
  it('keeps WebAssembly on the baseline compiler however hot it runs, and without the settings V8 would optimise it', async () => {
    // (module (func (export "f") (param i32) (result i32) local.get 0 i32.const 1 i32.add))
    const probe = (tune: boolean) => `
      ${tune ? `(await import(${JSON.stringify(`${DIST}/proxy/runtime.js`)})).tuneRuntimeForProxy();` : ''}
      const bytes = new Uint8Array([0,97,115,109,1,0,0,0,1,6,1,96,1,127,1,127,3,2,1,0,7,5,1,1,102,0,0,10,9,1,7,0,32,0,65,1,106,11]);
      const { f } = new WebAssembly.Instance(new WebAssembly.Module(bytes)).exports;
      let x = 0;
      const hot = () => { for (let i = 0; i < 3e6; i++) x = f(x) & 0xffff; };
      // Optimising happens in the background: give it up to 2 s (the tuned run always waits that long).
      const deadline = Date.now() + 2000;
      do {
        hot();
        await new Promise((r) => setTimeout(r, 50));
      } while (!%IsTurboFanFunction(f) && Date.now() < deadline);
      console.log(JSON.stringify({ liftoff: %IsLiftoffFunction(f), turbofan: %IsTurboFanFunction(f) }));
    `;
    const tuned = await runFresh(probe(true), ['--allow-natives-syntax']);
    expect(tuned.stderr).toBe('');
    expect(JSON.parse(tuned.stdout)).toEqual({ liftoff: true, turbofan: false });
    const untuned = await runFresh(probe(false), ['--allow-natives-syntax']);
    expect(JSON.parse(untuned.stdout)).toEqual({ liftoff: false, turbofan: true });
  });

  // Sparkplug (baseline code for every warm function) and Maglev (Node 24's default mid-tier compiler) only add code
  // and compile memory to a proxy whose hot path ends in TurboFan anyway (docs/performance.md, "Memory"). The tier is
  // read after every call, so a tier the function passes through is seen however briefly it lasts. V8 compiles
  // Sparkplug code in batches, and a lone hot function sometimes reached TurboFan before its batch was due; with
  // batching off, both probes see Sparkplug every time it is on.
  it('sends hot JavaScript from the interpreter straight to TurboFan, and without the settings V8 would use a tier in between', async () => {
    const probe = (tune: boolean) => `
      ${tune ? `(await import(${JSON.stringify(`${DIST}/proxy/runtime.js`)})).tuneRuntimeForProxy();` : ''}
      function f(a) { let s = 0; for (let i = 0; i < 50; i++) s += (a * i) ^ i; return s; }
      const between = new Set();
      let x = 0;
      const deadline = Date.now() + 5000;
      do {
        for (let i = 0; i < 200; i++) {
          x = f(x & 0xff);
          if (%ActiveTierIsSparkplug(f)) between.add('sparkplug');
          if (%ActiveTierIsMaglev(f)) between.add('maglev');
        }
        await new Promise((r) => setImmediate(r));
      } while (!%ActiveTierIsTurbofan(f) && Date.now() < deadline);
      console.log(JSON.stringify({ between: [...between], turbofan: %ActiveTierIsTurbofan(f) }));
    `;
    const flags = ['--allow-natives-syntax', '--no-baseline-batch-compilation'];
    const tuned = await runFresh(probe(true), flags);
    expect(tuned.stderr).toBe('');
    expect(JSON.parse(tuned.stdout)).toEqual({ between: [], turbofan: true });
    const untuned = await runFresh(probe(false), flags);
    expect(JSON.parse(untuned.stdout).between).not.toEqual([]);
  });

  // Linux only: /proc/<pid>/status counts the main thread's voluntary context switches, i.e. how often it slept
  // and was woken. A count, not a duration, so a busy machine does not make it fail.
  it.runIf(process.platform === 'linux')('lets an idle sidecar sleep: its event loop wakes ~10 times a second, not 100, and still reports its lag', async () => {
    // An env token source needs a JWT only for its expiry; nothing here verifies it.
    const token = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(new TextEncoder().encode('x'.repeat(32)));
    const sidecar = await startSidecar(
      {
        service: 'idle',
        lifecycle: { watchConfig: false },
        outbound: { tokenSource: { type: 'env', variable: 'IDLE_TOKEN' }, routes: [{ host: 'app', target: 'http://127.0.0.1:9', audience: 'app' }] },
      },
      { env: { IDLE_TOKEN: token } },
    );
    try {
      await sleep(500); // past startup's own work
      const wakes = () => Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${sidecar.child.pid}/status`, 'utf8'))![1]);
      const before = wakes();
      await sleep(3000);
      const perSecond = (wakes() - before) / 3;
      // prom-client's default (a 10 ms event-loop sampling timer) measured ~100 a second; the sidecar's 100 ms, 11-17.
      expect(perSecond).toBeLessThan(50);
      const metrics = await (await fetch(`${sidecar.admin}/metrics`)).text();
      const p50 = Number(/^nodejs_eventloop_lag_p50_seconds(?:\{[^}]*\})? (\S+)$/m.exec(metrics)?.[1]);
      // How late the loop's samples came (~0 when idle), not the 0.1 s between them.
      expect(p50).toBeGreaterThanOrEqual(0);
      expect(p50).toBeLessThan(0.1);
    } finally {
      await sidecar.stop();
    }
  });
});
