import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rawExchange, startFaultyFront, type FaultyFront } from '../support/attacks.js';
import { selfSignedCert } from '../support/certs.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { signToken, testKeyPair } from '../support/tokens.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { eventually } from './inbound-support.js';

/**
 * A reload must not cost what an IdP outage would otherwise be survived with:
 * the last good keys (for what is left of maxStaleSeconds) and the outbound
 * tokens that are still valid carry over to the new config's components.
 */
let idp: TestIdp;
let app: UpstreamApp;
let sidecar: SidecarProcess | undefined;

beforeAll(async () => {
  idp = await startIdp({ accessTokenTtlSeconds: 600 });
  app = await startUpstream();
});
afterAll(async () => {
  await app.close();
  await idp.close();
});
afterEach(async () => {
  idp.setDown(false);
  await sidecar?.stop();
  sidecar = undefined;
});

/** One sidecar with both halves: its outbound calls its own inbound, which forwards to the app. */
function selfHopConfig(level = 'info', source: Record<string, unknown> = {}) {
  return {
    service: 'orders',
    log: { level },
    lifecycle: { watchConfig: false },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], jwks: { cooldownSeconds: 1 } },
    outbound: {
      tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'orders', clientSecret: 'orders-secret', ...source },
      routes: [] as Array<Record<string, unknown>>,
    },
  };
}

async function startSelfHop(level = 'info', source: Record<string, unknown> = {}) {
  // The route must point at the inbound port, which is only known after start: start, then reload with the route.
  const first = selfHopConfig(level, source);
  const s = await startSidecar(first);
  const withRoute = selfHopConfig(level, source);
  withRoute.outbound.routes = [{ host: 'orders.local', target: s.inbound, audience: 'orders' }];
  withRoute.inbound = { ...withRoute.inbound, listen: new URL(s.inbound!).host } as typeof withRoute.inbound;
  s.rewriteConfig(withRoute);
  s.signal('SIGHUP');
  await s.waitForLog((l) => l.event === 'config_reloaded');
  await s.waitReady();
  return { sidecar: s, config: withRoute };
}

/** Origin-form with a Host naming the peer, as an app addressing its sidecar directly does (fetch cannot set Host). */
async function callThroughOutbound(s: SidecarProcess): Promise<{ status: number; body: any }> {
  const r = await request(`${s.outbound}/orders-api`, { headers: { host: 'orders.local' } });
  const text = await r.body.text();
  return { status: r.statusCode, body: text ? JSON.parse(text) : undefined };
}

describe('reload during an IdP outage', () => {
  it('keeps the last good keys and the valid outbound token: calls keep passing, /readyz stays 200, nothing is refetched', async () => {
    const started = await startSelfHop();
    sidecar = started.sidecar;
    expect((await callThroughOutbound(sidecar)).status).toBe(200);
    const tokenRequests = idp.counts.token;

    idp.setDown('503');
    expect((await callThroughOutbound(sidecar)).status).toBe(200);

    const before = sidecar.logs.length;
    sidecar.rewriteConfig({ ...started.config, inbound: { ...started.config.inbound, clockSkewSeconds: 20 } });
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' && sidecar!.logs.indexOf(l) >= before);
    const after = sidecar.logs.slice(before);
    expect(after.some((l) => l.event === 'jwks_handed_over')).toBe(true);
    expect(after.some((l) => l.event === 'token_handed_over')).toBe(true);

    const r = await callThroughOutbound(sidecar);
    expect(r.status).toBe(200);
    expect(r.body.headers['x-peer-sub']).toBe('orders');
    expect((await fetch(`${sidecar.admin}/readyz`)).status).toBe(200);
    expect(idp.counts.token).toBe(tokenRequests);
  });

  it('an issuer whose key source the reload changes (here its algorithms) starts without keys: 503 keys_unavailable until the IdP is back', async () => {
    // What SECURITY.md says starts without keys: the handover is keyed by issuer, jwksUri, algorithms and caFile path.
    const config = { service: 'orders', log: { level: 'info' }, lifecycle: { watchConfig: false }, inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] } };
    sidecar = await startSidecar(config);
    const token = await idp.getToken('orders', 'orders');
    const call = () => fetch(`${sidecar!.inbound}/key-source-changed`, { headers: { authorization: `Bearer ${token}` } });
    expect((await call()).status).toBe(200);

    idp.setDown('503');
    const before = sidecar.logs.length;
    sidecar.rewriteConfig({ ...config, inbound: { ...config.inbound, issuers: [{ issuer: idp.issuer, algorithms: ['RS256'] }] } });
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' && sidecar!.logs.indexOf(l) >= before);
    expect(sidecar.logs.slice(before).filter((l) => l.event === 'jwks_handed_over')).toEqual([]);
    const down = await call();
    expect(down.status).toBe(503);
    expect(await down.json()).toMatchObject({ reason: 'keys_unavailable' });
    expect((await fetch(`${sidecar.admin}/readyz`)).status).toBe(503);

    idp.setDown(false);
    await eventually(async () => (await call()).status === 200, 15_000, 'the token to pass once the IdP is back');
  });

  it('an unknown kid while the JWKS cannot be fetched is 503 keys_unavailable, not a 401 for a token that may be good', async () => {
    sidecar = await startSidecar(selfHopConfig());
    const { privateKey } = await testKeyPair('RS256');
    const rotated = await signToken(
      { iss: idp.issuer, sub: 'orders', aud: 'orders', exp: Math.floor(Date.now() / 1000) + 300, iat: Math.floor(Date.now() / 1000) },
      { key: privateKey, kid: 'rotated-key-we-cannot-fetch', alg: 'RS256' },
    );
    const call = () => fetch(`${sidecar!.inbound}/x`, { headers: { authorization: `Bearer ${rotated}` } });

    // IdP up: the kid really is unknown after a refetch.
    const known = await call();
    expect(known.status).toBe(401);
    expect(await known.json()).toMatchObject({ reason: 'unknown_key' });

    idp.setDown('503');
    await new Promise((r) => setTimeout(r, 1100)); // past the 1 s unknown-kid cooldown
    const down = await call();
    expect(down.status).toBe(503);
    expect(await down.json()).toMatchObject({ reason: 'keys_unavailable' });
    // Within the cooldown no new fetch is made, and the answer still reflects the failed attempt.
    expect((await call()).status).toBe(503);
    expect(app.seen.filter((s) => s.url === '/x')).toHaveLength(0);
  });
});

