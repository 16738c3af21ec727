import { connect, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawExchange } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { closedPort } from '../unit/proxy-harness.js';
import { eventually } from './inbound-support.js';
import { metricsText, sample } from './outbound-support.js';

/**
 * The edges of the outbound side's tunnels (WebSocket upgrades and CONNECT), through the CLI: an upgrade that is not
 * HTTP/1.1, an upstream that answers 101 without naming a protocol, a CONNECT that loops back to the sidecar, one
 * that cannot connect, one the client half-closes, and an upgrade refused for want of a token.
 */
let idp: TestIdp;
let sidecar: SidecarProcess;
/** Raw TCP peer: answers each connection with whatever `answer` says for the bytes of its first chunk. */
let peer: { server: Server; port: number; sockets: Set<Socket>; answer: (request: string, socket: Socket) => void };

const GRACE_S = 1;
const handshake = (target: string, host: string, version = '1.1') =>
  `GET ${target} HTTP/${version}\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;

beforeAll(async () => {
  idp = await startIdp();
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('close', () => sockets.delete(s));
    s.once('data', (d) => peer.answer(d.toString('latin1'), s));
  });
  server.on('error', () => {});
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  peer = { server, port: (server.address() as AddressInfo).port, sockets, answer: () => {} };
  sidecar = await startSidecar({
    service: 'orders',
    limits: { upstreamTimeoutSeconds: GRACE_S },
    outbound: {
      tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'wrong-secret' },
      unknownHosts: 'passthrough',
      routes: [{ host: 'payments', target: `http://127.0.0.1:${peer.port}`, audience: 'payments' }],
    },
  }, { waitReady: false });
});

afterAll(async () => {
  await sidecar?.stop();
  for (const s of peer?.sockets ?? []) s.destroy();
  await new Promise((r) => peer?.server.close(r));
  await idp?.close();
});

