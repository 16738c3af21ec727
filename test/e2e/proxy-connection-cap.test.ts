import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { eventually, inboundSidecarConfig, metricsText, sample } from './inbound-support.js';

const MAX = 3;

/** A connection that says nothing: it holds its slot until the headers timeout closes it, or the test does. */
function idleConnection(listener: string): Promise<Socket> {
  const { hostname, port } = new URL(listener);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), hostname, () => resolve(s));
    s.on('error', reject);
  });
}

/** Connects and sends a whole request; resolves with what came back before the connection closed. */
function requestOnNewConnection(listener: string): Promise<string> {
  const { hostname, port } = new URL(listener);
  return new Promise((resolve) => {
    let text = '';
    const s = connect(Number(port), hostname, () => s.write('GET /public HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    s.on('data', (d) => (text += d.toString('latin1')));
    // A connection dropped as it is accepted may be reset before or after the request was written.
    s.on('error', () => {});
    s.on('close', () => resolve(text));
  });
}

/**
 * `limits.maxConnections` through the CLI: a listener holding its cap closes one connection more as it accepts it,
 * counts and logs that, and goes on serving the connections it holds; the admin listener is not capped by it, but by
 * a cap of its own, from the open-file limit.
 */
describe('limits.maxConnections', () => {
  let idp: TestIdp;
  let app: UpstreamApp;
  let sidecar: SidecarProcess;
  const held: Socket[] = [];
  const config = (maxConnections: number) =>
    inboundSidecarConfig(app, [idp], { rules: [{ match: { path: '/public' }, public: true }] }, { limits: { maxConnections, maxTunnels: MAX - 1, headersTimeoutSeconds: 60, requestTimeoutSeconds: 120 } });

  beforeAll(async () => {
    idp = await startIdp();
    app = await startUpstream();
    sidecar = await startSidecar(config(MAX));
  });
  afterAll(async () => {
    for (const s of held) s.destroy();
    await sidecar?.stop();
    await app?.close();
    await idp?.close();
  });

  it('closes a connection over the cap as it is accepted, counts and logs it, and serves again once one closes', async () => {
    // Nothing else has connected to the listener, so these take every place (a request before them could still be
    // closing on the sidecar's side, holding a place a moment longer).
    for (let i = 0; i < MAX; i++) held.push(await idleConnection(sidecar.inbound!));
    const before = app.seen.length;
    expect(await requestOnNewConnection(sidecar.inbound!)).toBe('');
    expect(app.seen.length).toBe(before);
    const metrics = await metricsText(sidecar.admin);
    expect(sample(metrics, 'oidc_sidecar_connections_dropped_total', { direction: 'inbound' })).toBeGreaterThanOrEqual(1);
    const line = await eventually(() => sidecar.logs.find((l) => l.event === 'connections_dropped'));
    expect(line).toMatchObject({ level: 'warn', side: 'inbound', maxConnections: MAX });
    expect(line!.count).toBeGreaterThanOrEqual(1);
    // A held connection is still served.
    held[0]!.write('GET /public HTTP/1.1\r\nHost: x\r\n\r\n');
    await eventually(() => app.seen.length === before + 1);
    // One closes: a new connection is accepted again.
    held.pop()!.destroy();
    await eventually(async () => (await requestOnNewConnection(sidecar.inbound!)).startsWith('HTTP/1.1 200'));
  });

  it('a reload that changes the cap applies it to the listener in place, and says so', async () => {
    sidecar.rewriteConfig(config(MAX + 1));
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded');
    expect(sidecar.logs.find((l) => l.event === 'max_connections_changed')).toMatchObject({ level: 'info', side: 'inbound', maxConnections: MAX + 1, previous: MAX });
    // The listener kept its address (no new `listening` line), and now takes one connection more before it drops.
    expect(sidecar.logs.filter((l) => l.event === 'listening' && l.side === 'inbound')).toHaveLength(1);
    while (held.length < MAX + 1) held.push(await idleConnection(sidecar.inbound!));
    // The last of them has a place: it is served (under the old cap it would have been closed as it was accepted).
    const before = app.seen.length;
    held.at(-1)!.write('GET /public HTTP/1.1\r\nHost: x\r\n\r\n');
    await eventually(() => app.seen.length === before + 1);
    const dropped = sample(await metricsText(sidecar.admin), 'oidc_sidecar_connections_dropped_total', { direction: 'inbound' });
    expect(await requestOnNewConnection(sidecar.inbound!)).toBe('');
    await eventually(async () => sample(await metricsText(sidecar.admin), 'oidc_sidecar_connections_dropped_total', { direction: 'inbound' }) === dropped + 1);
  });

  it.runIf(process.platform === 'linux')('the admin listener holds an eighth of the open-file limit: a flood is closed as accepted, counted and logged, and the traffic listener serves on', async () => {
    for (const s of held.splice(0)) s.destroy();
    // An open-file limit of 2048: the admin cap is 256 (its least), the inbound listener's MAX.
    const small = await startSidecar(config(MAX), { openFileLimit: 2048 });
    const admin: Socket[] = [];
    try {
      expect(small.logs.find((l) => l.event === 'listening' && l.side === 'admin')).toMatchObject({ maxConnections: 256 });
      // Each has begun a request: these keep their places until limits.headersTimeoutSeconds (60 s here). Any other
      // connection (the harness's keep-alive one from its readiness checks) is closed to make room when one is refused,
      // so connections are opened until 256 of these are held.
      const live = () => admin.filter((s) => !s.destroyed && !s.readableEnded).length;
      while (live() < 256) {
        const s = await idleConnection(small.admin);
        s.on('error', () => {});
        s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
        admin.push(s);
        // Connected is not yet accepted: the sidecar takes them from the kernel's queue in its own time.
        if (admin.length >= 256) await new Promise((r) => setTimeout(r, 300));
      }
      expect(await requestOnNewConnection(small.admin)).toBe('');
      // Without a cap of its own such a flood took every descriptor, and the inbound listener's callers were reset too.
      await eventually(async () => (await requestOnNewConnection(small.inbound!)).startsWith('HTTP/1.1 200'));
      admin.pop()!.destroy();
      await eventually(async () => sample(await metricsText(small.admin), 'oidc_sidecar_connections_dropped_total', { direction: 'admin' }) >= 1);
      const line = await eventually(() => small.logs.find((l) => l.event === 'connections_dropped' && l.side === 'admin'));
      expect(line).toMatchObject({ level: 'warn', maxConnections: 256 });
    } finally {
      for (const s of admin) s.destroy();
      await small.stop();
    }
  });

  it.runIf(process.platform === 'linux')('at its cap the admin listener closes the connections that have not begun a request, so a probe gets in next time', async () => {
    const small = await startSidecar(config(MAX), { openFileLimit: 2048 });
    const silent: Socket[] = [];
    try {
      for (let i = 0; i < 256; i++) silent.push(await idleConnection(small.admin));
      await new Promise((r) => setTimeout(r, 500));
      // One over: refused, and the silent ones make room.
      await requestOnNewConnection(small.admin);
      await eventually(async () => (await requestOnNewConnection(small.admin)).startsWith('HTTP/1.1 404'), 5000, 'a request to get in');
      expect(silent.filter((s) => !s.destroyed && !s.readableEnded).length).toBeLessThan(256);
    } finally {
      for (const s of silent) s.destroy();
      await small.stop();
    }
  });
});
