import type { IncomingMessage } from 'node:http';
import { createServer } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { Duplex } from 'node:stream';
import { WebSocket } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { UpstreamError } from '../../src/errors.js';
import { writeRawError } from '../../src/proxy/respond.js';
import type { LimitsConfig } from '../../src/config/schema.js';
import type { AdmitTunnel, Refusal, TlsFiles } from '../../src/proxy/listen.js';
import { tunnel, watchForHangUp } from '../../src/proxy/tunnel.js';
import { closedPort, rawConnect, rawExchange, startTestProxy, type TestProxy } from './proxy-harness.js';
import { startWsEcho, type WsEcho } from './proxy-ws-echo.js';
import { selfSignedCert } from '../support/certs.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A proxy whose upgrade handler tunnels to `target` the way the inbound side does after authorizing. */
async function tunnelProxy(
  target: string,
  timeoutMs = 5000,
  more: { idleTimeoutMs?: number; limits?: Partial<LimitsConfig>; refused?: Refusal[]; tls?: TlsFiles } = {},
): Promise<{ proxy: TestProxy; outcomes: Array<number | string>; clientSockets: Duplex[]; idled: number[] }> {
  const outcomes: Array<number | string> = [];
  const clientSockets: Duplex[] = [];
  const idled: number[] = [];
  const upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel) => {
    clientSockets.push(socket);
    if (!admit()) return;
    tunnel(req, socket, head, {
      target: new URL(target),
      path: req.url!,
      dropHeaders: new Set(['x-peer-sub', 'authorization']),
      addHeaders: ['x-peer-sub', 'verified-caller'],
      timeoutMs,
      connectTimeoutMs: timeoutMs,
      idleTimeoutMs: more.idleTimeoutMs ?? 0,
      onIdle: () => idled.push(clientSockets.indexOf(socket)),
    }).then(
      (status) => outcomes.push(status),
      (err: UpstreamError) => {
        outcomes.push(err.code);
        writeRawError(socket, err.status, err.code, err.message);
      },
    );
  };
  const refused = more.refused;
  const proxy = await startTestProxy(target, {
    ...(more.limits ? { limits: more.limits } : {}),
    ...(more.tls ? { tls: more.tls } : {}),
    server: { upgrade, ...(refused ? { refused: (_req, r) => void refused.push(r) } : {}) },
  });
  cleanups.push(() => proxy.close());
  return { proxy, outcomes, clientSockets, idled };
}

async function echo(opts?: Parameters<typeof startWsEcho>[0]): Promise<WsEcho> {
  const e = await startWsEcho(opts);
  cleanups.push(() => e.close());
  return e;
}

function until(pred: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const tick = () => (pred() ? resolve() : setTimeout(tick, 10));
    tick();
  });
}

