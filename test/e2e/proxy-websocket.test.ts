import { WebSocket } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { rawExchange } from '../unit/proxy-harness.js';
import { startWsEcho, type WsEcho } from '../unit/proxy-ws-echo.js';
import { eventually, metricsText, rawRequest, sample } from './inbound-support.js';

/**
 * WebSocket through the inbound sidecar as users run it (the built CLI): the
 * upgrade request is verified like any request against a real OpenID
 * provider, then tunnelled to a real WebSocket app with identity headers.
 */
describe('inbound: WebSocket upgrades are verified, then tunnelled', () => {
  let idp: TestIdp;
  let app: WsEcho;
  let sidecar: SidecarProcess;

  beforeAll(async () => {
    idp = await startIdp({
      clients: [
        { clientId: 'orders', clientSecret: 'orders-secret' },
        { clientId: 'intruder', clientSecret: 'intruder-secret' },
      ],
    });
    app = await startWsEcho();
    sidecar = await startSidecar({
      service: 'chat',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      inbound: {
        target: app.url,
        audience: 'chat',
        issuers: [{ issuer: idp.issuer }],
        rules: [{ match: { path: '/ws/**' }, allow: [{ sub: 'orders' }] }],
      },
    });
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
    await idp?.close();
  });

  const wsUrl = (path: string) => `${sidecar.inbound!.replace(/^http/, 'ws')}${path}`;

  it('tunnels an allowed WebSocket session; the app sees the verified identity, not the token', async () => {
    const token = await idp.getToken('orders', 'chat');
    const ws = new WebSocket(wsUrl('/ws/room'), { headers: { authorization: `Bearer ${token}`, 'x-peer-sub': 'forged' } } as never);
    const messages: string[] = [];
    ws.addEventListener('message', (e) => messages.push(String(e.data)));
    await new Promise((resolve, reject) => {
      ws.addEventListener('open', resolve);
      ws.addEventListener('error', reject);
    });
    ws.send('ping');
    await eventually(() => messages.length === 1, 10_000, 'echo');
    expect(messages).toEqual(['echo:ping']);
    const closed = new Promise<{ code: number; wasClean: boolean }>((r) => ws.addEventListener('close', (e) => r({ code: e.code, wasClean: e.wasClean })));
    ws.close(1000);
    expect(await closed).toEqual({ code: 1000, wasClean: true });

    const seen = app.seen.at(-1)!;
    expect(seen.url).toBe('/ws/room');
    expect(seen.headers['x-peer-sub']).toBe('orders');
    expect(seen.headers['x-peer-iss']).toBe(idp.issuer);
    expect(seen.headers.authorization).toBeUndefined();
    expect(sample(await metricsText(sidecar.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'allow', reason: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(sidecar.output()).not.toContain(token);
  });

  const upgradeHead = (path: string, extra = '') =>
    `GET ${path} HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==${extra}`;

  it('sends the app a Host when the caller\'s is named in Connection (hop-by-hop): the target\'s, as for plain requests (RFC 9112 §3.2)', async () => {
    const token = await idp.getToken('orders', 'chat');
    const before = app.seen.length;
    // A masked close frame right behind the handshake: the app answers it and ends the session.
    const close = Buffer.from([0x88, 0x80, 0, 0, 0, 0]);
    const head = upgradeHead('/ws/host', `\r\nAuthorization: Bearer ${token}`).replace('Connection: Upgrade', 'Connection: Upgrade, host');
    const answer = await rawExchange(Number(new URL(sidecar.inbound!).port), Buffer.concat([Buffer.from(`${head}\r\n\r\n`), close]));
    expect(answer).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(app.seen.slice(before).map((s) => [s.url, s.headers.host])).toEqual([['/ws/host', new URL(app.url).host]]);
  });

  it('refuses an upgrade without a token with 401 and never reaches the app', async () => {
    const before = app.seen.length;
    const res = await rawRequest(sidecar.inbound!, upgradeHead('/ws/room'));
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer error="invalid_token", error_description="missing_token"');
    expect(res.json()).toMatchObject({ reason: 'missing_token' });
    expect(app.seen.length).toBe(before);
  });

  it('refuses a token for another audience with 401 audience_mismatch', async () => {
    const token = await idp.getToken('orders', 'elsewhere');
    const res = await rawRequest(sidecar.inbound!, upgradeHead('/ws/room', `\r\nAuthorization: Bearer ${token}`));
    expect(res.status).toBe(401);
    expect(res.json()).toMatchObject({ reason: 'audience_mismatch' });
  });

  it('refuses a valid token the rules do not allow with 403 policy_denied', async () => {
    const before = app.seen.length;
    const token = await idp.getToken('intruder', 'chat');
    const res = await rawRequest(sidecar.inbound!, upgradeHead('/ws/room', `\r\nAuthorization: Bearer ${token}`));
    expect(res.status).toBe(403);
    expect(res.headers['www-authenticate']).toBe('Bearer error="insufficient_scope", error_description="policy_denied"');
    expect(app.seen.length).toBe(before);
    expect(sample(await metricsText(sidecar.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'deny', reason: 'policy_denied' })).toBeGreaterThanOrEqual(1);
  });
});