describe('reload while a token is being requested', () => {
  let front: FaultyFront | undefined;
  afterEach(async () => {
    front?.release();
    await front?.close();
    front = undefined;
  });

  let shortIdp: TestIdp | undefined;
  afterEach(async () => {
    await shortIdp?.close();
    shortIdp = undefined;
  });

  /** The outbound config of these tests: its token requests go through `front`, with a 60 s request timeout. */
  const outboundConfig = (f: FaultyFront) => ({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    outbound: {
      // Long enough that a shutdown waiting for a held request would be cut by the test's SIGKILL (10 s).
      tokenRequestTimeoutSeconds: 60,
      tokenSource: { type: 'client_credentials', tokenEndpoint: `${f.url}/token`, clientId: 'orders', clientSecret: 'orders-secret' },
      routes: [{ host: 'payments', target: app.url, audience: 'payments' }],
    },
  });

  /** The same token source and audience under a second host: the reload keeps the binding. */
  function reloadWithSecondRoute(s: SidecarProcess, config: ReturnType<typeof outboundConfig>) {
    s.rewriteConfig({ ...config, outbound: { ...config.outbound, routes: [...config.outbound.routes, { host: 'payments-v2', target: app.url, audience: 'payments' }] } });
    s.signal('SIGHUP');
  }

  /** A sidecar with 4 s tokens, the first fetched, reloaded while its renewal is held at the IdP, its old config retired. */
  async function reloadDuringHeldRenewal() {
    shortIdp = await startIdp({ accessTokenTtlSeconds: 4 });
    front = await startFaultyFront(shortIdp.issuer);
    const config = outboundConfig(front);
    const s = (sidecar = await startSidecar(config));
    front.mode = 'hold';
    await eventually(async () => front!.counts.hold === 1, 10_000, 'the renewal (at 50-60 % of 4 s) to reach the IdP');
    reloadWithSecondRoute(s, config);
    await s.waitForLog((l) => l.event === 'token_fetch_handed_over');
    await s.waitForLog((l) => l.event === 'config_reloaded');
    // The old config is closed as soon as nothing is in flight on it: give that a moment before the renewal returns.
    await new Promise((r) => setTimeout(r, 300));
    return { sidecar: s, front };
  }

  it('a renewal in flight when the reload retires the old config is waited for, not cut: one request, no failure, calls carry the renewed token', async () => {
    const { sidecar: s, front: f } = await reloadDuringHeldRenewal();
    f.release();
    await eventually(async () => s.logs.filter((l) => l.event === 'token_issued').length === 2, 10_000, 'the renewal to be issued');
    const r = await request(`${s.outbound}/after-renewal`, { headers: { host: 'payments-v2' } });
    expect(r.statusCode).toBe(200);
    const { headers } = (await r.body.json()) as { headers: Record<string, string> };
    const jti = JSON.parse(Buffer.from(headers.authorization!.split('.')[1]!, 'base64url').toString()).jti;
    expect(jti).toBe(s.logs.filter((l) => l.event === 'token_issued')[1]!.jti);
    expect(f.counts).toEqual({ pass: 1, hold: 1 });
    expect(s.logs.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
  });

  it('a SIGTERM while the new config waits for a renewal the old one sent drains and exits 0 without waiting out the request', async () => {
    const { sidecar: s } = await reloadDuringHeldRenewal();
    expect(await s.stop()).toBe(0);
    expect(s.logs.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
  });

  /** A sidecar whose token requests go through a front that holds them, reloaded while its first one is held. */
  async function startWithHeldToken() {
    front = await startFaultyFront(idp.issuer);
    front.mode = 'hold';
    const config = outboundConfig(front);
    const s = (sidecar = await startSidecar(config, { waitReady: false }));
    await eventually(async () => front!.counts.hold === 1, 10_000, 'the first token request to reach the IdP');
    reloadWithSecondRoute(s, config);
    await s.waitForLog((l) => l.event === 'token_fetch_handed_over');
    return { sidecar: s, front };
  }

  it('the new config waits for that request: the IdP is asked once, and the call through the new route carries its token', async () => {
    const { sidecar: s, front } = await startWithHeldToken();
    const tokenRequests = idp.counts.token;
    front.release();
    await s.waitForLog((l) => l.event === 'config_reloaded');
    await s.waitReady();
    const r = await request(`${s.outbound}/after-reload`, { headers: { host: 'payments-v2' } });
    expect(r.statusCode).toBe(200);
    const seen = (await r.body.json()) as { headers: Record<string, string> };
    expect(seen.headers.authorization).toMatch(/^Bearer ey/);
    expect(front.counts).toEqual({ hold: 1 });
    expect(idp.counts.token).toBe(tokenRequests + 1);
    expect(s.logs.filter((l) => l.event === 'token_issued')).toHaveLength(1);
    expect(s.logs.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
    const metrics = await (await fetch(`${s.admin}/metrics`)).text();
    expect(metrics).toMatch(/oidc_sidecar_token_requests_total\{[^}]*result="success"[^}]*\} 1\n/);
  });

  it('a call that waits for its token past the drain of the config it came under is 503 drain_timeout, not an upstream error of a peer never asked', async () => {
    front = await startFaultyFront(idp.issuer);
    front.mode = 'hold';
    const config = { ...outboundConfig(front), lifecycle: { watchConfig: false, drainTimeoutSeconds: 1 } };
    const s = (sidecar = await startSidecar(config, { waitReady: false }));
    await eventually(async () => front!.counts.hold === 1, 10_000, 'the first token request to reach the IdP');
    const call = request(`${s.outbound}/waited`, { headers: { host: 'payments' } });
    // A WebSocket handshake waiting for the same token, which would open a tunnel under the retired config.
    const upgrade = rawExchange(
      s.outbound!,
      'GET /ws HTTP/1.1\r\nHost: payments\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      { idleMs: 25_000 },
    );
    reloadWithSecondRoute(s, config);
    await s.waitForLog((l) => l.event === 'token_fetch_handed_over');
    // The new config's warm-up gives up on the held request after 10 s and swaps in; the old one's 1 s drain follows.
    await s.waitForLog((l) => l.event === 'config_reloaded', 20_000);
    await new Promise((r) => setTimeout(r, 2_500));
    front.release();
    const r = await call;
    expect(r.statusCode).toBe(503);
    expect(await r.body.json()).toEqual({ error: expect.stringContaining('drainTimeoutSeconds'), reason: 'drain_timeout' });
    const refusedUpgrade = (await upgrade).responses[0]!;
    expect([refusedUpgrade.status, refusedUpgrade.json().reason]).toEqual([503, 'drain_timeout']);
    expect(app.seen.filter((seen) => seen.url === '/waited' || seen.url === '/ws')).toEqual([]);
    await eventually(async () => s.logs.filter((l) => l.event === 'request_rejected').length === 2, 5_000, 'both refusals to be logged');
    expect(s.logs.filter((l) => l.event === 'request_rejected').map((l) => [l.route, l.reason, l.path]).sort()).toEqual([
      ['payments', 'drain_timeout', '/waited'],
      ['payments', 'drain_timeout', '/ws'],
    ]);
    expect(s.logs.filter((l) => l.event === 'upstream_error')).toEqual([]);
    const metrics = await (await fetch(`${s.admin}/metrics`)).text();
    expect(metrics).toMatch(/oidc_sidecar_outbound_requests_total\{route="payments",status="drain_timeout"\} 2\n/);
    expect(metrics).not.toMatch(/oidc_sidecar_upstream_errors_total\{[^}]*direction="outbound"[^}]*\} [1-9]/);
  });

  it('a reload waiting for it is given up when the config files change again: the newer config is the one applied', async () => {
    const { sidecar: s, front } = await startWithHeldToken();
    // The operator reverts the edit while the reload that read it still waits on the IdP.
    s.rewriteConfig({ ...outboundConfig(front), log: { level: 'debug' } });
    s.signal('SIGHUP');
    const abandoned = await s.waitForLog((l) => l.event === 'config_reload_abandoned');
    expect(abandoned).toMatchObject({ reason: 'superseded', trigger: 'SIGHUP' });
    expect(s.logs.filter((l) => l.event === 'config_reloaded')).toEqual([]);
    front.release();
    await s.waitForLog((l) => l.event === 'config_reloaded');
    await s.waitReady();
    // The route of the given-up config never served; the reverted config's does, with the one token asked for.
    expect((await request(`${s.outbound}/x`, { headers: { host: 'payments-v2' } })).statusCode).toBe(403);
    expect((await request(`${s.outbound}/x`, { headers: { host: 'payments' } })).statusCode).toBe(200);
    expect(front.counts).toEqual({ hold: 1 });
    expect(s.logs.filter((l) => l.event === 'config_reloaded')).toHaveLength(1);
  });

  it('a SIGTERM while the new config waits for it drains and exits 0 without waiting out the token request (60 s timeout)', async () => {
    const { sidecar: s } = await startWithHeldToken();
    expect(await s.stop()).toBe(0);
    expect(s.logs.some((l) => l.event === 'config_reload_abandoned')).toBe(true);
    expect(s.logs.some((l) => l.event === 'stopped')).toBe(true);
  });
});

