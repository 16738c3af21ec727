import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startWsEcho } from '../unit/proxy-ws-echo.js';

/**
 * What the sidecar cuts itself, through the CLI: a tunnel (or a close-delimited response) cut while bytes still flow
 * ends in a reset, never an orderly close that reads as the whole stream; a tunnel whose client half-closed is not cut
 * while its download still flows; a WebSocket handshake whose client has left gives its tunnel place back.
 */
const cleanups: Array<() => Promise<unknown> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A TCP peer that, once it gets a first chunk, sends `chunk<i>;` every 200 ms, `count` times, then `END` and FIN; or,
 * with `thenSilent`, nothing more, its side left open.
 */
async function slowStreamer(count = 15, thenSilent = false): Promise<{ server: Server; port: number }> {
  const open = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s: Socket) => {
    open.add(s);
    s.once('close', () => open.delete(s));
    s.on('error', () => {});
    s.once('data', () => {
      let i = 0;
      const timer = setInterval(() => {
        if (s.destroyed) return clearInterval(timer);
        s.write(`chunk${i++};`);
        if (i === count) {
          clearInterval(timer);
          if (!thenSilent) s.end('END');
        }
      }, 200);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  // A silent peer that has read the client's end notices the sidecar's reset only when it writes again: never.
  cleanups.push(() => new Promise((r) => (open.forEach((s) => s.destroy()), server.close(r))));
  return { server, port: (server.address() as AddressInfo).port };
}

/** Opens a CONNECT tunnel through `sidecar` to 127.0.0.1:`port`; resolves with how the client's socket ended. */
async function download(sidecar: SidecarProcess, port: number, send: (s: Socket) => void): Promise<{ got: string; error: string | undefined }> {
  const url = new URL(sidecar.outbound!);
  const client = connect({ host: url.hostname, port: Number(url.port), allowHalfOpen: true });
  cleanups.push(() => void client.destroy());
  let got = '';
  let error: string | undefined;
  client.on('data', (d: Buffer) => (got += d.toString('latin1')));
  client.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
  // Ended (FIN) or closed, then a moment for a reset that follows to be reported.
  const closed = new Promise<void>((r) => {
    client.once('end', () => setTimeout(r, 200));
    client.once('close', () => r());
  });
  client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  await new Promise<void>((r) => client.once('data', () => r()));
  send(client);
  await closed;
  return { got, error };
}

describe('tunnels and responses the sidecar cuts while bytes still flow', () => {
  it('a CONNECT download after the client half-closed is not cut at the grace while bytes flow', async () => {
    const { port } = await slowStreamer();
    // The grace (limits.upstreamTimeoutSeconds) is 1 s; the download takes 3 s and is never idle for more than 200 ms.
    const sidecar = await startSidecar({ service: 'orders', limits: { upstreamTimeoutSeconds: 1 }, outbound: { unknownHosts: 'passthrough' } });
    cleanups.push(() => sidecar.stop());
    // An HTTP/1.0-style exchange: the request, then FIN (nc -N, socat, shutdown(SHUT_WR) after the request).
    const { got, error } = await download(sidecar, port, (s) => s.end('GET /big HTTP/1.0\r\n\r\n'));
    // The grace is the longest the tunnel may carry nothing once a side ended, not a deadline from the end.
    expect({ end: got.slice(-3), error }).toEqual({ end: 'END', error: undefined });
  });

  it('a CONNECT tunnel whose client half-closed and whose peer then falls silent is cut at the grace with a reset', async () => {
    const { port } = await slowStreamer(3, true);
    const sidecar = await startSidecar({ service: 'orders', limits: { upstreamTimeoutSeconds: 1 }, outbound: { unknownHosts: 'passthrough' } });
    cleanups.push(() => sidecar.stop());
    const { got, error } = await download(sidecar, port, (s) => s.end('GET /big HTTP/1.0\r\n\r\n'));
    expect(got).toContain('chunk2;');
    expect(error).toBe('ECONNRESET');
  });

  it('a CONNECT download the peer finished sending reaches a slow reader whole: the grace counts what the client still takes', async () => {
    const size = 6 * 1024 * 1024;
    const peer = createServer((s: Socket) => {
      s.on('error', () => {});
      s.once('data', () => s.end(Buffer.alloc(size, 97)));
    });
    await new Promise<void>((r) => peer.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => peer.close(r)));
    const port = (peer.address() as AddressInfo).port;
    const sidecar = await startSidecar({ service: 'orders', limits: { upstreamTimeoutSeconds: 1 }, outbound: { unknownHosts: 'passthrough' } });
    cleanups.push(() => sidecar.stop());
    const url = new URL(sidecar.outbound!);
    const client = connect({ host: url.hostname, port: Number(url.port), allowHalfOpen: true });
    cleanups.push(() => void client.destroy());
    let body = -1;
    let error: string | undefined;
    client.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
    client.on('data', (d: Buffer) => {
      if (body < 0) {
        body = d.length - (d.indexOf('\r\n\r\n') + 4);
        return void client.write('GET /big HTTP/1.0\r\n\r\n');
      }
      body += d.length;
      // About 2.5 MB/s: the peer is done long before the client has read it all, longer than the 1 s grace.
      client.pause();
      setTimeout(() => client.resume(), 25);
    });
    client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    const how = await new Promise((r) => {
      client.once('end', () => r('end'));
      client.once('close', () => r('close'));
    });
    await new Promise((r) => setTimeout(r, 200));
    expect({ how, body, error }).toEqual({ how: 'end', body: size, error: undefined });
  }, 30_000);

  it('a CONNECT tunnel still carrying bytes at the drain deadline is cut with a reset, not an orderly close', async () => {
    const { port } = await slowStreamer();
    const sidecar = await startSidecar({ service: 'orders', lifecycle: { drainTimeoutSeconds: 1 }, outbound: { unknownHosts: 'passthrough' } });
    cleanups.push(() => sidecar.stop());
    const { got, error } = await download(sidecar, port, (s) => {
      s.write('GET /big HTTP/1.0\r\n\r\n');
      setTimeout(() => sidecar.signal('SIGTERM'), 300);
    });
    expect(got).not.toContain('END');
    expect(error).toBe('ECONNRESET');
  });

  it('a close-delimited response (HTTP/1.0 client) cut at the drain deadline ends in a reset, as one the upstream cuts short does', async () => {
    const app: HttpServer = createHttpServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      let i = 0;
      const timer = setInterval(() => {
        res.write(`chunk${i++};`);
        if (i === 15) {
          clearInterval(timer);
          res.end('END');
        }
      }, 200);
      res.on('close', () => clearInterval(timer));
    });
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => app.close(r)));
    const port = (app.address() as AddressInfo).port;
    const sidecar = await startSidecar({ service: 'orders', lifecycle: { drainTimeoutSeconds: 1 }, outbound: { unknownHosts: 'passthrough' } });
    cleanups.push(() => sidecar.stop());
    const url = new URL(sidecar.outbound!);
    const client = connect({ host: url.hostname, port: Number(url.port) });
    let got = '';
    let error: string | undefined;
    client.on('data', (d: Buffer) => (got += d.toString('latin1')));
    client.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
    const closed = new Promise<void>((r) => client.once('close', () => r()));
    client.write(`GET http://127.0.0.1:${port}/big HTTP/1.0\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    setTimeout(() => sidecar.signal('SIGTERM'), 300);
    await closed;
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
    expect(got).not.toContain('END');
    expect(error).toBe('ECONNRESET');
  });
});

describe('a WebSocket handshake whose client has left', () => {
  it('gives its tunnel slot back when the client closes while the app has not answered yet', async () => {
    const idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 'orders-secret' }] });
    cleanups.push(() => idp.close());
    const echo = await startWsEcho();
    cleanups.push(() => echo.close());
    // An app that is slow on /ws/slow: it never answers that handshake (the sidecar's upstream timeout answers 504).
    const slowApp = createHttpServer();
    const appSockets = new Set<Socket>();
    slowApp.on('connection', (s: Socket) => appSockets.add(s));
    slowApp.on('upgrade', (req, socket: Socket) => {
      socket.on('error', () => {});
      if (req.url === '/ws/slow') return;
      echo.server.emit('upgrade', req, socket, Buffer.alloc(0));
    });
    await new Promise<void>((r) => slowApp.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const s of appSockets) s.destroy();
      return new Promise((r) => slowApp.close(r));
    });
    const sidecar = await startSidecar({
      service: 'chat',
      lifecycle: { watchConfig: false, drainTimeoutSeconds: 1 },
      limits: { maxTunnels: 1, upstreamTimeoutSeconds: 10 },
      inbound: { target: `http://127.0.0.1:${(slowApp.address() as AddressInfo).port}`, audience: 'chat', issuers: [{ issuer: idp.issuer }] },
    });
    cleanups.push(() => sidecar.stop());
    const token = await idp.getToken('orders', 'chat');
    const handshake = (path: string) =>
      `GET ${path} HTTP/1.1\r\nHost: chat\r\nAuthorization: Bearer ${token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
    const port = Number(new URL(sidecar.inbound!).port);

    // A client that gives up on the slow handshake and closes its connection.
    const quitter = connect(port, '127.0.0.1');
    quitter.on('error', () => {});
    quitter.write(handshake('/ws/slow'));
    await new Promise((r) => setTimeout(r, 300));
    quitter.destroy();
    await new Promise((r) => setTimeout(r, 500));

    // Its slot should be free: nobody is left on that handshake.
    const next = connect(port, '127.0.0.1');
    cleanups.push(() => void next.destroy());
    next.on('error', () => {});
    const answer = await new Promise<string>((resolve) => {
      let text = '';
      next.on('data', (d: Buffer) => {
        text += d.toString('latin1');
        if (text.includes('\r\n\r\n')) resolve(text);
      });
      next.write(handshake('/ws/room'));
    });
    expect(answer).toMatch(/^HTTP\/1\.1 101 /);
  });
});