describe('tunnel(): WebSocket through the proxy', () => {
  it('carries a real WebSocket session with filtered headers, identity added, and a clean close', async () => {
    const app = await echo();
    const { proxy, outcomes } = await tunnelProxy(app.url);
    const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/chat?room=1`, { headers: { 'x-peer-sub': 'forged', authorization: 'Bearer t', 'x-custom': 'kept' } } as never);
    const messages: string[] = [];
    ws.addEventListener('message', (e) => messages.push(String(e.data)));
    await new Promise((resolve, reject) => {
      ws.addEventListener('open', resolve);
      ws.addEventListener('error', reject);
    });
    ws.send('hello');
    ws.send('again');
    await until(() => messages.length === 2);
    expect(messages).toEqual(['echo:hello', 'echo:again']);
    const closed = new Promise<{ code: number; wasClean: boolean }>((r) => ws.addEventListener('close', (e) => r({ code: e.code, wasClean: e.wasClean })));
    ws.close(1000, 'bye');
    expect(await closed).toEqual({ code: 1000, wasClean: true });
    await until(() => app.open.size === 0);

    expect(outcomes).toEqual([101]);
    const seen = app.seen[0]!;
    expect(seen.url).toBe('/chat?room=1');
    expect(seen.headers['x-peer-sub']).toBe('verified-caller');
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers['x-custom']).toBe('kept');
    expect(seen.headers.upgrade).toBe('websocket');
    expect(seen.headers.connection).toBe('upgrade');
    expect(seen.headers['sec-websocket-key']).toBeTruthy();
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
  });

  it('passes early data sent right behind the upgrade request', async () => {
    const app = await echo();
    const { proxy } = await tunnelProxy(app.url);
    const s = await rawConnect(proxy.port);
    cleanups.push(async () => void s.destroy());
    let got = Buffer.alloc(0);
    s.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
    // A masked text frame "hi" in the same write as the handshake.
    const mask = [1, 2, 3, 4];
    const frame = Buffer.from([0x81, 0x82, ...mask, 'h'.charCodeAt(0) ^ 1, 'i'.charCodeAt(0) ^ 2]);
    s.write(
      Buffer.concat([
        Buffer.from('GET /early HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'),
        frame,
      ]),
    );
    await until(() => got.includes(Buffer.from('echo:hi')));
    const text = got.toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(text).toMatch(/sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n/i);
    expect(text).toMatch(/x-app: ws\r\n/i);
  });

  it('sends the target as Host when none is left after filtering (RFC 9112 §3.2; node:http adds none to a header list)', async () => {
    const app = await echo();
    const { proxy, outcomes } = await tunnelProxy(app.url);
    // Connection names Host, so the client's Host is hop-by-hop and removed; a close frame behind the handshake ends the session.
    const close = Buffer.from([0x88, 0x80, 0, 0, 0, 0]);
    const answer = await rawExchange(
      proxy.port,
      Buffer.concat([Buffer.from('GET /h HTTP/1.1\r\nHost: client-side\r\nConnection: Upgrade, Host\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'), close]),
    );
    expect(answer).toMatch(/^HTTP\/1\.1 101 /);
    expect(outcomes).toEqual([101]);
    expect(app.seen.map((s) => s.headers.host)).toEqual([new URL(app.url).host]);
    expect(app.seen[0]!.headers['x-forwarded-host']).toBe('client-side');
  });

  it('relays an upstream that declines the upgrade, then closes', async () => {
    const app = await echo({ refuse: { status: 403, body: 'not here' } });
    const { proxy, outcomes } = await tunnelProxy(app.url);
    const answer = await rawExchange(proxy.port, 'GET /no HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(answer).toMatch(/x-app: ws\r\n/i);
    expect(answer).toMatch(/connection: close\r\n/i);
    expect(answer.endsWith('\r\n\r\nnot here')).toBe(true);
    expect(outcomes).toEqual([403]);
  });

  it('closes a declined handshake once the answer is sent, though its client never ends its side: it holds no tunnel slot', async () => {
    const app = await echo({ refuse: { status: 403, body: 'not here' } });
    const { proxy, outcomes, clientSockets } = await tunnelProxy(app.url, 5000, { limits: { maxTunnels: 1 } });
    // A client that keeps its side open after the answer (allowHalfOpen), as a client that ignores `connection: close` may.
    const s = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
    s.on('error', () => {});
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.write('GET /no HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    await until(() => got.endsWith('not here'));
    await until(() => clientSockets[0]!.destroyed);
    // The slot is free again: the next handshake reaches the app (and is declined by it), not 503 too_many_tunnels.
    const answer = await rawExchange(proxy.port, 'GET /no HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(outcomes).toEqual([403, 403]);
    s.destroy();
  });

  it('on a TLS listener too, ends a declined answer the upstream cuts short in a reset, never an orderly close that reads as the whole body', async () => {
    // The relayed answer is close-delimited (its chunked coding is hop-by-hop): the close is all that says where it ends.
    const app = createServer();
    app.on('upgrade', (_req, s: Socket) => {
      s.on('error', () => {});
      s.write('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nabc');
      setTimeout(() => s.destroy(), 50);
    });
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => app.close(() => r())));
    const cert = selfSignedCert('tunnel');
    const { proxy, outcomes } = await tunnelProxy(`http://127.0.0.1:${(app.address() as AddressInfo).port}`, 5000, { tls: { certFile: cert.cert, keyFile: cert.key } });
    const { text, reset } = await new Promise<{ text: string; reset: boolean }>((resolve) => {
      const s = tlsConnect({ port: proxy.port, host: '127.0.0.1', ca: cert.pem });
      let text = '';
      let reset = false;
      s.on('data', (c: Buffer) => (text += c.toString('latin1')));
      s.on('error', (e: NodeJS.ErrnoException) => (reset = e.code === 'ECONNRESET'));
      s.on('close', () => resolve({ text, reset }));
      s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    });
    expect(text).toMatch(/^HTTP\/1\.1 403 [^]*\r\n\r\nhello/);
    expect(reset).toBe(true);
    expect(outcomes).toEqual([403]);
  });

  it('answers 502 upstream_bad_response when the upstream switches to a protocol other than the WebSocket it was asked for', async () => {
    const app = await echo();
    app.server.removeAllListeners('upgrade');
    let afterSwitch = '';
    app.server.on('upgrade', (_req, socket: Duplex) => {
      socket.on('data', (d: Buffer) => (afterSwitch += d.toString('latin1')));
      socket.on('error', () => {});
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
      cleanups.push(async () => void socket.destroy());
    });
    const { proxy, outcomes } = await tunnelProxy(app.url);
    const answer = await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(answer).toContain('"reason":"upstream_bad_response"');
    expect(outcomes).toEqual(['upstream_bad_response']);
    // Nothing the client sent behind the handshake reached the app.
    expect(afterSwitch).toBe('');
  });

  it('answers 502 upstream_bad_response when the upstream declines with a status outside 100-599, as a plain request is answered', async () => {
    const app = await echo();
    app.server.removeAllListeners('upgrade');
    app.server.on('upgrade', (_req, socket: Duplex) => {
      socket.on('error', () => {});
      socket.end('HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\nhi');
    });
    const { proxy, outcomes } = await tunnelProxy(app.url);
    const answer = await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(answer).toContain('"reason":"upstream_bad_response"');
    // The status the outbound side counts a declined handshake under (`status` label): never the upstream's 999.
    expect(outcomes).toEqual(['upstream_bad_response']);
  });

  it('answers 502 upstream_connect_failed when the upstream is down', async () => {
    const port = await closedPort();
    const { proxy, outcomes } = await tunnelProxy(`http://127.0.0.1:${port}`);
    const answer = await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(answer).toContain('"reason":"upstream_connect_failed"');
    expect(outcomes).toEqual(['upstream_connect_failed']);
  });

  it('answers 504 upstream_timeout when the upstream never answers the upgrade', async () => {
    const app = await echo();
    app.server.removeAllListeners('upgrade');
    app.server.on('upgrade', (_req, socket: Duplex) => {
      // Holds the socket and never answers.
      cleanups.push(async () => void socket.destroy());
    });
    const { proxy, outcomes } = await tunnelProxy(app.url, 300);
    const answer = await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 504 /);
    expect(answer).toContain('"reason":"upstream_timeout"');
    expect(outcomes).toEqual(['upstream_timeout']);
  });

  it('tears the upstream side down when the client resets, and the client side when the upstream resets', async () => {
    const app = await echo();
    const { proxy } = await tunnelProxy(app.url);
    const open = async () => {
      const s = await rawConnect(proxy.port);
      s.on('error', () => {});
      let got = '';
      s.on('data', (d) => (got += d.toString('latin1')));
      s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
      await until(() => got.includes('\r\n\r\n') && app.open.size > 0);
      return s;
    };
    const first = await open();
    first.resetAndDestroy();
    await until(() => app.open.size === 0);

    const second = await open();
    const secondClosed = new Promise<void>((r) => second.on('close', () => r()));
    [...app.open][0]!.resetAndDestroy();
    await secondClosed;
    expect(second.destroyed).toBe(true);
  });

  it('cuts a tunnel left half-open: the upstream ignores the client\'s end', async () => {
    const app = await echo({ ignoreEnd: true });
    const { proxy, clientSockets } = await tunnelProxy(app.url, 300);
    const s = await rawConnect(proxy.port);
    s.on('error', () => {});
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    await until(() => got.includes('\r\n\r\n'));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.end();
    await closed;
    await until(() => clientSockets[0]!.destroyed);
  });

  it('cuts a tunnel whose client ended before the upstream answered, when the upstream ignores that end', async () => {
    // The client's end arrives while the upgrade is still on its way upstream. Read before the 101 (watchForHangUp),
    // it ends the attempt: the client is gone, as a FIN ends a plain request. Read after, it is passed on and the grace
    // starts. Either way the tunnel (and its limits.maxTunnels slot) must not stay until the idle limit.
    const app = await echo({ ignoreEnd: true });
    const { proxy, clientSockets } = await tunnelProxy(app.url, 300);
    const s = await rawConnect(proxy.port);
    s.on('error', () => {});
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.end('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    const cut = await Promise.race([closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
    expect(got === '' || /^HTTP\/1\.1 101 /.test(got), got).toBe(true);
    expect(cut).toBe(true);
    await until(() => clientSockets[0]!.destroyed);
  });

  it('ends open tunnels when the server cuts all connections (drain deadline)', async () => {
    const app = await echo();
    const { proxy } = await tunnelProxy(app.url);
    const s = await rawConnect(proxy.port);
    s.on('error', () => {});
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    await until(() => got.includes('\r\n\r\n'));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    proxy.server.closeAllConnections();
    await closed;
    await until(() => app.open.size === 0);
  });

  it('cuts both sides at once when the server cuts all connections, even an upstream that ignores the end', async () => {
    // The grace after one side ends is a minute here: only a cut of both sides closes the app's socket in time.
    const app = await echo({ ignoreEnd: true });
    const { proxy } = await tunnelProxy(app.url, 60_000);
    await openRawTunnel(proxy.port);
    await until(() => app.open.size === 1);
    // An app that takes no notice of the end and goes on sending: only a socket closed outright (not half-closed and
    // still reading) answers that with a reset, which closes the app's side.
    const appSide = [...app.open][0]!;
    appSide.on('end', () => {
      const timer = setInterval(() => appSide.write(Buffer.from([0x89, 0x00])), 20);
      appSide.on('close', () => clearInterval(timer));
    });
    proxy.server.closeAllConnections();
    await until(() => app.open.size === 0);
  });

  it('cuts a tunnel that carried nothing either way for the idle limit, and says so; traffic keeps it open', async () => {
    const app = await echo();
    const { proxy, idled } = await tunnelProxy(app.url, 60_000, { idleTimeoutMs: 1500 });
    const s = await openRawTunnel(proxy.port);
    let echoed = 0;
    s.on('data', (d: Buffer) => (echoed += d.toString('latin1').split('echo:').length - 1));
    // Twenty frames 100 ms apart: 2 s of traffic, longer than the limit, but never a gap near it.
    for (let i = 0; i < 20; i++) {
      s.write(maskedTextFrame(`ping ${i}`));
      await new Promise((r) => setTimeout(r, 100));
    }
    await until(() => echoed === 20);
    expect(s.destroyed).toBe(false);
    expect(idled).toEqual([]);
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    await closed;
    await until(() => app.open.size === 0);
    expect(idled).toEqual([0]);
  });

  it('leaves an idle tunnel open with no idle limit (0)', async () => {
    const app = await echo({ ignoreEnd: true });
    const { proxy, idled } = await tunnelProxy(app.url, 60_000, { idleTimeoutMs: 0 });
    const s = await openRawTunnel(proxy.port);
    await new Promise((r) => setTimeout(r, 600));
    expect(s.destroyed).toBe(false);
    expect(app.open.size).toBe(1);
    expect(idled).toEqual([]);
  });

  it('refuses a tunnel over limits.maxTunnels with 503 too_many_tunnels, and opens one again once another closes', async () => {
    const app = await echo();
    const refused: Refusal[] = [];
    const { proxy, outcomes } = await tunnelProxy(app.url, 5000, { limits: { maxTunnels: 2 }, refused });
    const first = await openRawTunnel(proxy.port);
    await openRawTunnel(proxy.port);
    await until(() => app.open.size === 2);

    const answer = await rawExchange(proxy.port, `GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${KEY}\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 503 /);
    expect(answer).toContain('"reason":"too_many_tunnels"');
    expect(refused.map((r) => r.reason)).toEqual(['too_many_tunnels']);
    expect(app.seen).toHaveLength(2);
    // A plain request on the same listener is still served.
    expect((await fetch(`${proxy.url}/plain`)).status).toBe(426);

    const closed = new Promise<void>((r) => first.on('close', () => r()));
    first.end();
    await closed;
    await until(() => app.open.size === 1);
    await openRawTunnel(proxy.port);
    await until(() => app.open.size === 2);
    expect(outcomes).toEqual([101, 101, 101]);
  });
});

const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

/** Opens a WebSocket tunnel on a raw socket and resolves once the 101 has arrived. */
async function openRawTunnel(port: number): Promise<Socket> {
  const s = await rawConnect(port);
  s.on('error', () => {});
  let got = '';
  const onData = (d: Buffer) => (got += d.toString('latin1'));
  s.on('data', onData);
  s.write(`GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${KEY}\r\n\r\n`);
  await until(() => got.includes('\r\n\r\n'));
  expect(got).toMatch(/^HTTP\/1\.1 101 /);
  s.off('data', onData);
  return s;
}

/** A client-to-server text frame (RFC 6455 §5.2: clients mask), short payloads only. */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

describe('watchForHangUp: a WebSocket client before the 101', () => {
  it('cuts a client that sends more than 16 KiB before the 101, holding no more than a read of it', async () => {
    let accepted: Socket | undefined;
    const server = createNetServer((s) => {
      s.pause();
      s.on('error', () => {});
      accepted = s;
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    client.on('error', () => {});
    try {
      while (!accepted) await new Promise((r) => setTimeout(r, 5));
      watchForHangUp(accepted);
      client.write(Buffer.alloc(16 * 1024));
      await new Promise((r) => setTimeout(r, 100));
      // What a client may send ahead is kept.
      expect(accepted.destroyed).toBe(false);
      client.write(Buffer.alloc(1 << 20));
      await until(() => accepted!.destroyed);
      // One read past the limit at most (a read takes up to 64 KiB), not the whole megabyte.
      expect(accepted.bytesRead).toBeLessThanOrEqual(16 * 1024 + 64 * 1024);
    } finally {
      client.destroy();
      server.close();
    }
  });
});