describe('outbound tunnels at their edges', () => {
  it('refuses an upgrade over HTTP/1.0 (a server must ignore Upgrade there, RFC 9110 §7.8) before reaching the peer', async () => {
    const connections = peer.sockets.size;
    const ex = await rawExchange(sidecar.outbound!, handshake(`http://127.0.0.1:${peer.port}/ws`, `127.0.0.1:${peer.port}`, '1.0'));
    expect(ex.responses[0]?.status).toBe(400);
    expect(ex.responses[0]?.json().reason).toBe('upgrade_not_supported');
    expect(peer.sockets.size).toBe(connections);
  });

  it('answers 502 upstream_bad_response when the peer answers a handshake 101 without an Upgrade header', async () => {
    peer.answer = (_req, s) => s.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n');
    const ex = await rawExchange(sidecar.outbound!, handshake(`http://127.0.0.1:${peer.port}/ws`, `127.0.0.1:${peer.port}`));
    expect(ex.responses[0]?.status).toBe(502);
    expect(ex.responses[0]?.json().reason).toBe('upstream_bad_response');
  });

  it('relays a declined handshake whose body the peer cuts short with a reset, never an orderly close that reads as the whole body', async () => {
    /** Everything the sidecar sent, and whether the connection ended in a reset rather than an orderly close. */
    const exchange = (bytes: string) =>
      new Promise<{ text: string; reset: boolean }>((resolve) => {
        const s = connect(Number(new URL(sidecar.outbound!).port), '127.0.0.1');
        let text = '';
        let reset = false;
        s.on('data', (c: Buffer) => (text += c.toString('latin1')));
        s.on('error', (e: NodeJS.ErrnoException) => (reset = e.code === 'ECONNRESET'));
        s.on('close', () => resolve({ text, reset }));
        s.write(bytes);
      });
    const request = handshake(`http://127.0.0.1:${peer.port}/ws`, `127.0.0.1:${peer.port}`);
    // The relayed answer is close-delimited (its chunked coding is hop-by-hop): the close is all that says where it ends.
    peer.answer = (_req, s) => void s.end('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n');
    const whole = await exchange(request);
    expect(whole.text).toMatch(/^HTTP\/1\.1 403 [^]*\r\n\r\nhello$/);
    expect(whole.reset).toBe(false);
    peer.answer = (_req, s) => {
      s.write('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nabc');
      setTimeout(() => s.destroy(), 50);
    };
    const cut = await exchange(request);
    expect(cut.text).toMatch(/^HTTP\/1\.1 403 /);
    expect(cut.reset).toBe(true);

    // A body that ends with the connection: an orderly close ends it, a reset cuts it. Node's client completes it on a
    // reset too, but reports the reset first. A header byte outside ASCII goes through as it came (latin1, not UTF-8).
    const head = 'HTTP/1.1 403 Forbidden\r\nx-name: caf\xe9\r\nConnection: close\r\n\r\nhello';
    peer.answer = (_req, s) => void s.end(Buffer.from(head, 'latin1'));
    const closed = await exchange(request);
    expect(closed.text).toMatch(/^HTTP\/1\.1 403 [^]*\r\nx-name: caf\xe9\r\n[^]*\r\n\r\nhello$/);
    expect(closed.reset).toBe(false);
    peer.answer = (_req, s) => {
      s.write(Buffer.from(head, 'latin1'));
      setTimeout(() => s.resetAndDestroy(), 50);
    };
    const reset = await exchange(request);
    expect(reset.text).toMatch(/^HTTP\/1\.1 403 /);
    expect(reset.reset).toBe(true);
  });

  it('passes a reset on: a peer that resets its end of a CONNECT or WebSocket tunnel makes the client see a reset, where an orderly close stays one', async () => {
    /** Writes `first`, then `then` once the sidecar answered it; what came back, and whether it ended in a reset. */
    const tunnelled = (first: string, then: string) =>
      new Promise<{ text: string; reset: boolean }>((resolve) => {
        const s = connect(Number(new URL(sidecar.outbound!).port), '127.0.0.1');
        let text = '';
        let reset = false;
        s.on('data', (c: Buffer) => {
          if (text === '') s.write(then);
          text += c.toString('latin1');
        });
        s.on('error', (e: NodeJS.ErrnoException) => (reset = e.code === 'ECONNRESET'));
        s.on('close', () => resolve({ text, reset }));
        s.write(first);
      });
    const connectTo = `CONNECT 127.0.0.1:${peer.port} HTTP/1.1\r\nHost: 127.0.0.1:${peer.port}\r\n\r\n`;
    const upgradeTo = handshake(`http://127.0.0.1:${peer.port}/ws`, `127.0.0.1:${peer.port}`);
    const switched = 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n';
    for (const [first, opening] of [[connectTo, ''], [upgradeTo, switched]] as const) {
      for (const ending of ['reset', 'close'] as const) {
        peer.answer = (_req, s) => {
          if (opening) {
            // The handshake first; the bytes the client sends through the tunnel next get the partial answer.
            s.write(opening);
            s.once('data', () => finish(s));
          } else finish(s);
        };
        const finish = (s: Socket) => {
          s.write('partial');
          setTimeout(() => (ending === 'reset' ? s.resetAndDestroy() : s.end()), 50);
        };
        const r = await tunnelled(first, 'hello');
        expect(r.text, `${first.slice(0, 7)} ${ending}`).toContain('partial');
        expect(r.reset, `${first.slice(0, 7)} ${ending}`).toBe(ending === 'reset');
      }
    }
  });

  it('answers 508 loop_detected to a CONNECT nested in a CONNECT to its own listener (each would open two more sockets)', async () => {
    const self = new URL(sidecar.outbound!).host;
    const connect = `CONNECT ${self} HTTP/1.1\r\nHost: ${self}\r\n\r\n`;
    const ex = await rawExchange(sidecar.outbound!, connect + connect);
    expect(ex.raw.startsWith('HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 508 ')).toBe(true);
    expect(ex.raw).toContain('"reason":"loop_detected"');
  });

  it('logs and counts a CONNECT that cannot connect as an upstream error, like a plain request', async () => {
    const port = await closedPort();
    const before = sample(await metricsText(sidecar.admin), 'oidc_sidecar_upstream_errors_total', { direction: 'outbound', reason: 'upstream_connect_failed' }) ?? 0;
    const ex = await rawExchange(sidecar.outbound!, `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    expect(ex.responses[0]?.status).toBe(502);
    const logged = await sidecar.waitForLog((l) => l.event === 'upstream_error' && l.target === `127.0.0.1:${port}`);
    expect(logged).toMatchObject({ route: 'passthrough', reason: 'upstream_connect_failed', code: 'ECONNREFUSED' });
    const after = sample(await metricsText(sidecar.admin), 'oidc_sidecar_upstream_errors_total', { direction: 'outbound', reason: 'upstream_connect_failed' });
    expect(after).toBe(before + 1);
  });

  it('closes a CONNECT tunnel the client half-closed once the peer has had the grace to finish, though the peer never ends its side', async () => {
    // A peer that keeps its side open after the client's FIN (allowHalfOpen) and never answers: only the sidecar's
    // grace (limits.upstreamTimeoutSeconds, as for WebSocket tunnels) can close the tunnel.
    const { connect, createServer: createTcpServer } = await import('node:net');
    let peerGotEnd = false;
    const held = new Set<Socket>();
    const stubborn = createTcpServer({ allowHalfOpen: true }, (s) => {
      held.add(s);
      s.on('error', () => {});
      s.on('end', () => (peerGotEnd = true));
      s.resume();
    });
    await new Promise<void>((r) => stubborn.listen(0, '127.0.0.1', r));
    const port = (stubborn.address() as AddressInfo).port;
    try {
      const url = new URL(sidecar.outbound!);
      const client = connect({ host: url.hostname, port: Number(url.port), allowHalfOpen: true });
      const closed = new Promise<void>((r) => client.once('close', () => r()));
      client.on('error', () => {});
      await new Promise<void>((r) => client.once('connect', () => r()));
      client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
      await new Promise<void>((r) => client.once('data', () => r()));
      client.resume();
      client.end('hello');
      await eventually(() => peerGotEnd, 5000, 'the peer to see the FIN');
      // Without the grace nothing would ever close this tunnel; the test's own timeout is the failure.
      await closed;
    } finally {
      // The peer's side is still open by design: cut it, or close() would wait for it.
      for (const s of held) s.destroy();
      await new Promise((r) => stubborn.close(r));
    }
  }, 15_000);

  it('keeps carrying the client\'s bytes after the peer half-closes a CONNECT tunnel, for the grace, as it does the other way round', async () => {
    // A peer that has said all it will (FIN) but still reads. The sidecar's socket to it did not allow half-open, so
    // Node ended that socket's write side at once, and what the client sent next was dropped without a word.
    let received = '';
    const readsOn = createServer({ allowHalfOpen: true }, (s) => {
      s.on('data', (d) => (received += d.toString('latin1')));
      s.on('error', () => {});
      s.end('bye');
    });
    await new Promise<void>((r) => readsOn.listen(0, '127.0.0.1', r));
    const port = (readsOn.address() as AddressInfo).port;
    // A grace of its own, long enough that a busy machine cannot end the tunnel before the bytes pass.
    const roomy = await startSidecar({ service: 'orders', limits: { upstreamTimeoutSeconds: 10 }, outbound: { unknownHosts: 'passthrough' } });
    const url = new URL(roomy.outbound!);
    const client = connect({ host: url.hostname, port: Number(url.port), allowHalfOpen: true });
    try {
      client.on('error', () => {});
      let got = '';
      client.on('data', (d) => (got += d.toString('latin1')));
      const ended = new Promise<void>((r) => client.once('end', () => r()));
      client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\nfirst`);
      await ended;
      expect(got).toBe('HTTP/1.1 200 Connection Established\r\n\r\nbye');
      client.write('|second');
      await eventually(() => received === 'first|second', 8_000, 'the bytes sent after the peer\'s FIN to reach it');
    } finally {
      client.destroy();
      await roomy.stop();
      await new Promise((r) => readsOn.close(r));
    }
  });

  it('refuses an upgrade it has no token for with 503 token_unavailable and the OAuth error, as a plain request', async () => {
    const ex = await rawExchange(sidecar.outbound!, handshake('/ws', 'payments'));
    expect(ex.responses[0]?.status).toBe(503);
    expect(ex.responses[0]?.json()).toMatchObject({ reason: 'token_unavailable', oauth_error: 'invalid_client' });
  });
});