describe('reload with a rotated CA bundle', () => {
  it('hands the valid outbound token over when only the content of the token source caFile changed: no new token request', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'reload-ca-'));
    try {
      const [before, rotated] = [selfSignedCert('idp-ca-before', dir), selfSignedCert('idp-ca-rotated', dir)];
      const caFile = join(dir, 'idp-ca.pem');
      copyFileSync(before.cert, caFile);
      // The stand-in IdP speaks http, so the bundle is loaded and checked but never used: the identity is what is under test.
      const started = await startSelfHop('info', { caFile });
      sidecar = started.sidecar;
      expect((await callThroughOutbound(sidecar)).status).toBe(200);
      const tokenRequests = idp.counts.token;

      copyFileSync(rotated.cert, caFile);
      const from = sidecar.logs.length;
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog((l) => l.event === 'config_reloaded' && sidecar!.logs.indexOf(l) >= from);
      expect(sidecar.logs.slice(from).filter((l) => l.event === 'token_handed_over')).toHaveLength(1);

      expect((await callThroughOutbound(sidecar)).status).toBe(200);
      expect(idp.counts.token).toBe(tokenRequests);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('reload applies the log level', () => {
  it('after a reload to level error, warn-level audit lines stop', async () => {
    sidecar = await startSidecar(selfHopConfig('info'));
    const bad = () => fetch(`${sidecar!.inbound}/x`, { headers: { authorization: 'Bearer not.a.jwt' } }).then((r) => r.status);
    expect(await bad()).toBe(401);
    await sidecar.waitForLog((l) => l.event === 'token_rejected');
    const rejectedBefore = sidecar.logs.filter((l) => l.event === 'token_rejected').length;

    sidecar.rewriteConfig(selfHopConfig('error'));
    sidecar.signal('SIGHUP');
    // config_reloaded is info, so it is silenced too: the reload counter says when it is done.
    const reloaded = /oidc_sidecar_config_reloads_total\{[^}]*result="success"[^}]*\} 1/;
    while (!reloaded.test(await (await fetch(`${sidecar.admin}/metrics`)).text())) await new Promise((r) => setTimeout(r, 50));
    for (let i = 0; i < 3; i++) expect(await bad()).toBe(401);
    // A negative: give the child's stdout a moment to deliver any line it would have written.
    await new Promise((r) => setTimeout(r, 300));
    expect(sidecar.logs.filter((l) => l.event === 'token_rejected')).toHaveLength(rejectedBefore);
  });
});
