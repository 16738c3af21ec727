import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawExchange } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { eventually } from './inbound-support.js';
import { metricsText, sample, send } from './outbound-support.js';

/**
 * A sidecar whose upstream is its own listener (a mistyped port in `inbound.target`, a route target that is the
 * outbound listener, an app naming the sidecar's own address with `unknownHosts: passthrough`) would forward a request
 * to itself until its pool ran out of connections, each level then waiting out the upstream timeout (30 s); a
 * WebSocket upgrade would open a new connection per level without bound. The listener knows the connections its own
 * side opened and answers a request on one of them 508 loop_detected. If it did not, these requests would hang past
 * the test's timeout.
 */
let idp: TestIdp;
let app: UpstreamApp;
/** Both halves: the outbound side can reach its own inbound listener (a service calling itself) and its own outbound one. */
let both: SidecarProcess;
/** Inbound only, its target its own listener. */
let selfTarget: SidecarProcess;

const hostPort = (url: string) => new URL(url).host;
const websocketHandshake = (target: string, host: string, extra = '') =>
  `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`;

/** Rewrites the config with the bound addresses pinned (so the targets below can name them) and reloads it. */
async function reloadWith(sidecar: SidecarProcess, config: Record<string, any>): Promise<void> {
  const reloads = sidecar.logs.filter((l) => l.event === 'config_reloaded').length;
  sidecar.rewriteConfig(config);
  sidecar.signal('SIGHUP');
  await eventually(() => sidecar.logs.filter((l) => l.event === 'config_reloaded').length > reloads, 15_000, 'config_reloaded');
}

beforeAll(async () => {
  idp = await startIdp();
  app = await startUpstream();
  const inbound = { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] };
  const tokenSource = { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' };
  const base = { service: 'orders', lifecycle: { watchConfig: false } };
  both = await startSidecar({ ...base, inbound, outbound: { tokenSource, unknownHosts: 'passthrough', routes: [] } });
  await reloadWith(both, {
    ...base,
    inbound: { ...inbound, listen: hostPort(both.inbound!) },
    outbound: {
      listen: hostPort(both.outbound!),
      tokenSource,
      unknownHosts: 'passthrough',
      routes: [
        { host: 'orders', target: both.inbound!, audience: 'orders' },
        { host: 'loop', target: both.outbound!, audience: 'orders' },
      ],
    },
  });
  selfTarget = await startSidecar({ ...base, inbound });
  await reloadWith(selfTarget, { ...base, inbound: { ...inbound, target: selfTarget.inbound!, listen: hostPort(selfTarget.inbound!) } });
});

afterAll(async () => {
  await Promise.all([both, selfTarget].filter(Boolean).map((s) => s.stop()));
  await app?.close();
  await idp?.close();
});

describe('outbound', () => {
  it('answers 508 loop_detected when a passthrough target is its own listener, and logs and counts it', async () => {
    const before = both.logs.length;
    const r = await send(both.outbound!, { target: `${both.outbound}/api/x` });
    expect(r.status).toBe(508);
    expect(r.json()).toMatchObject({ reason: 'loop_detected' });
    const logged = await both.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'loop_detected' && both.logs.indexOf(l) >= before);
    expect(logged).toMatchObject({ route: 'none', method: 'GET', peer: '127.0.0.1' });
    const metrics = await metricsText(both.admin);
    expect(sample(metrics, 'oidc_sidecar_outbound_requests_total', { route: 'none', status: 'loop_detected' })).toBeGreaterThanOrEqual(1);
    // The outer level relayed the answer it got, as from any upstream.
    expect(sample(metrics, 'oidc_sidecar_outbound_requests_total', { route: 'passthrough', status: '508' })).toBeGreaterThanOrEqual(1);
  });

  it('answers 508 when a route target is its own outbound listener', async () => {
    const r = await send(both.outbound!, { target: '/api/x', host: 'loop' });
    expect(r.status).toBe(508);
    expect(r.json()).toMatchObject({ reason: 'loop_detected' });
  });

  it('answers a WebSocket upgrade that loops back 508 too (each level would otherwise open a new connection)', async () => {
    const ex = await rawExchange(both.outbound!, websocketHandshake(`${both.outbound}/ws`, hostPort(both.outbound!)));
    expect(ex.responses[0]?.status).toBe(508);
    expect(ex.responses[0]?.body).toContain('loop_detected');
  });

  it('still lets the service call itself through its own inbound listener: that is a hop, not a loop', async () => {
    const seen = app.seen.length;
    const r = await send(both.outbound!, { target: '/api/self', host: 'orders' });
    expect(r.status).toBe(200);
    expect(app.seen.slice(seen).map((s) => s.url)).toEqual(['/api/self']);
    expect(app.seen.at(-1)!.headers['x-peer-sub']).toBe('orders');
  });
});

describe('inbound', () => {
  it('answers 508 loop_detected when inbound.target is its own listener, after verifying only the first time', async () => {
    const token = await idp.getToken('orders', 'orders');
    const r = await send(selfTarget.inbound!, { target: '/api/x', headers: { authorization: `Bearer ${token}` } });
    expect(r.status).toBe(508);
    expect(r.json()).toMatchObject({ reason: 'loop_detected' });
    const metrics = await metricsText(selfTarget.admin);
    expect(sample(metrics, 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'loop_detected' })).toBe(1);
    expect(sample(metrics, 'oidc_sidecar_inbound_requests_total', { decision: 'allow', reason: 'ok' })).toBe(1);
  });

  it('answers a looping WebSocket upgrade 508', async () => {
    const token = await idp.getToken('orders', 'orders');
    const ex = await rawExchange(selfTarget.inbound!, websocketHandshake('/ws', 'orders', `Authorization: Bearer ${token}\r\n`));
    expect(ex.responses[0]?.status).toBe(508);
    expect(ex.responses[0]?.body).toContain('loop_detected');
  });

  it('a caller without a token is refused as ever: the loop check comes only for connections the sidecar opened', async () => {
    const r = await send(selfTarget.inbound!, { target: '/api/x' });
    expect(r.status).toBe(401);
    expect(r.json()).toMatchObject({ reason: 'missing_token' });
  });
});
