import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawExchange } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startWsEcho, type WsEcho } from '../unit/proxy-ws-echo.js';
import { eventually, metricsText, sample } from './inbound-support.js';

/**
 * `limits.maxTunnels` and `limits.tunnelIdleTimeoutSeconds` through the CLI, on both listeners: a WebSocket tunnel
 * through the inbound sidecar and a CONNECT tunnel through the outbound one. One tunnel per listener is allowed, and
 * a tunnel is closed after two seconds without a byte either way (the tests send one every 100 ms while it must
 * stay open).
 */
const IDLE_S = 2;
const limits = { maxTunnels: 1, tunnelIdleTimeoutSeconds: IDLE_S };

let idp: TestIdp;
let app: WsEcho;
let tcpPeer: { server: Server; port: number; sockets: Set<Socket> };
let inbound: SidecarProcess;
let outbound: SidecarProcess;

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 'orders-secret' }] });
  app = await startWsEcho();
  // A TCP echo peer for CONNECT tunnels.
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  tcpPeer = { server, port: (server.address() as AddressInfo).port, sockets };
  [inbound, outbound] = await Promise.all([
    startSidecar({
      service: 'chat',
      limits,
      inbound: { target: app.url, audience: 'chat', issuers: [{ issuer: idp.issuer }], rules: [{ match: { path: '/**' }, allow: [{ sub: 'orders' }] }] },
    }),
    startSidecar({
      service: 'orders',
      limits,
      outbound: {
        tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' },
        unknownHosts: 'passthrough',
        routes: [
          { host: 'chat', audience: 'chat' },
          { host: 'echo', target: app.url, audience: 'chat' },
        ],
      },
    }),
  ]);
});

afterAll(async () => {
  await Promise.all([inbound?.stop(), outbound?.stop()]);
  for (const s of tcpPeer?.sockets ?? []) s.destroy();
  await new Promise((r) => tcpPeer?.server.close(r));
  await app?.close();
  await idp?.close();
});

/**
 * Opens a socket to `base`, sends `head` and resolves once the answer's head has arrived. `stubborn`: a client that
 * never ends its side (allowHalfOpen) and goes on sending after the sidecar's end, so `closed` resolves only once the
 * sidecar has closed its socket outright (the next byte is answered with a reset), not merely ended its side.
 */
async function openTunnel(base: string, head: string, stubborn = false): Promise<{ socket: Socket; answer: string; closed: Promise<void> }> {
  const { hostname, port } = new URL(base);
  const socket = connect({ host: hostname, port: Number(port), allowHalfOpen: stubborn });
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  if (stubborn) {
    socket.once('end', () => {
      const timer = setInterval(() => socket.write('x'), 20);
      socket.once('close', () => clearInterval(timer));
    });
  }
  let answer = '';
  await new Promise<void>((resolve) => {
    socket.on('data', (d: Buffer) => {
      answer += d.toString('latin1');
      if (answer.includes('\r\n\r\n')) resolve();
    });
    socket.write(head);
  });
  return { socket, answer, closed };
}

/** Keeps a tunnel busy (one byte every 100 ms, well inside the idle limit) until the returned function is called. */
function keepBusy(socket: Socket, byte: Buffer): () => void {
  const timer = setInterval(() => socket.write(byte), 100);
  return () => clearInterval(timer);
}

