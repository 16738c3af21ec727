import { createHash, randomBytes } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { forward } from '../../src/proxy/forward.js';
import { createUpstreamPools } from '../../src/proxy/upstreams.js';
import { closedPort, limitsWith, rawConnect, rawExchange, readResponse, startTestProxy, type TestProxy } from './proxy-harness.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function upstream(handler?: Parameters<typeof startUpstream>[0]): Promise<UpstreamApp> {
  const app = await startUpstream(handler);
  cleanups.push(() => app.close());
  return app;
}

async function proxyTo(target: string, opts: Parameters<typeof startTestProxy>[1] = {}): Promise<TestProxy> {
  const p = await startTestProxy(target, opts);
  cleanups.push(() => p.close());
  return p;
}

/** A raw node:http app whose handler sees the request before its body is read. */
async function rawApp(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(
    () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/** An app that answers every request on a connection with the raw HTTP `answer` returns (heads no node:http server writes). */
async function rawTcpApp(answer: (request: string) => string): Promise<string> {
  const { createServer: createTcpServer } = await import('node:net');
  const server = createTcpServer((s) => {
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      let end;
      while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
        const request = buf.slice(0, end);
        buf = buf.slice(end + 4);
        s.write(answer(request));
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A deterministic body of `total` bytes produced on demand, honouring backpressure; `sent` counts what the consumer took. */
function generated(total: number, chunk = 64 * 1024): { stream: Readable; sent: () => number; digest: () => string } {
  const block = randomBytes(chunk);
  const hash = createHash('sha256');
  let sent = 0;
  const stream = new Readable({
    read() {
      if (sent >= total) return void this.push(null);
      const n = Math.min(chunk, total - sent);
      const piece = n === chunk ? block : block.subarray(0, n);
      sent += n;
      hash.update(piece);
      this.push(piece);
    },
  });
  return { stream, sent: () => sent, digest: () => hash.copy().digest('hex') };
}

/** Waits until `value()` stops growing between two looks a while apart (a stall, however long it took to get there). */
async function untilStalled(value: () => number, gapMs = 300): Promise<number> {
  let last = -1;
  for (;;) {
    const v = value();
    if (v === last) return v;
    last = v;
    await new Promise((r) => setTimeout(r, gapMs));
  }
}

function get(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; headers: IncomingMessage['headers']; rawHeaders: string[]; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('forward(): streaming bodies', () => {
  it('uploads a 24 MiB body byte-identical, chunked and with Content-Length', async () => {
    const app = await upstream();
    const proxy = await proxyTo(app.url);
    const body = randomBytes(24 * 1024 * 1024);
    for (const mode of ['chunked', 'length'] as const) {
      const res = await new Promise<{ status: number; json: { bodyBytes: number; bodySha256: string } }>((resolve, reject) => {
        const headers: Record<string, string | number> = mode === 'length' ? { 'content-length': body.length } : { 'transfer-encoding': 'chunked' };
        const req = httpRequest(`${proxy.url}/upload`, { method: 'POST', headers, agent: false }, (r) => {
          let text = '';
          r.on('data', (d) => (text += d));
          r.on('end', () => resolve({ status: r.statusCode!, json: JSON.parse(text) }));
        });
        req.on('error', reject);
        // Several writes so the chunked mode really sends several chunks.
        for (let off = 0; off < body.length; off += 1024 * 1024) req.write(body.subarray(off, off + 1024 * 1024));
        req.end();
      });
      expect(res.status).toBe(200);
      expect(res.json.bodyBytes).toBe(body.length);
      expect(res.json.bodySha256).toBe(sha(body));
    }
  });

  it('downloads a 24 MiB body byte-identical', async () => {
    const body = randomBytes(24 * 1024 * 1024);
    const app = await rawApp((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      for (let off = 0; off < body.length; off += 1024 * 1024) res.write(body.subarray(off, off + 1024 * 1024));
      res.end();
    });
    const proxy = await proxyTo(app.url);
    const res = await get(`${proxy.url}/download`);
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(body.length);
    expect(sha(res.body)).toBe(sha(body));
  });

  it('does not buffer a response the client is not reading (backpressure reaches the upstream)', async () => {
    const total = 256 * 1024 * 1024;
    let body: ReturnType<typeof generated> | undefined;
    const app = await rawApp((_req, res) => {
      body = generated(total);
      res.writeHead(200, { 'content-length': total });
      body.stream.pipe(res);
    });
    const proxy = await proxyTo(app.url);
    const s = await rawConnect(proxy.port);
    cleanups.push(async () => void s.destroy());
    s.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
    s.pause(); // the client reads nothing
    while (!body) await new Promise((r) => setTimeout(r, 20));
    const produced = await untilStalled(() => body!.sent());
    // Socket buffers on both hops hold a few MiB; a buffering proxy would have pulled all 256 MiB.
    expect(produced).toBeLessThan(48 * 1024 * 1024);

    // Now read everything: nothing was lost while paused.
    const hash = createHash('sha256');
    let headerDone = false;
    let pending = Buffer.alloc(0);
    let bytes = 0;
    await new Promise<void>((resolve) => {
      s.on('data', (d: Buffer) => {
        if (!headerDone) {
          pending = Buffer.concat([pending, d]);
          const end = pending.indexOf('\r\n\r\n');
          if (end < 0) return;
          headerDone = true;
          d = pending.subarray(end + 4);
        }
        bytes += d.length;
        hash.update(d);
        if (bytes >= total) resolve();
      });
      s.resume();
    });
    expect(bytes).toBe(total);
    expect(hash.digest('hex')).toBe(body!.digest());
  });

  it('cuts a client that reads none of the response for the upstream timeout, without counting it against the upstream', async () => {
    let upstreamAborted: Promise<boolean> | undefined;
    const app = await rawApp((_req, res) => {
      upstreamAborted = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      const body = generated(256 * 1024 * 1024);
      res.writeHead(200, { 'content-length': 256 * 1024 * 1024 });
      body.stream.pipe(res);
    });
    const proxy = await proxyTo(app.url, { limits: { upstreamTimeoutSeconds: 0.5 } });
    const s = await rawConnect(proxy.port);
    cleanups.push(async () => void s.destroy());
    s.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
    s.pause(); // the client reads nothing: the proxy pauses the upstream, which keeps sending as fast as it may
    while (!upstreamAborted) await new Promise((r) => setTimeout(r, 20));
    // A client that never reads does not hold the upstream connection for good...
    expect(await upstreamAborted).toBe(true);
    // ...and it is not the upstream's failure: nothing is logged or counted as one.
    await new Promise((r) => setTimeout(r, 100));
    expect(proxy.errors).toEqual([]);
  });

  it('does not buffer an upload the upstream is not reading (backpressure reaches the client)', async () => {
    let upstreamReq: IncomingMessage | undefined;
    const hash = createHash('sha256');
    let received = 0;
    const app = await rawApp((req, res) => {
      upstreamReq = req;
      req.pause(); // the app reads nothing, for now
      req.on('end', () => res.end(JSON.stringify({ received, sha: hash.digest('hex') })));
    });
    const proxy = await proxyTo(app.url);
    const total = 256 * 1024 * 1024;
    const body = generated(total);
    let answer: Promise<string> | undefined;
    const req = httpRequest(`${proxy.url}/upload`, { method: 'PUT', headers: { 'content-length': total }, agent: false }, (res) => {
      answer = new Promise((resolve) => {
        let t = '';
        res.on('data', (d) => (t += d));
        res.on('end', () => resolve(t));
      });
    });
    req.on('error', () => {});
    body.stream.pipe(req);
    cleanups.push(async () => void req.destroy());
    while (!upstreamReq) await new Promise((r) => setTimeout(r, 20));
    const produced = await untilStalled(() => body.sent());
    expect(produced).toBeLessThan(48 * 1024 * 1024);

    upstreamReq.on('data', (c: Buffer) => {
      received += c.length;
      hash.update(c);
    });
    upstreamReq.resume();
    while (!answer) await new Promise((r) => setTimeout(r, 20));
    const result = JSON.parse(await answer);
    expect(result.received).toBe(total);
    expect(result.sha).toBe(body.digest());
  });
});

describe('forward(): header hygiene (RFC 9110 §7.6.1)', () => {
  it('removes hop-by-hop and Connection-named request headers, keeps end-to-end ones byte-exact', async () => {
    const app = await upstream();
    const proxy = await proxyTo(app.url);
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const tracestate = 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE';
    const answer = await rawExchange(
      proxy.port,
      [
        'POST /h?q=1 HTTP/1.1',
        'Host: orders.internal',
        'Connection: close, X-Named-One , x-named-two',
        'X-Named-One: secret-for-this-hop',
        'X-Named-Two: also',
        'Keep-Alive: timeout=99',
        'TE: trailers',
        'Trailer: x-checksum',
        'Upgrade: h2c',
        'Proxy-Authorization: Basic dXNlcjpwYXNz',
        'Proxy-Connection: keep-alive',
        'Proxy-Anything: x',
        'Transfer-Encoding: chunked',
        `traceparent: ${traceparent}`,
        `tracestate: ${tracestate}`,
        'X-Custom: Kept  as-is',
        '',
        '5',
        'hello',
        '0',
        '',
        '',
      ].join('\r\n'),
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
    const seen = app.seen[0]!;
    const names = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const gone of ['x-named-one', 'x-named-two', 'keep-alive', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-connection', 'proxy-anything']) {
      expect(names).not.toContain(gone);
    }
    // The upstream hop has its own framing and connection management.
    expect(seen.headers.connection).not.toMatch(/x-named/i);
    expect(seen.headers.traceparent).toBe(traceparent);
    expect(seen.headers.tracestate).toBe(tracestate);
    expect(seen.headers['x-custom']).toBe('Kept  as-is');
    expect(seen.headers.host).toBe('orders.internal');
    expect(seen.url).toBe('/h?q=1');
    expect(seen.bodyBytes).toBe(5);
  });

  it('removes hop-by-hop and Connection-named response headers, keeps repeated Set-Cookie', async () => {
    const app = await rawApp((_req, res) => {
      res.setHeader('connection', 'keep-alive, X-Resp-Named');
      res.setHeader('x-resp-named', 'hop-only');
      res.setHeader('keep-alive', 'timeout=99');
      res.setHeader('trailer', 'x-sum');
      res.setHeader('proxy-authenticate', 'Basic realm="x"');
      res.setHeader('upgrade', 'h2c');
      res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; Path=/']);
      res.setHeader('x-end-to-end', 'yes');
      res.writeHead(201);
      res.write('part one, ');
      res.end('part two');
    });
    const proxy = await proxyTo(app.url);
    const res = await get(`${proxy.url}/r`);
    expect(res.status).toBe(201);
    expect(res.body.toString()).toBe('part one, part two');
    expect(res.headers['x-resp-named']).toBeUndefined();
    expect(res.headers['trailer']).toBeUndefined();
    expect(res.headers['proxy-authenticate']).toBeUndefined();
    expect(res.headers['upgrade']).toBeUndefined();
    expect(res.headers['keep-alive'] ?? '').not.toContain('99');
    expect(res.headers['x-end-to-end']).toBe('yes');
    expect(res.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/']);
  });

  it('appends X-Forwarded-For/-Proto/-Host to what earlier hops said', async () => {
    const app = await upstream();
    const proxy = await proxyTo(app.url);
    await rawExchange(
      proxy.port,
      'GET / HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.2\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n',
    );
    await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: first.example\r\nConnection: close\r\n\r\n');
    const [withHops, fresh] = app.seen;
    expect(withHops!.headers['x-forwarded-for']).toBe('203.0.113.7, 198.51.100.2, 127.0.0.1');
    expect(withHops!.headers['x-forwarded-proto']).toBe('https, http');
    expect(withHops!.headers['x-forwarded-host']).toBe('api.example');
    expect(fresh!.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(fresh!.headers['x-forwarded-proto']).toBe('http');
    expect(fresh!.headers['x-forwarded-host']).toBe('first.example');
    // One line each: the appended hop is at the end of a single list.
    expect(withHops!.rawHeaders.filter((n) => n.toLowerCase() === 'x-forwarded-for')).toHaveLength(1);
  });

  it('drops the caller-named headers before adding its own (identity headers cannot be spoofed)', async () => {
    const app = await upstream();
    const proxy = await proxyTo(app.url, { dropHeaders: ['x-peer-sub', 'authorization'], addHeaders: ['x-peer-sub', 'verified-subject'] });
    await get(`${proxy.url}/`, { 'X-Peer-Sub': 'forged', authorization: 'Bearer abc' });
    expect(app.seen[0]!.headers['x-peer-sub']).toBe('verified-subject');
    expect(app.seen[0]!.headers.authorization).toBeUndefined();
  });

  it('answers Expect: 100-continue itself and forwards the body without the Expect header', async () => {
    const app = await upstream();
    const proxy = await proxyTo(app.url);
    const status = await new Promise<{ continued: boolean; status: number }>((resolve, reject) => {
      let continued = false;
      const req = httpRequest(`${proxy.url}/e`, { method: 'POST', headers: { expect: '100-continue', 'content-length': 3 }, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve({ continued, status: res.statusCode! }));
      });
      req.on('continue', () => {
        continued = true;
        req.end('abc');
      });
      req.on('error', reject);
    });
    expect(status).toEqual({ continued: true, status: 200 });
    expect(app.seen[0]!.headers.expect).toBeUndefined();
    expect(app.seen[0]!.bodyBytes).toBe(3);
  });

  it('passes HEAD, 204 and 304 answers through without inventing a body', async () => {
    const app = await rawApp((req, res) => {
      if (req.url === '/204') return void res.writeHead(204).end();
      if (req.url === '/304') return void res.writeHead(304, { etag: '"v1"' }).end();
      res.writeHead(200, { 'content-length': 11, 'content-type': 'text/plain' }).end(req.method === 'HEAD' ? undefined : 'hello world');
    });
    const proxy = await proxyTo(app.url);
    const head = await get(`${proxy.url}/x`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe('11');
    expect(head.body.length).toBe(0);
    expect((await get(`${proxy.url}/204`)).status).toBe(204);
    const notModified = await get(`${proxy.url}/304`, { 'if-none-match': '"v1"' });
    expect(notModified.status).toBe(304);
    expect(notModified.headers.etag).toBe('"v1"');
  });

  it("passes a 304 through whole with the Content-Length of the body it stands for, and drops the one a 204 must not have (RFC 9110 §8.6)", async () => {
    // node:http will not write such a head, so the app writes raw HTTP.
    const app = await rawTcpApp((request) =>
      request.startsWith('GET /304')
        ? 'HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: "a"\r\n\r\n'
        : 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kind: none\r\n\r\n',
    );
    const proxy = await proxyTo(app);
    const notModified = await get(`${proxy.url}/304`);
    expect([notModified.status, notModified.headers.etag, notModified.body.length]).toEqual([304, '"a"', 0]);
    expect(notModified.headers['content-length']).toBe('100');
    const noContent = await get(`${proxy.url}/204`);
    expect([noContent.status, noContent.headers['x-kind'], noContent.body.length]).toEqual([204, 'none', 0]);
    expect(noContent.rawHeaders.map((h) => h.toLowerCase())).not.toContain('content-length');
    expect(proxy.errors).toEqual([]);
  });

  it('passes 103 Early Hints on to an HTTP/1.1 client before the response, never to an HTTP/1.0 one (RFC 9110 §15.2)', async () => {
    const app = await rawTcpApp(() => 'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    const proxy = await proxyTo(app);
    const v11 = await rawExchange(proxy.port, 'GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(v11).toMatch(/^HTTP\/1\.1 103 Early Hints\r\nLink: <\/style\.css>; rel=preload; as=style\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
    expect(v11.endsWith('\r\n\r\nok')).toBe(true);
    const v10 = await rawExchange(proxy.port, 'GET /page HTTP/1.0\r\nHost: x\r\n\r\n');
    expect(v10).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(v10).not.toContain('103');
  });

  it('ends the connection with a response that came before the request body was all sent, so the rest is never read as a next request', async () => {
    // The app answers at the first chunk, as an app that refuses an upload early does.
    const { createServer: createTcpServer } = await import('node:net');
    let requests = 0;
    const server = createTcpServer((s) => {
      s.once('data', () => {
        requests++;
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly');
      });
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => server.close(() => r())));
    const proxy = await proxyTo(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    const client = await rawConnect(proxy.port);
    client.write('POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
    const early = await readResponse(client);
    expect([early.status, early.body, early.headers.connection]).toEqual([200, 'early', 'close']);
    // What the client sends next would otherwise wait on a connection nobody reads; here the connection ends.
    client.write('5\r\nworld\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise<void>((r) => (client.destroyed ? r() : client.once('close', () => r())));
    expect(requests).toBe(1);
  });

  it('refuses a response in a transfer coding other than chunked with 502 upstream_bad_response (the client would get decoded bytes labelled as coded)', async () => {
    const app = await rawTcpApp(() => 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n');
    const proxy = await proxyTo(app);
    const res = await get(`${proxy.url}/coded`);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body.toString()).reason).toBe('upstream_bad_response');
    expect(proxy.errors).toEqual(['upstream_bad_response']);
  });
});

describe('forward(): upstream failures', () => {
  it('answers 502 upstream_connect_failed when nothing listens upstream', async () => {
    const port = await closedPort();
    const proxy = await proxyTo(`http://127.0.0.1:${port}`);
    const res = await get(`${proxy.url}/`);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body.toString())).toEqual({ error: 'upstream is unreachable', reason: 'upstream_connect_failed' });
    expect(proxy.errors).toEqual(['upstream_connect_failed']);
  });

  it('answers 504 upstream_timeout when the upstream does not answer in time', async () => {
    const app = await rawApp(() => {
      /* never answers */
    });
    const proxy = await proxyTo(app.url, { limits: { upstreamTimeoutSeconds: 0.3 } });
    const res = await get(`${proxy.url}/slow`);
    expect(res.status).toBe(504);
    expect(JSON.parse(res.body.toString()).reason).toBe('upstream_timeout');
    expect(proxy.errors).toEqual(['upstream_timeout']);
  });

  it('answers a request queued behind a busy connection with 504 upstream_timeout, never sends it, and keeps the connection', async () => {
    // One connection, held by an upload the app keeps taking (so that exchange never times out) and answers once it ends.
    const seen: string[] = [];
    let connections = 0;
    const app = await rawApp((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      req.resume();
      req.on('end', () => res.end('done'));
    });
    app.server.on('connection', () => connections++);
    const limits = { upstreamTimeoutSeconds: 0.3, upstreamConnectTimeoutSeconds: 0.2, upstreamConnections: 1, requestTimeoutSeconds: 0 };
    const proxy = await proxyTo(app.url, { limits });
    const uploader = await rawConnect(proxy.port);
    cleanups.push(async () => void uploader.destroy());
    uploader.write('POST /busy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
    let queuedAnswered = false;
    let chunksSent = 0;
    const uploading = (async () => {
      // Until the queued request has its answer; without a queue deadline that answer would wait for this upload to end.
      while (!queuedAnswered && chunksSent < 200) {
        uploader.write('1\r\na\r\n');
        chunksSent++;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await vi.waitFor(() => expect(seen).toEqual(['POST /busy']));

    const queued = await get(`${proxy.url}/queued`);
    queuedAnswered = true;
    await uploading;
    expect(queued.status).toBe(504);
    expect(JSON.parse(queued.body.toString())).toMatchObject({ reason: 'upstream_timeout', error: 'no upstream connection was free in time' });
    expect(chunksSent).toBeLessThan(200);
    expect(proxy.errors).toEqual(['upstream_timeout']);

    // The upload ends and is answered. Its connection is free again: the timed-out request is dropped unsent, and the
    // connection stays open for the next one (cancelling the request through undici's abort would have closed it).
    uploader.write('0\r\n\r\n');
    expect((await readResponse(uploader)).status).toBe(200);
    const after = await get(`${proxy.url}/after`);
    expect([after.status, after.body.toString()]).toEqual([200, 'done']);
    expect(seen).toEqual(['POST /busy', 'GET /after']);
    expect(connections).toBe(1);
  });

  it('cuts the client connection when the upstream stalls mid-body longer than the upstream timeout, and aborts the upstream request', async () => {
    let upstreamAborted: Promise<boolean> | undefined;
    const app = await rawApp((_req, res) => {
      upstreamAborted = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      res.writeHead(200, { 'content-length': 1000 });
      res.write('first part'); // ...and then nothing more
    });
    const proxy = await proxyTo(app.url, { limits: { upstreamTimeoutSeconds: 0.3 } });
    const outcome = await new Promise<{ status: number; body: string; complete: boolean }>((resolve) => {
      httpRequest(`${proxy.url}/stall`, { agent: false }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        const done = () => resolve({ status: res.statusCode!, body, complete: res.complete });
        res.on('close', done);
        res.on('error', done);
      })
        .on('error', () => {})
        .end();
    });
    expect(outcome).toEqual({ status: 200, body: 'first part', complete: false });
    expect(await upstreamAborted).toBe(true);
    expect(proxy.errors).toEqual(['upstream_timeout']);
  });

  it('gives up on an upstream that stops reading the request body: upstream_timeout, even with no client-side request timeout', async () => {
    // Accepts the connection and never reads from it: undici's writes fill the socket, and it pauses the upload.
    const { createServer: createTcpServer } = await import('node:net');
    const sockets: Array<{ destroy(): void }> = [];
    const deaf = createTcpServer((s) => {
      s.pause();
      sockets.push(s);
    });
    await new Promise<void>((r) => deaf.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => deaf.close(() => r()) && sockets.forEach((s) => s.destroy())));
    const proxy = await proxyTo(`http://127.0.0.1:${(deaf.address() as AddressInfo).port}`, { limits: { upstreamTimeoutSeconds: 0.5, requestTimeoutSeconds: 0 } });
    const body = generated(256 * 1024 * 1024);
    const ended = await new Promise<string>((resolve) => {
      const req = httpRequest(`${proxy.url}/upload`, { method: 'POST', agent: false, headers: { 'content-length': String(256 * 1024 * 1024) } }, (res) => {
        res.resume();
        res.on('end', () => resolve(`${res.statusCode} ${res.headers.connection}`));
      });
      req.on('error', () => resolve('connection cut before an answer'));
      body.stream.pipe(req);
    });
    // 504, and the connection ends with it: the rest of the upload is never read as a next request.
    expect(ended).toBe('504 close');
    expect(body.sent()).toBeLessThan(256 * 1024 * 1024);
    await vi.waitFor(() => expect(proxy.errors).toEqual(['upstream_timeout']));
  });

  it('does not count a slow upload against the upstream timeout; the clock starts once the body is sent', async () => {
    const app = await rawApp((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => res.writeHead(200, { 'content-length': body.length }).end(body));
    });
    // The upstream gets 0.5 s (to connect, then to answer once the body is in): far more than a loopback exchange takes
    // on a loaded machine. A slow machine only makes the client's pauses longer, never shorter.
    const proxy = await proxyTo(app.url, { limits: { upstreamTimeoutSeconds: 0.5 } });
    const s = await rawConnect(proxy.port);
    cleanups.push(async () => void s.destroy());
    s.write('POST /slow-upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab');
    // The upload takes far longer than the upstream timeout, in small pieces: each pause alone is longer than the
    // timeout and the quarter of it by which the watch may fire late.
    for (const piece of ['cd', 'ef']) {
      await new Promise((r) => setTimeout(r, 800));
      s.write(piece);
    }
    const res = await readResponse(s);
    expect(res.status).toBe(200);
    expect(res.body).toBe('abcdef');
    expect(proxy.errors).toEqual([]);
  });

  it('does not send a request again after the upstream answered it with a 100 or 101 nobody asked for (502 upstream_bad_response, sent once)', async () => {
    for (const interim of ['HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n']) {
      let received = 0;
      const app = await rawTcpApp(() => {
        received++;
        return `${interim}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`;
      });
      const proxy = await proxyTo(app);
      // DELETE is idempotent: only the stale-connection retry could send it twice, and this connection was not stale.
      const res = await get(`${proxy.url}/orders/42`, {}, 'DELETE');
      expect(res.status, interim).toBe(502);
      expect(JSON.parse(res.body.toString()).reason, interim).toBe('upstream_bad_response');
      expect(received, interim).toBe(1);
    }
  });

  it('answers 502 upstream_reset when the upstream closes the connection before answering', async () => {
    const app = await rawApp((req) => req.socket.destroy());
    const proxy = await proxyTo(app.url);
    const res = await get(`${proxy.url}/`);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body.toString()).reason).toBe('upstream_reset');
  });

  for (const framing of ['content-length', 'chunked'] as const) {
    it(`cuts the client connection when the upstream resets mid-body (${framing}): never a fake complete response`, async () => {
      const app = await rawApp((req, res) => {
        res.writeHead(200, framing === 'content-length' ? { 'content-length': 1_000_000 } : {});
        res.write(Buffer.alloc(100_000, 1), () => setTimeout(() => req.socket.destroy(), 20));
      });
      const proxy = await proxyTo(app.url);
      const outcome = await new Promise<{ status: number; bytes: number; complete: boolean }>((resolve) => {
        const req = httpRequest(`${proxy.url}/`, { agent: false }, (res) => {
          let bytes = 0;
          res.on('data', (c: Buffer) => (bytes += c.length));
          res.on('end', () => resolve({ status: res.statusCode!, bytes, complete: res.complete }));
          res.on('error', () => resolve({ status: res.statusCode!, bytes, complete: res.complete }));
          res.on('close', () => resolve({ status: res.statusCode!, bytes, complete: res.complete }));
        });
        req.on('error', () => {});
        req.end();
      });
      expect(outcome.status).toBe(200);
      expect(outcome.complete).toBe(false);
      expect(outcome.bytes).toBeLessThan(1_000_000);
      // The headers had gone out, so there is no error response; the failure is still reported to be logged and counted.
      await vi.waitFor(() => expect(proxy.errors).toEqual(['upstream_reset']));
    });
  }

  it('drops a queued request whose client went away before a connection was free, unsent, and keeps that connection', async () => {
    // One connection, busy with /slow until the test lets it answer. The client of /abandoned, queued behind it, leaves.
    // When the connection comes free undici hands it the abandoned request: aborting it there (as for a request
    // already sent) destroyed the healthy keep-alive connection, at the moment a struggling app's callers give up.
    const seen: string[] = [];
    let connections = 0;
    let answerSlow!: () => void;
    const app = await rawApp((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      if (req.url === '/slow') answerSlow = () => res.end('slow');
      else res.end('ok');
    });
    app.server.on('connection', () => connections++);
    const proxy = await proxyTo(app.url, { limits: { upstreamConnections: 1 } });
    const slow = get(`${proxy.url}/slow`);
    await vi.waitFor(() => expect(seen).toEqual(['GET /slow']));
    // The proxy has the request once its handler ran (forward() queues it in the pool at once), and knows its client
    // left once the response closed.
    const gone = new Promise<void>((resolve) => proxy.server.once('request', (_req, res) => (abandoned.destroy(), res.once('close', () => resolve()))));
    const abandoned = await rawConnect(proxy.port);
    abandoned.write('GET /abandoned HTTP/1.1\r\nHost: x\r\n\r\n');
    await gone;
    answerSlow();
    expect((await slow).status).toBe(200);
    const next = await get(`${proxy.url}/next`);
    expect([next.status, next.body.toString()]).toEqual([200, 'ok']);
    expect(seen).toEqual(['GET /slow', 'GET /next']);
    expect(connections).toBe(1);
  });

  it('cancels the upstream request when the client goes away while waiting', async () => {
    let upstreamClosed: Promise<boolean> | undefined;
    const app = await rawApp((req, res) => {
      upstreamClosed = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      // Never answers: only a cancelled request ends this exchange.
    });
    const proxy = await proxyTo(app.url);
    const s = await rawConnect(proxy.port);
    s.write('GET /wait HTTP/1.1\r\nHost: x\r\n\r\n');
    while (!upstreamClosed) await new Promise((r) => setTimeout(r, 10));
    s.destroy();
    expect(await upstreamClosed).toBe(true);
    expect(proxy.errors).toEqual([]);
  });

  it('takes a client that half-closes after its request (FIN, as a closed socket sends) as gone: the upstream request is cancelled', async () => {
    // A socket closed by a client that gave up (a timeout, a killed process) sends the same FIN as `nc -N` does after
    // its request, and the server cannot tell them apart; like nginx and Envoy, the sidecar stops the work.
    let upstreamClosed: Promise<boolean> | undefined;
    const app = await rawApp((_req, res) => {
      upstreamClosed = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
    });
    const proxy = await proxyTo(app.url);
    const s = await rawConnect(proxy.port);
    let answer = '';
    s.on('data', (d: Buffer) => (answer += d.toString()));
    s.write('GET /wait HTTP/1.1\r\nHost: x\r\n\r\n');
    while (!upstreamClosed) await new Promise((r) => setTimeout(r, 10));
    s.end();
    expect(await upstreamClosed).toBe(true);
    await new Promise((r) => (s.closed ? r(undefined) : s.once('close', r)));
    expect(answer).toBe('');
    expect(proxy.errors).toEqual([]);
  });

  it('does not call the upstream for a client that went away before forward() began (while a token was fetched)', async () => {
    let requests = 0;
    const app = await rawApp((_req, res) => {
      requests++;
      res.end('ok');
    });
    const pools = createUpstreamPools(limitsWith());
    cleanups.push(() => pools.destroy());
    let received = false;
    let forwarded: Promise<void> | undefined;
    const server = createServer((req, res) => {
      received = true;
      // What the outbound handler does while a token is fetched: wait (here, until the client has gone), then forward.
      req.socket.once('close', () => {
        forwarded = forward(req, res, { dispatcher: pools.get(new URL(app.url).origin), path: '/late', dropHeaders: new Set(), addHeaders: [] });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => server.close(() => r())));
    const s = await rawConnect((server.address() as AddressInfo).port);
    s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    while (!received) await new Promise((r) => setTimeout(r, 10));
    s.destroy();
    while (!forwarded) await new Promise((r) => setTimeout(r, 10));
    await forwarded;
    // A request to the same app afterwards goes through: the pool was not left holding a connection.
    expect(await (await pools.get(new URL(app.url).origin).request({ path: '/after', method: 'GET' })).body.text()).toBe('ok');
    expect(requests).toBe(1);
  });

  it('cancels the upstream request when the client goes away mid-upload', async () => {
    let upstreamAborted: Promise<boolean> | undefined;
    let upstreamBytes = 0;
    const app = await rawApp((req) => {
      upstreamAborted = new Promise((resolve) => {
        req.on('data', (c: Buffer) => (upstreamBytes += c.length));
        req.on('close', () => resolve(!req.complete));
      });
    });
    const proxy = await proxyTo(app.url);
    const s = await rawConnect(proxy.port);
    s.write('POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n');
    s.write(Buffer.alloc(50_000, 7));
    while (!upstreamAborted || upstreamBytes === 0) await new Promise((r) => setTimeout(r, 10));
    s.destroy();
    expect(await upstreamAborted).toBe(true);
    expect(proxy.errors).toEqual([]);
  });

  it('keeps serving on the same keep-alive connection after an upstream error', async () => {
    const port = await closedPort();
    const proxy = await proxyTo(`http://127.0.0.1:${port}`);
    const s = await rawConnect(proxy.port);
    cleanups.push(async () => void s.destroy());
    s.write('GET /1 HTTP/1.1\r\nHost: x\r\n\r\n');
    expect((await readResponse(s)).status).toBe(502);
    s.write('GET /2 HTTP/1.1\r\nHost: x\r\n\r\n');
    expect((await readResponse(s)).status).toBe(502);
  });
});
