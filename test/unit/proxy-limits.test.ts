import { request as httpRequest } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { configSchema, type LimitsConfig } from '../../src/config/schema.js';
import type { LimitedServerOptions } from '../../src/proxy/listen.js';
import { refuseUpgrade } from '../../src/proxy/tunnel.js';
import { selfSignedCert } from '../support/certs.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { rawConnect, rawExchange, readResponse, startTestProxy, type TestProxy } from './proxy-harness.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function setup(limits: Partial<LimitsConfig> = {}, server?: LimitedServerOptions): Promise<{ app: UpstreamApp; proxy: TestProxy }> {
  const app = await startUpstream();
  const proxy = await startTestProxy(app.url, { limits, ...(server ? { server } : {}) });
  cleanups.push(() => app.close(), () => proxy.close());
  return { app, proxy };
}

function headerLines(n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += `X-H${i}: v\r\n`;
  return s;
}

function jsonBody(raw: string): unknown {
  return JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4));
}

/** Plain GET through a fresh connection; resolves with the status. */
function getStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    httpRequest(url, { agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    })
      .on('error', reject)
      .end();
  });
}

describe('header limits', () => {
  it('refuses more headers than limits.maxHeaderCount with 431 instead of silently truncating', async () => {
    const { app, proxy } = await setup({ maxHeaderCount: 20 });
    // Host + 18 + Connection = 20: exactly at the limit passes.
    const ok = await rawExchange(proxy.port, `GET /ok HTTP/1.1\r\nHost: x\r\n${headerLines(18)}Connection: close\r\n\r\n`);
    expect(ok).toMatch(/^HTTP\/1\.1 200/);
    // One more, and the last one is an Authorization header Node would have dropped from req.headers.
    const over = await rawExchange(proxy.port, `GET /over HTTP/1.1\r\nHost: x\r\n${headerLines(18)}Connection: close\r\nAuthorization: Bearer hidden\r\n\r\n`);
    expect(over).toMatch(/^HTTP\/1\.1 431 /);
    expect(jsonBody(over)).toEqual({ error: 'more than 20 request headers', reason: 'too_many_headers' });
    expect(app.seen.map((s) => s.url)).toEqual(['/ok']);
  });

  it('refuses a header block larger than limits.maxHeaderBytes with 431', async () => {
    const { app, proxy } = await setup({ maxHeaderBytes: 4096 });
    const answer = await rawExchange(proxy.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(5000)}\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
    expect(jsonBody(answer)).toEqual({ error: 'the request header block is larger than limits.maxHeaderBytes', reason: 'headers_too_large' });
    expect(app.seen).toHaveLength(0);
    expect(await getStatus(`${proxy.url}/after`)).toBe(200);
  });

  it('refuses two Host headers with 400 (RFC 9112 §3.2)', async () => {
    const { app, proxy } = await setup();
    const answer = await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(jsonBody(answer)).toMatchObject({ reason: 'bad_request' });
    expect(app.seen).toHaveLength(0);
  });

  it('refuses a Host that is not host[:port] with 400 (RFC 9112 §3.2) and passes a valid one as sent', async () => {
    const { app, proxy } = await setup();
    for (const host of ['a@b', 'a/b', 'a b', 'a:1:2', '[::1', 'a\\b']) {
      const answer = await rawExchange(proxy.port, `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      expect(answer, host).toMatch(/^HTTP\/1\.1 400 /);
      expect(jsonBody(answer), host).toEqual({ error: 'the Host header is not a valid host[:port]', reason: 'bad_request' });
    }
    expect(app.seen).toHaveLength(0);
    await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n');
    expect(app.seen.map((r) => r.headers.host)).toEqual(['[::1]:8080']);
  });

  it('answers a malformed request with 400 JSON and keeps serving', async () => {
    const { proxy } = await setup();
    const answer = await rawExchange(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(jsonBody(answer)).toEqual({ error: expect.stringMatching(/^malformed request \(HPE_[A-Z_]+\)$/), reason: 'bad_request' });
    expect(await getStatus(`${proxy.url}/`)).toBe(200);
  });
});

describe('transfer codings (RFC 9112 §6.1)', () => {
  const body = '3\r\nabc\r\n0\r\n\r\n';

  const notSupported = { status: 501, reason: 'transfer_coding_not_supported', error: 'only the chunked transfer coding is supported' };
  it.each([
    ['gzip, chunked', notSupported],
    ['deflate,chunked', notSupported],
    ['GZIP , Chunked', notSupported],
    ['gzip\r\nTransfer-Encoding: chunked', notSupported],
    ['gzip', { status: 400, reason: 'bad_request', error: 'chunked is not the final transfer coding, so the body length is unknown' }],
  ])('refuses Transfer-Encoding: %j and never calls the app', async (te, want) => {
    const { app, proxy } = await setup();
    const answer = await rawExchange(proxy.port, `POST /coded HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ${te}\r\n\r\n${body}`);
    expect(answer).toMatch(new RegExp(`^HTTP/1\\.1 ${want.status} `));
    expect(answer).toMatch(/\r\nconnection: close\r\n/i);
    expect(jsonBody(answer)).toEqual({ error: want.error, reason: want.reason });
    expect(app.seen).toHaveLength(0);
    expect(await getStatus(`${proxy.url}/after`)).toBe(200);
  });

  it('forwards chunked alone in any case and spacing, and nothing else', async () => {
    const { app, proxy } = await setup();
    for (const te of ['chunked', 'Chunked', 'CHUNKED', '\tchunked ', ', chunked', 'gzip, chunked']) {
      await rawExchange(proxy.port, `POST /${encodeURIComponent(te)} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ${te}\r\nConnection: close\r\n\r\n${body}`);
    }
    expect(app.seen.map((r) => [decodeURIComponent(r.url.slice(1)), r.bodyBytes])).toEqual([
      ['chunked', 3],
      ['Chunked', 3],
      ['CHUNKED', 3],
      ['\tchunked ', 3],
      [', chunked', 3],
    ]);
  });
});

/**
 * Pipelining tests: an app that holds each answer (`done <url>`) until the test releases it, unless `answerAtOnce`
 * says otherwise, behind a test proxy, and one raw client connection to the proxy.
 */
async function heldPipeline(opts: { answerAtOnce?: (url: string) => boolean; server?: LimitedServerOptions; tls?: boolean } = {}) {
  const held: Array<() => void> = [];
  const app = await startUpstream((req, res) => (opts.answerAtOnce?.(req.url!) ? res.end('ok') : void held.push(() => res.end(`done ${req.url}`))));
  const cert = opts.tls ? selfSignedCert('pipeline') : undefined;
  const proxy = await startTestProxy(app.url, { ...(opts.server ? { server: opts.server } : {}), ...(cert ? { tls: { certFile: cert.cert, keyFile: cert.key } } : {}) });
  cleanups.push(() => app.close(), () => proxy.close());
  const socket: Socket = cert
    ? await new Promise<Socket>((resolve, reject) => {
        const s = tlsConnect({ port: proxy.port, host: '127.0.0.1', ca: cert.pem }, () => resolve(s));
        s.once('error', reject);
      })
    : await rawConnect(proxy.port);
  let answer = '';
  socket.on('data', (d) => (answer += d.toString('latin1')));
  const closed = new Promise<void>((r) => socket.on('close', () => r()));
  const untilHeld = async () => {
    while (held.length < 1) await new Promise((r) => setTimeout(r, 10));
  };
  return {
    app,
    proxy,
    socket,
    closed,
    untilHeld,
    /** Waits until the app holds an answer, then lets it go. */
    release: async () => {
      await untilHeld();
      held.shift()!();
    },
    answer: () => answer,
    responses: () => answer.split(/(?=HTTP\/1\.1 )/),
  };
}

const statusesOf = (responses: string[]) => responses.map((r) => Number(r.slice(9, 12)));
const urlsSeen = (app: UpstreamApp) => app.seen.map((r) => r.url);

describe('pipelining (RFC 9112 §9.3.2)', () => {
  it.each([
    ['a malformed request', 'GARBAGE\r\n\r\n', 400, 'bad_request'],
    ['an oversize header block', `GET /second HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
  ])('answers the requests before %s first, then refuses it and closes', async (_what, bad, status, reason) => {
    // The app holds its answers, so the refusal is due while the first response is pending.
    const p = await heldPipeline();
    // One write: the proxy parses the bad request right after the first, before the first reaches the app.
    p.socket.write(`GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /also HTTP/1.1\r\nHost: x\r\n\r\n${bad}`);
    await p.release();
    await p.release();
    await p.closed;

    const responses = p.responses();
    expect(statusesOf(responses)).toEqual([200, 200, status]);
    expect(responses[0]).toMatch(/\r\n\r\ndone \/first$/);
    expect(responses[2]).toMatch(/\r\nconnection: close\r\n/i);
    expect(jsonBody(responses[2]!)).toMatchObject({ reason });
    expect(urlsSeen(p.app)).toEqual(['/first', '/also']);
  });
});

describe('pipelining: one request of a connection at a time', () => {
  it('a request pipelined behind one still being answered reaches the app only after that answer is complete', async () => {
    // Two POSTs in one write. Were both handed upstream as soon as parsed, the second would reach the app on a
    // second connection while the first is held, and could act before it (RFC 9112 §9.3.2: only safe requests may
    // be worked on in parallel).
    const p = await heldPipeline();
    p.socket.write('POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\naPOST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nb');
    await p.untilHeld();
    // The second request has been parsed by now; it must still be waiting in the proxy.
    await new Promise((r) => setTimeout(r, 100));
    expect(urlsSeen(p.app)).toEqual(['/first']);
    await p.release();
    await p.untilHeld();
    expect(urlsSeen(p.app)).toEqual(['/first', '/second']);
    await p.release();
    await p.closed;

    const responses = p.responses();
    expect(statusesOf(responses)).toEqual([200, 200]);
    expect(responses.map((r) => r.slice(r.indexOf('\r\n\r\n') + 4))).toEqual(['done /first', 'done /second']);
  });

  it.each([['plain', false], ['TLS', true]])('stops reading a connection while a request of it waits: a flood pipelined behind a held answer is not parsed without bound (%s)', async (_name, tls) => {
    // Node's own flood guard pauses a connection once the answers queued on it pass its buffer, but waiting requests
    // queue no answer: were the connection read on, every request the client sends behind a slow one would be parsed
    // and kept (about 2 KB of heap for 30 bytes sent). Reading resumes when the waiting requests have had their turn.
    // Over TLS the rest of a decrypted read still arrives after the pause: it must be parsed, not refused as an error.
    const p = await heldPipeline({ answerAtOnce: (url) => url !== '/first', tls });
    let parsed = 0;
    p.proxy.server.on('request', () => parsed++);
    const flood = 4000;
    p.socket.write(`GET /first HTTP/1.1\r\nHost: x\r\n\r\n${'GET /a HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(flood)}`);
    await p.untilHeld();
    // Everything the proxy reads is parsed at once; wait until it reads no more.
    for (let last = -1; parsed !== last; ) {
      last = parsed;
      await new Promise((r) => setTimeout(r, 200));
    }
    // One read (64 KiB, about 2,200 of these requests) is parsed before the pause takes effect; the rest stays unread.
    expect(parsed).toBeLessThan(flood);
    await p.release();
    // Then every request is answered, in order, and the connection stays usable.
    while (p.responses().length < flood + 1) await new Promise((r) => setTimeout(r, 20));
    expect(parsed).toBe(flood + 1);
    const responses = p.responses();
    expect(new Set(statusesOf(responses))).toEqual(new Set([200]));
    expect(responses[0]).toMatch(/\r\n\r\ndone \/first$/);
    expect(urlsSeen(p.app)).toHaveLength(flood + 1);
  }, 30_000);

  it('an Upgrade behind enough waiting requests to stop reading gets a tunnel that reads again', async () => {
    // The listener's upgrade handler switches at once and echoes, as a WebSocket app behind a tunnel would answer.
    const upgrade = (_req: unknown, socket: Duplex, head: Buffer) => {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
      if (head.length) socket.write(head);
      socket.pipe(socket);
    };
    const p = await heldPipeline({ answerAtOnce: (url) => url !== '/first', server: { upgrade } });
    const waiting = 40;
    p.socket.write(`GET /first HTTP/1.1\r\nHost: x\r\n\r\n${'GET /a HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(waiting)}GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    await p.release();
    while (!p.answer().includes(' 101 ')) await new Promise((r) => setTimeout(r, 10));
    p.socket.write('ping');
    while (!p.answer().endsWith('ping')) await new Promise((r) => setTimeout(r, 10));
    expect(statusesOf(p.responses())).toEqual([...Array<number>(waiting + 1).fill(200), 101]);
  });

  it('a client that closes while its pipelined request waits: the waiting request never reaches the app', async () => {
    const p = await heldPipeline({ answerAtOnce: (url) => url === '/after' });
    p.socket.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\nDELETE /second HTTP/1.1\r\nHost: x\r\n\r\n');
    await p.untilHeld();
    p.socket.destroy();
    await p.closed;
    await p.release();
    // The proxy keeps serving, and the DELETE was dropped with its connection.
    expect(await getStatus(`${p.proxy.url}/after`)).toBe(200);
    expect(urlsSeen(p.app)).toEqual(['/first', '/after']);
  });
});

describe('pipelining: an Upgrade request behind requests still being answered', () => {
  it('gets its answer after theirs, in order (here a refusal the upgrade handler sends at once)', async () => {
    // The listener's upgrade handler answers at once, as the sidecars do for a WebSocket handshake they refuse.
    const p = await heldPipeline({ server: { upgrade: (_req, socket) => refuseUpgrade(socket) } });
    p.socket.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /h2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    await p.untilHeld();
    // The upgrade request has been parsed and handled by now; its answer must not have taken the first one's place.
    await new Promise((r) => setTimeout(r, 50));
    expect(p.answer()).toBe('');
    await p.release();
    await p.closed;

    const responses = p.responses();
    expect(statusesOf(responses)).toEqual([200, 400]);
    expect(responses[0]).toMatch(/\r\n\r\ndone \/first$/);
    expect(jsonBody(responses[1]!)).toMatchObject({ reason: 'upgrade_not_supported' });
    expect(urlsSeen(p.app)).toEqual(['/first']);
  });
});

describe('timeouts', () => {
  it('answers a client that never finishes its headers (slowloris) with 408 while others are served', async () => {
    const { proxy } = await setup({ headersTimeoutSeconds: 0.5, requestTimeoutSeconds: 5 });
    const slow = await rawConnect(proxy.port);
    let answer = '';
    slow.on('data', (d) => (answer += d));
    const closed = new Promise<void>((r) => slow.on('close', () => r()));
    slow.write('GET / HTTP/1.1\r\nHost: x\r\nX-Dribble: a');
    // Served while the slow one dribbles.
    expect(await getStatus(`${proxy.url}/meanwhile`)).toBe(200);
    slow.write('b');
    await closed;
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(jsonBody(answer)).toEqual({ error: 'the request was not complete within limits.headersTimeoutSeconds or limits.requestTimeoutSeconds', reason: 'request_timeout' });
  });

  it('closes an idle keep-alive connection after limits.keepAliveTimeoutSeconds', async () => {
    const { proxy } = await setup({ keepAliveTimeoutSeconds: 0.3 });
    const s = await rawConnect(proxy.port);
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.write('GET /1 HTTP/1.1\r\nHost: x\r\n\r\n');
    const first = await readResponse(s);
    expect(first.status).toBe(200);
    // The connection was kept open for reuse...
    s.write('GET /2 HTTP/1.1\r\nHost: x\r\n\r\n');
    expect((await readResponse(s)).status).toBe(200);
    // ...and once idle, the server closes it on its own.
    await closed;
    expect(s.destroyed).toBe(true);
  });

  it('serves real clients while 300 idle and half-open connections hang around, then sheds them', async () => {
    const { app, proxy } = await setup({ headersTimeoutSeconds: 1, requestTimeoutSeconds: 5 });
    const idle: Socket[] = [];
    const closedIdle: Promise<string>[] = [];
    for (let i = 0; i < 300; i++) {
      const s = await rawConnect(proxy.port);
      // A third send nothing, a third half a request line, a third half the headers.
      if (i % 3 === 1) s.write('GET /idle');
      if (i % 3 === 2) s.write('GET /idle HTTP/1.1\r\nHost: x\r\n');
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('error', () => {});
      closedIdle.push(new Promise((r) => s.on('close', () => r(got))));
      idle.push(s);
    }
    cleanups.push(async () => idle.forEach((s) => s.destroy()));
    const statuses = await Promise.all(Array.from({ length: 50 }, (_, i) => getStatus(`${proxy.url}/real/${i}`)));
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(app.seen.filter((s) => s.url.startsWith('/real/'))).toHaveLength(50);
    // The headers timeout reclaims every one of them; the ones that started a request are told why.
    const answers = await Promise.all(closedIdle);
    expect(answers).toHaveLength(300);
    for (let i = 1; i < 300; i += 3) expect(answers[i]).toMatch(/^HTTP\/1\.1 408 /);
    expect(app.seen.some((s) => s.url === '/idle')).toBe(false);
  });
});

describe('listener hygiene', () => {
  it('refuses CONNECT with 405 when no handler is given', async () => {
    const { proxy } = await setup();
    const answer = await rawExchange(proxy.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 405 /);
    expect(jsonBody(answer)).toMatchObject({ reason: 'connect_not_supported' });
  });

  it('applies the header-count limit to Upgrade requests too, and survives a client resetting an upgraded socket', async () => {
    const upgraded: Socket[] = [];
    const { proxy } = await setup({ maxHeaderCount: 10 }, { upgrade: (_req, socket) => void upgraded.push(socket as Socket) });
    const over = await rawExchange(proxy.port, `GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${headerLines(10)}\r\n`);
    expect(over).toMatch(/^HTTP\/1\.1 431 /);
    expect(upgraded).toHaveLength(0);

    const s = await rawConnect(proxy.port);
    s.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    while (upgraded.length === 0) await new Promise((r) => setTimeout(r, 10));
    s.resetAndDestroy();
    await new Promise((r) => upgraded[0]!.once('close', r));
    expect(await getStatus(`${proxy.url}/still-alive`)).toBe(200);
  });
});

describe('limits config', () => {
  it('refuses a headers timeout longer than the request timeout, naming the key', () => {
    const r = configSchema.safeParse({ service: 's', outbound: {}, limits: { headersTimeoutSeconds: 20, requestTimeoutSeconds: 10 } });
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.path.join('.'))).toContain('limits.headersTimeoutSeconds');
    expect(configSchema.safeParse({ service: 's', outbound: {}, limits: { headersTimeoutSeconds: 20, requestTimeoutSeconds: 0 } }).success).toBe(true);
  });
});