describe('tunnel limits', () => {
  it('inbound: a handshake refused for want of a token gives its slot back at once, though its client never ends the connection', async () => {
    const token = await idp.getToken('orders', 'chat');
    const handshake = (auth: string) =>
      `GET /ws HTTP/1.1\r\nHost: chat\r\n${auth}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
    const refused = await openTunnel(inbound.inbound!, handshake(''), true);
    expect(refused.answer).toMatch(/^HTTP\/1\.1 401 /);
    // The sidecar closes the refused connection itself; left half-open, it would hold the only slot.
    await refused.closed;
    const allowed = await openTunnel(inbound.inbound!, handshake(`Authorization: Bearer ${token}\r\n`));
    expect(allowed.answer).toMatch(/^HTTP\/1\.1 101 /);
    allowed.socket.destroy();
    // Once the app's side is closed, the sidecar has torn the tunnel down and its slot is free for the next test.
    await eventually(() => app.open.size === 0, 5000, 'the tunnel to close');
  });

  it('inbound: refuses a second WebSocket tunnel with 503 too_many_tunnels, counted and logged; closes an idle one and says so', async () => {
    const token = await idp.getToken('orders', 'chat');
    const handshake = `GET /ws HTTP/1.1\r\nHost: chat\r\nAuthorization: Bearer ${token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
    const seenBefore = app.seen.length;
    const first = await openTunnel(inbound.inbound!, handshake);
    expect(first.answer).toMatch(/^HTTP\/1\.1 101 /);
    // A masked, empty ping frame: traffic the app reads and does not answer.
    const stop = keepBusy(first.socket, Buffer.from([0x89, 0x80, 0, 0, 0, 0]));
    try {
      const second = await rawExchange(inbound.inbound!, handshake);
      expect(second.responses[0]?.status).toBe(503);
      expect(second.raw).toContain('"reason":"too_many_tunnels"');
      expect(app.seen).toHaveLength(seenBefore + 1);
      // A request refused for good gets that refusal, not the 503 a retry could get past.
      const notGet = await rawExchange(inbound.inbound!, handshake.replace(/^GET /, 'POST '));
      expect(notGet.responses[0]?.status).toBe(400);
      expect(notGet.raw).toContain('"reason":"upgrade_not_supported"');
      await inbound.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'too_many_tunnels');
      expect(sample(await metricsText(inbound.admin), 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'too_many_tunnels' })).toBe(1);
      // Still open: a byte every 100 ms is not idle.
      expect(first.socket.destroyed).toBe(false);
    } finally {
      stop();
    }
    await first.closed;
    const line = await inbound.waitForLog((l) => l.event === 'tunnel_idle_timeout');
    expect(line).toMatchObject({ path: '/ws', idleSeconds: IDLE_S });
    expect(inbound.output()).not.toContain(token);

    // The slot is free again.
    const third = await openTunnel(inbound.inbound!, handshake);
    expect(third.answer).toMatch(/^HTTP\/1\.1 101 /);
    await third.closed;
  });

  it('outbound: the same for CONNECT tunnels to a passthrough host', async () => {
    const target = `127.0.0.1:${tcpPeer.port}`;
    const head = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`;
    const first = await openTunnel(outbound.outbound!, head);
    expect(first.answer).toMatch(/^HTTP\/1\.1 200 /);
    const stop = keepBusy(first.socket, Buffer.from('.'));
    try {
      const second = await rawExchange(outbound.outbound!, head);
      expect(second.responses[0]?.status).toBe(503);
      expect(second.raw).toContain('"reason":"too_many_tunnels"');
      const routed = await rawExchange(outbound.outbound!, 'CONNECT chat:80 HTTP/1.1\r\nHost: chat:80\r\n\r\n');
      expect(routed.responses[0]?.status).toBe(405);
      expect(routed.raw).toContain('"reason":"connect_not_supported"');
      await outbound.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'too_many_tunnels');
      expect(sample(await metricsText(outbound.admin), 'oidc_sidecar_outbound_requests_total', { route: 'none', status: 'too_many_tunnels' })).toBe(1);
      expect(tcpPeer.sockets.size).toBe(1);
    } finally {
      stop();
    }
    await first.closed;
    const line = await outbound.waitForLog((l) => l.event === 'tunnel_idle_timeout');
    expect(line).toMatchObject({ route: 'passthrough', target, idleSeconds: IDLE_S });
    await eventually(() => tcpPeer.sockets.size === 0, 5000, 'the peer\'s socket to close');

    const third = await openTunnel(outbound.outbound!, head);
    expect(third.answer).toMatch(/^HTTP\/1\.1 200 /);
    await third.closed;
  });

  it('outbound: a WebSocket handshake to a routed host refused for want of a slot is counted and logged under its route', async () => {
    const target = `127.0.0.1:${tcpPeer.port}`;
    const first = await openTunnel(outbound.outbound!, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    expect(first.answer).toMatch(/^HTTP\/1\.1 200 /);
    try {
      const ws = await rawExchange(
        outbound.outbound!,
        'GET http://chat/ws HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      expect(ws.responses[0]?.status).toBe(503);
      expect(ws.raw).toContain('"reason":"too_many_tunnels"');
      const line = await outbound.waitForLog((l) => l.event === 'request_rejected' && l.reason === 'too_many_tunnels' && l.path === 'http://chat/ws');
      expect(line.route).toBe('chat');
      const text = await metricsText(outbound.admin);
      expect(sample(text, 'oidc_sidecar_outbound_requests_total', { route: 'chat', status: 'too_many_tunnels' })).toBe(1);
    } finally {
      first.socket.destroy();
    }
    await eventually(() => tcpPeer.sockets.size === 0, 5000, 'the peer\'s socket to close');
  });

  it('outbound: an idle WebSocket tunnel to a routed host is closed and logged with its route and target', async () => {
    const tunnel = await openTunnel(
      outbound.outbound!,
      'GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    expect(tunnel.answer).toMatch(/^HTTP\/1\.1 101 /);
    await tunnel.closed;
    const line = await outbound.waitForLog((l) => l.event === 'tunnel_idle_timeout' && l.route === 'echo');
    expect(line).toMatchObject({ route: 'echo', target: new URL(app.url).origin, idleSeconds: IDLE_S });
  });
});
