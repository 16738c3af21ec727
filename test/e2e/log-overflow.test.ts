import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { BIN, freePort, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { eventually, inboundSidecarConfig, metricsText, sample } from './inbound-support.js';

/**
 * A log consumer that stops reading (a stuck container log driver, a pipe nobody drains) must cost log lines, never
 * the data plane: the sidecar holds at most 4 MiB of lines for stdout (MAX_BUFFERED_LOG_BYTES in src/log.ts), drops
 * whole lines past that and counts them, and says how many once stdout takes lines again. Without the bound, every
 * refusal's warn line stayed in the heap until the process was killed.
 */
let idp: TestIdp;
let app: UpstreamApp;
let sidecar: SidecarProcess;

beforeAll(async () => {
  idp = await startIdp();
  app = await startUpstream();
  sidecar = await startSidecar(inboundSidecarConfig(app, [idp]));
});
afterAll(async () => {
  await sidecar?.stop();
  await app?.close();
  await idp?.close();
});

const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

/**
 * A token from an issuer the sidecar does not trust: refused without a network call or a signature check, and its
 * audit line carries every well-known claim at its cap (128 characters each) and a long path, about 1.4 KB a line,
 * so that a few thousand requests fill the bound.
 */
function untrustedToken(): string {
  const long = (c: string) => c.repeat(200);
  const claims = Object.fromEntries(['sub', 'aud', 'azp', 'client_id', 'jti'].map((k) => [k, long(k[0]!)]));
  return `${b64url({ alg: 'RS256', kid: 'k1' })}.${b64url({ iss: `https://attacker.example/${long('i')}`, ...claims, exp: 4102444800 })}.AAAA`;
}

/** Sends `count` requests, 16 at a time on keep-alive connections; the statuses and how many of each. */
async function flood(base: string, path: string, token: string, count: number): Promise<Record<number, number>> {
  const dispatcher = new Agent({ connections: 16, pipelining: 1 });
  const statuses: Record<number, number> = {};
  let sent = 0;
  const worker = async () => {
    while (sent < count) {
      sent++;
      const res = await request(`${base}${path}`, { headers: { authorization: `Bearer ${token}` }, dispatcher });
      await res.body.dump();
      statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  await dispatcher.close();
  return statuses;
}

describe('stdout that stops draining', () => {
  it('drops whole log lines past a bound, counts them, keeps answering, and says so once stdout drains', { timeout: 60_000 }, async () => {
    const stdout = sidecar.child.stdout!;
    // Everything stdout says from here on, to check it is whole JSON lines. The sidecar is idle (ready, nothing to
    // log), so the first chunk starts a line.
    let text = '';
    stdout.on('data', (c: Buffer) => (text += c.toString('utf8')));
    const token = untrustedToken();
    const path = `/orders/${'p'.repeat(300)}`;
    const rss = async () => sample(await metricsText(sidecar.admin), 'process_resident_memory_bytes', {});
    const droppedLines = async () => sample(await metricsText(sidecar.admin), 'oidc_sidecar_log_lines_dropped_total', {});
    // The same flood while stdout is read first, so that the heap has grown to what handling it takes.
    expect(await flood(sidecar.inbound!, path, token, 3000)).toEqual({ 401: 3000 });
    await eventually(() => text.split('"event":"token_rejected"').length > 3000, 15_000, 'the warm-up lines on stdout');
    text = '';

    // The pipe stops being read: once the kernel's buffer and the stream's own are full, the sidecar's writes wait.
    stdout.pause();
    // About 8.4 MB of lines, twice: the first flood fills the buffer, the second finds it full.
    const requests = 6000;
    expect(await flood(sidecar.inbound!, path, token, requests)).toEqual({ 401: requests });
    const [rssFull, droppedFull] = [await rss(), await droppedLines()];
    expect(droppedFull).toBeGreaterThan(0);
    expect(await flood(sidecar.inbound!, path, token, requests)).toEqual({ 401: requests });
    const [rssAfter, dropped] = [await rss(), await droppedLines()];
    // Nearly every line of the second flood was dropped (a line a few bytes shorter may still fit), and memory did
    // not grow with them: without the bound the second flood alone added 17-19 MiB, with it 3-4 MiB.
    expect(dropped - droppedFull).toBeGreaterThan(requests * 0.95);
    expect((rssAfter - rssFull) / 2 ** 20, 'MiB the second flood added to the RSS').toBeLessThan(10);

    // stdout is read again: what was held comes out, then one line says how many were lost.
    stdout.resume();
    const notice = await sidecar.waitForLog((l) => l.event === 'log_lines_dropped');
    expect(notice).toMatchObject({ level: 'warn', dropped });
    await eventually(() => text.includes('"event":"log_lines_dropped"') && text.endsWith('\n'), 15_000, 'the drop notice on stdout');

    // Lines were dropped whole: every line that came out is JSON, and with the dropped ones they make one per
    // refusal.
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.slice(0, -1).split('\n').map((l) => JSON.parse(l) as { event?: string });
    const rejected = lines.filter((l) => l.event === 'token_rejected').length;
    expect(rejected + dropped).toBe(2 * requests);
    expect(lines.filter((l) => l.event === 'log_lines_dropped')).toHaveLength(1);

    // Nothing is left held that would keep it from stopping cleanly.
    expect(await sidecar.stop()).toBe(0);
  });

  it('does not keep a stopping sidecar alive: what stdout never took is given up after the drain, and it exits 0', { timeout: 60_000 }, async () => {
    const stuck = await startSidecar(inboundSidecarConfig(app, [idp]));
    try {
      stuck.child.stdout!.pause();
      expect(await flood(stuck.inbound!, `/orders/${'p'.repeat(300)}`, untrustedToken(), 6000)).toEqual({ 401: 6000 });
      expect(await sample(await metricsText(stuck.admin), 'oidc_sidecar_log_lines_dropped_total', {})).toBeGreaterThan(0);
      // stop() sends SIGTERM and, ten seconds on, SIGKILL (exit code null). pino writes what it holds synchronously at
      // exit, and that write to a pipe nobody reads never returned.
      expect(await stuck.stop()).toBe(0);
    } finally {
      stuck.child.stdout!.resume();
      await stuck.stop();
    }
  });
});

describe.runIf(process.platform === 'linux')('a stdout that fails its writes (a log file on a full disk, the terminal of a closed session)', () => {
  it('costs log lines, not the data plane: requests are answered, one notice goes to stderr, and SIGTERM still ends it with 0', async () => {
    const [inboundPort, adminPort] = [await freePort(), await freePort()];
    const config = writeConfig(
      inboundSidecarConfig(app, [idp], { listen: `127.0.0.1:${inboundPort}`, rules: [{ match: { path: '/public' }, public: true }] }, { admin: { listen: `127.0.0.1:${adminPort}` } }),
    );
    // /dev/full: every write fails with ENOSPC. pino lets only EPIPE pass; any other write error used to end in an
    // exit whose synchronous flush retried the write for ever: no answers, and SIGTERM ignored.
    const full = openSync('/dev/full', 'w');
    const child = spawn(process.execPath, [BIN, 'run', '--config', config], { stdio: ['ignore', full, 'pipe'] });
    closeSync(full);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const get = (url: string) => fetch(url, { signal: AbortSignal.timeout(2000) }).then((r) => r.status, (e: Error) => e.name);
      await eventually(async () => (await get(`http://127.0.0.1:${adminPort}/healthz`)) === 200, 10_000, 'the sidecar to listen');
      // Each refusal is a warn line that fails to be written, again and again.
      for (let i = 0; i < 20; i++) expect(await get(`http://127.0.0.1:${inboundPort}/private`)).toBe(401);
      expect(await get(`http://127.0.0.1:${inboundPort}/public`)).toBe(200);
      expect(await get(`http://127.0.0.1:${adminPort}/healthz`)).toBe(200);
      expect(stderr.match(/^oidc-sidecar: cannot write the log to stdout \(ENOSPC\)/gm)).toHaveLength(1);
      child.kill('SIGTERM');
      expect(await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000, 'still running 10 s after SIGTERM'))])).toBe(0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  }, 40_000);
});