describe('the connect of a WebSocket tunnel', () => {
  it('is bounded by limits.upstreamConnectTimeoutSeconds, as a plain request is, not by the longer upstreamTimeoutSeconds', async () => {
    // An https app that accepts the TCP connection and never says a word of TLS: the connect never completes.
    const held = new Set<Socket>();
    const silent = createServer((s) => {
      held.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const inbound = await startSidecar({
      service: 'orders',
      limits: { upstreamConnectTimeoutSeconds: 1, upstreamTimeoutSeconds: 30 },
      inbound: {
        target: `https://127.0.0.1:${(silent.address() as AddressInfo).port}`,
        audience: 'orders',
        issuers: [{ issuer: idp.issuer }],
        rules: [{ match: { path: '/**' }, public: true }],
      },
    });
    try {
      for (const bytes of [handshake('/ws', 'orders'), 'GET /plain HTTP/1.1\r\nHost: orders\r\n\r\n']) {
        const ex = await rawExchange(inbound.inbound!, bytes);
        // With the answer's 30 s as the only limit the handshake ended in 504 upstream_timeout, 30 s later.
        expect(ex.responses[0]?.status, bytes).toBe(502);
        expect(ex.responses[0]?.json().reason, bytes).toBe('upstream_connect_failed');
      }
    } finally {
      await inbound.stop();
      for (const s of held) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  }, 20_000);
});

describe('a client that goes away before the app or peer answers its WebSocket handshake', () => {
  // Both sides, with the default 30 s upstream timeout: an abandoned handshake must be noticed long before it.
  let tunnels: SidecarProcess;
  /** A raw peer that reads each handshake and answers it only when told. */
  const held = new Map<Socket, string>();
  const silent = createServer((s) => {
    held.set(s, '');
    s.on('error', () => {});
    s.on('data', (d: Buffer) => held.set(s, held.get(s)! + d.toString('latin1')));
    s.once('close', () => held.delete(s));
  });
  const NOTICED_MS = 5000;

  beforeAll(async () => {
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as AddressInfo).port;
    tunnels = await startSidecar({
      service: 'orders',
      lifecycle: { watchConfig: false, drainTimeoutSeconds: 3 },
      inbound: { target: `http://127.0.0.1:${port}`, audience: 'orders', issuers: [{ issuer: idp.issuer }], rules: [{ match: { path: '/**' }, public: true }] },
      outbound: { unknownHosts: 'passthrough', routes: [] },
    });
  });
  afterAll(async () => {
    await tunnels?.stop();
    for (const s of held.keys()) s.destroy();
    await new Promise((r) => silent.close(r));
  });

  const port = () => (silent.address() as AddressInfo).port;
  const requests = {
    inbound: () => ({ listener: tunnels.inbound!, bytes: handshake('/ws', 'orders') }),
    outbound: () => ({ listener: tunnels.outbound!, bytes: handshake(`http://127.0.0.1:${port()}/ws`, `127.0.0.1:${port()}`) }),
  };
  /** Sends a handshake and resolves once the peer holds it, with the client's socket and the peer's. */
  const handshakeHeld = async (side: keyof typeof requests) => {
    const { listener, bytes } = requests[side]();
    const before = new Set(held.keys());
    const client = connect(Number(new URL(listener).port), '127.0.0.1');
    client.on('error', () => {});
    client.write(bytes);
    const peer = await eventually(() => [...held.keys()].find((s) => !before.has(s) && held.get(s)!.includes('\r\n\r\n')), NOTICED_MS, 'the handshake at the peer');
    return { client, peer: peer! };
  };

  for (const side of ['inbound', 'outbound'] as const) {
    it(`${side}: the handshake to the peer is cancelled at once, not after the upstream timeout`, async () => {
      const { client, peer } = await handshakeHeld(side);
      client.destroy();
      await eventually(() => !held.has(peer), NOTICED_MS, 'the peer\'s connection to close');
      if (side === 'outbound') {
        // Counted as a plain request the app gave up is, not as the peer's upstream_timeout 30 s later.
        await eventually(async () => sample(await metricsText(tunnels.admin), 'oidc_sidecar_outbound_requests_total', { route: 'passthrough', status: 'client_closed' }) === 1, NOTICED_MS, 'client_closed');
      }
      expect(tunnels.logs.filter((l) => l.event === 'upstream_error')).toEqual([]);
    });
  }

  it('what a client sends before the 101 (RFC 6455 §4.1 says it should not) still reaches the peer after it', async () => {
    const { client, peer } = await handshakeHeld('outbound');
    client.write('early bytes');
    await new Promise((r) => setTimeout(r, 200));
    const handshakeOnly = held.get(peer)!;
    peer.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    await eventually(() => held.get(peer)?.endsWith('early bytes'), NOTICED_MS, 'the early bytes at the peer');
    expect(held.get(peer)).toBe(`${handshakeOnly}early bytes`);
    client.destroy();
  });

  it('a SIGTERM after such hang-ups has no handshake left to wait for: no drain timeout', async () => {
    await tunnels.stop();
    expect(tunnels.logs.filter((l) => l.event === 'drain_timeout')).toEqual([]);
  });
});
