import { createHmac, createPublicKey, sign as nodeSign, type KeyObject } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { connect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import fc from 'fast-check';
import { expect } from 'vitest';
import type { SidecarProcess } from './sidecar.js';
import { b64url } from './tokens.js';

/**
 * Building blocks for the hardening suites: raw-socket HTTP (clients would
 * normalise paths and merge headers), an app and an attacker server that
 * record everything at the TCP level, the attack token corpus, leak checks
 * and the fuzz budget.
 */

// ---------------------------------------------------------------- raw HTTP

export interface ParsedResponse {
  status: number;
  /** Lower-case names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: string;
  json(): any;
}

export interface Exchange {
  /** Every byte the server sent, latin1. */
  raw: string;
  /** The responses in `raw`, in order (pipelined requests get several). */
  responses: ParsedResponse[];
  /** True when the server closed the connection (false: we gave up after `idleMs` of silence). */
  closedByServer: boolean;
}

/**
 * Writes `data` byte-exact to a listener and collects the answer until the
 * server closes, or until `idleMs` (default 5000) passes with no bytes.
 */
export function rawExchange(baseUrl: string, data: string | Buffer, opts: { idleMs?: number; halfClose?: boolean } = {}): Promise<Exchange> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    let closedByServer = true;
    socket.setTimeout(opts.idleMs ?? 5000, () => {
      closedByServer = false;
      socket.destroy();
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A reset after the server answered is still an answer.
      if (chunks.length === 0 && err.code !== 'ECONNRESET') reject(err);
    });
    socket.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      resolve({ raw, responses: parseResponses(raw), closedByServer });
    });
    socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
    if (opts.halfClose) socket.end();
  });
}

/**
 * A request sent the way curl sends an upload: the head with `Expect: 100-continue` first, and the body only once
 * `100 Continue` arrives (RFC 9110 §10.1.1). Resolves with everything the server sent, once it closes (or after
 * `idleMs` of silence, default 5000), and whether the body was sent.
 */
export function expectContinueExchange(baseUrl: string, head: string, body: string, opts: { idleMs?: number } = {}): Promise<Exchange & { bodySent: boolean }> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    let closedByServer = true;
    let bodySent = false;
    socket.setTimeout(opts.idleMs ?? 5000, () => {
      closedByServer = false;
      socket.destroy();
    });
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      if (!bodySent && Buffer.concat(chunks).toString('latin1').startsWith('HTTP/1.1 100 ')) {
        bodySent = true;
        socket.write(Buffer.from(body, 'latin1'));
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (chunks.length === 0 && err.code !== 'ECONNRESET') reject(err);
    });
    socket.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      resolve({ raw, responses: parseResponses(raw), closedByServer, bodySent });
    });
    socket.write(Buffer.from(head, 'latin1'));
  });
}

/** A GET with `Connection: close`; `headers` are written as given (order, case and duplicates kept). */
export function rawRequestBytes(target: string, headers: [string, string][], opts: { method?: string; body?: string; version?: string } = {}): string {
  let head = `${opts.method ?? 'GET'} ${target} ${opts.version ?? 'HTTP/1.1'}\r\n`;
  for (const [n, v] of headers) head += `${n}: ${v}\r\n`;
  if (!headers.some(([n]) => n.toLowerCase() === 'connection')) head += 'Connection: close\r\n';
  return `${head}\r\n${opts.body ?? ''}`;
}

/** Parses every HTTP/1.1 response in a byte string (Content-Length, chunked, or to the end). */
export function parseResponses(raw: string): ParsedResponse[] {
  const out: ParsedResponse[] = [];
  let i = 0;
  while (i < raw.length) {
    const end = raw.indexOf('\r\n\r\n', i);
    if (end < 0 || !raw.startsWith('HTTP/', i)) break;
    const lines = raw.slice(i, end).split('\r\n');
    const status = Number(lines[0]!.split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':');
      const name = l.slice(0, c).trim().toLowerCase();
      const value = l.slice(c + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    let body: string;
    let next: number;
    if (status >= 100 && status < 200) {
      // An interim response (100 Continue) has no body: the final response follows it (RFC 9110 §15.2).
      body = '';
      next = end + 4;
    } else if (headers['transfer-encoding']?.toLowerCase().includes('chunked')) {
      body = '';
      let p = end + 4;
      for (;;) {
        const nl = raw.indexOf('\r\n', p);
        if (nl < 0) {
          p = raw.length;
          break;
        }
        const size = parseInt(raw.slice(p, nl), 16);
        p = nl + 2;
        if (!size) {
          p = raw.indexOf('\r\n', p) + 2 || raw.length;
          break;
        }
        body += raw.slice(p, p + size);
        p += size + 2;
      }
      next = p;
    } else if (headers['content-length'] !== undefined) {
      const len = Number(headers['content-length']);
      body = raw.slice(end + 4, end + 4 + len);
      next = end + 4 + len;
    } else {
      body = raw.slice(end + 4);
      next = raw.length;
    }
    const text = body;
    out.push({ status, headers, body: text, json: () => JSON.parse(text) });
    i = next;
  }
  return out;
}

// ---------------------------------------------------------------- servers at the network edge

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}

export interface RecordingApp {
  url: string;
  /** Every request, recorded when its head arrives (before any body), in order. */
  requests: RecordedRequest[];
  /** TCP connections accepted so far. */
  connections: number;
  close(): Promise<void>;
}

/**
 * Listens on 127.0.0.1 (a port from the OS, so tests never collide) and keeps
 * the open connections, so close() can cut them first: a server closes only
 * once every connection has ended.
 */
export async function listenTracked(server: NetServer, onConnection?: (socket: Socket) => void): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    onConnection?.(socket);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise((r) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * The protected app: answers 200 with a JSON echo of what it saw (or runs
 * `handler`), and records each request as soon as its head arrives, so even
 * a request whose body never ends counts as "reached the app".
 */
export async function startRecordingApp(handler?: (req: IncomingMessage, res: ServerResponse) => void): Promise<RecordingApp> {
  const app: RecordingApp = { url: '', requests: [], connections: 0, close: async () => {} };
  const server = createServer((req, res) => {
    app.requests.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders });
    if (handler) return handler(req, res);
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ url: req.url, sub: req.headers['x-peer-sub'] ?? null }));
    });
  });
  Object.assign(app, await listenTracked(server, () => app.connections++));
  return app;
}

export interface AttackerServer {
  url: string;
  /** TCP connections (not only requests): the sidecar must never open one. */
  connections: number;
  requests: string[];
  close(): Promise<void>;
}

/** A server an attacker controls, answering every request with `body` (e.g. a JWKS of the attacker's keys). */
export async function startAttackerServer(body: () => unknown): Promise<AttackerServer> {
  const s: AttackerServer = { url: '', connections: 0, requests: [], close: async () => {} };
  const server = createServer((req, res) => {
    s.requests.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body()));
  });
  Object.assign(s, await listenTracked(server, () => s.connections++));
  return s;
}

export interface UpgradingApp {
  url: string;
  /** Every byte each TCP connection sent (latin1), one entry per connection, in order. */
  connections: string[];
  close(): Promise<void>;
}

/**
 * An app that switches to whatever protocol an `Upgrade` request offers, as
 * an h2c-capable server does (RFC 7540 §3.2), preferring `h2c` when a list
 * names it: `101` naming the protocol, then it answers whatever follows on
 * the connection with `switched:<bytes>` and closes. A request that offers no
 * upgrade gets `200 plain` and the connection closes. A raw TCP server, so it
 * records everything, including bytes sent after the switch.
 */
export async function startUpgradingApp(): Promise<UpgradingApp> {
  const app: UpgradingApp = { url: '', connections: [], close: async () => {} };
  const server = createNetServer((sock) => {
    const index = app.connections.push('') - 1;
    sock.on('error', () => {});
    let switched = false;
    sock.on('data', (d: Buffer) => {
      app.connections[index] += d.toString('latin1');
      const text = app.connections[index]!;
      const end = text.indexOf('\r\n\r\n');
      if (switched) return void sock.end(`switched:${d.toString('latin1')}`);
      if (end < 0) return;
      const offered = [...text.slice(0, end).matchAll(/^upgrade:(.*)$/gim)].flatMap((m) => m[1]!.split(',').map((p) => p.trim())).filter(Boolean);
      if (offered.length === 0) return void sock.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain');
      const protocol = offered.find((p) => p.toLowerCase() === 'h2c') ?? offered[0]!;
      switched = true;
      sock.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${protocol}\r\n\r\n`);
      const early = text.slice(end + 4);
      if (early) sock.end(`switched:${early}`);
    });
  });
  Object.assign(app, await listenTracked(server));
  return app;
}

/** How a faulty front answers: pass through, or one way an IdP endpoint can break. */
export type FrontMode = 'pass' | 'hold' | '503' | 'reset' | 'hang' | 'truncated-json' | 'html' | 'huge' | 'no-token' | 'expired';

export interface FaultyFront {
  url: string;
  mode: FrontMode;
  /** Requests received, per mode they were answered in. */
  counts: Partial<Record<FrontMode, number>>;
  /** Forwards the requests held in mode `hold` (and switches to `pass`). */
  release(): void;
  close(): Promise<void>;
}

/**
 * An HTTP front for an IdP endpoint (the network edge) that forwards to
 * `target` in mode `pass`, holds requests in mode `hold` until release(),
 * and otherwise fails the way real endpoints do: a
 * 503, a reset, no answer, a cut-off JSON body, an HTML error page, a
 * 20 MiB body, a 200 without a token, a token that has already expired.
 */
export async function startFaultyFront(target: string): Promise<FaultyFront> {
  const hanging = new Set<ServerResponse>();
  const json = (res: ServerResponse, status: number, body: string) => res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  const held: (() => void)[] = [];
  const front: FaultyFront = {
    url: '',
    mode: 'pass',
    counts: {},
    release() {
      front.mode = 'pass';
      for (const go of held.splice(0)) go();
    },
    close: async () => {},
  };
  const server = createServer((req, res) => {
    const mode = front.mode;
    front.counts[mode] = (front.counts[mode] ?? 0) + 1;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      switch (mode) {
        case 'hold':
        case 'pass': {
          const url = new URL(req.url ?? '/', target);
          const headers: Record<string, string> = {};
          for (const h of ['content-type', 'authorization', 'accept']) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h];
          const body = Buffer.concat(chunks);
          const forward = () =>
            void fetch(url, { method: req.method!, headers, ...(body.length ? { body } : {}) }).then(
              async (r) => res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' }).end(Buffer.from(await r.arrayBuffer())),
              () => res.destroy(),
            );
          if (mode === 'hold') held.push(forward);
          else forward();
          return;
        }
        case '503':
          return json(res, 503, '{"error":"temporarily_unavailable"}');
        case 'reset':
          return void req.socket.destroy();
        case 'hang':
          return void hanging.add(res);
        case 'truncated-json':
          return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"access_token":"eyJhbGciOi');
        case 'html':
          return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body>502 Bad Gateway</body></html>');
        case 'huge':
          res.writeHead(200, { 'content-type': 'application/json' });
          res.write('{"access_token":"');
          for (let i = 0; i < 20; i++) res.write(Buffer.alloc(1 << 20, 0x61));
          return void res.end('","token_type":"Bearer","expires_in":300}');
        case 'no-token':
          return json(res, 200, '{"token_type":"Bearer","expires_in":300}');
        case 'expired': {
          const now = Math.floor(Date.now() / 1000);
          const jwt = `${b64url({ alg: 'RS256', typ: 'at+jwt' })}.${b64url({ sub: 'x', exp: now - 60, iat: now - 120 })}.c2ln`;
          return json(res, 200, JSON.stringify({ access_token: jwt, token_type: 'Bearer', expires_in: 300 }));
        }
      }
    });
  });
  const listening = await listenTracked(server);
  front.url = listening.url;
  front.close = () => {
    for (const h of hanging) h.destroy();
    return listening.close();
  };
  return front;
}

// ---------------------------------------------------------------- leak checks

/**
 * The parts of each token found in `output`: the whole token, its signature
 * segment and its payload segment (segments shorter than 16 characters are
 * too generic to search for). Empty when nothing leaked.
 */
export function tokenLeaks(output: string, tokens: readonly string[]): string[] {
  const found: string[] = [];
  for (const t of tokens) {
    const [, payload = '', signature = ''] = t.split('.');
    for (const needle of [t, signature, payload]) {
      if (needle.length >= 16 && output.includes(needle)) found.push(needle.length > 40 ? `${needle.slice(0, 40)}…` : needle);
    }
  }
  return found;
}

/**
 * Waits until everything the sidecar logged before now has reached its
 * output: sends a marker request (no token, so it is audited with its path)
 * and waits for that line; log lines are written in order.
 */
export async function flushLogs(sidecar: SidecarProcess): Promise<void> {
  const marker = `/__flush/${randomUUID()}`;
  await rawExchange(sidecar.inbound!, rawRequestBytes(marker, [['Host', 'orders']]));
  await sidecar.waitForLog((l) => l.path === marker);
}

/** A request carrying `Authorization: Bearer <token>` (raw bytes, Connection: close). */
export function bearerRequest(token: string, opts: { path?: string; method?: string; headers?: [string, string][] } = {}): string {
  return rawRequestBytes(opts.path ?? '/api/orders', [['Host', 'orders'], ['Authorization', `Bearer ${token}`], ...(opts.headers ?? [])], {
    method: opts.method ?? 'GET',
  });
}

export interface Refusal {
  status: number;
  reason: string;
}

/**
 * Sends one raw request to the inbound listener and checks a refusal the way
 * every attack test must: the status, the reason code in the JSON body and
 * in WWW-Authenticate (401 invalid_token, 403 insufficient_scope), that the
 * app received nothing, and (after the logs are flushed) that none of
 * `secrets` (tokens) reached the sidecar's output.
 */
export async function expectRefused(
  sidecar: SidecarProcess,
  app: RecordingApp,
  label: string,
  request: string | Buffer,
  want: Refusal,
  secrets: readonly string[] = [],
): Promise<ParsedResponse> {
  const before = app.requests.length;
  const ex = await rawExchange(sidecar.inbound!, request);
  const res = ex.responses[0];
  expect(res, `${label}: no response (raw: ${JSON.stringify(ex.raw.slice(0, 200))})`).toBeDefined();
  expect(res!.status, `${label}: status`).toBe(want.status);
  // A response to HEAD has no body (RFC 9110 §9.3.2): the reason code is then only in the header.
  const isHead = (typeof request === 'string' ? request : request.toString('latin1')).startsWith('HEAD ');
  if (!isHead) expect(res!.json(), `${label}: body`).toEqual({ error: expect.any(String), reason: want.reason });
  if (want.status === 401) expect(res!.headers['www-authenticate'], label).toBe(`Bearer error="invalid_token", error_description="${want.reason}"`);
  if (want.status === 403) expect(res!.headers['www-authenticate'], label).toBe(`Bearer error="insufficient_scope", error_description="${want.reason}"`);
  expect(app.requests.slice(before), `${label}: the app must receive nothing`).toEqual([]);
  if (secrets.length > 0) {
    await flushLogs(sidecar);
    expect(tokenLeaks(sidecar.output(), secrets), `${label}: token text in the sidecar output`).toEqual([]);
  }
  return res!;
}

// ---------------------------------------------------------------- the attack token corpus

/** `header.payload.signature` with header and payload JSON-encoded, signature given as bytes or a raw segment. */
export function assemble(header: unknown, payload: unknown, signature: Buffer | string = ''): string {
  const seg = (v: unknown) => (typeof v === 'string' ? v : b64url(v));
  return `${seg(header)}.${seg(payload)}.${typeof signature === 'string' ? signature : signature.toString('base64url')}`;
}

/**
 * Signs with node:crypto so tests control every byte: the header and payload
 * segments are used exactly as given (strings are raw segments), and ECDSA
 * signatures come out raw r||s (JOSE, RFC 7518 §3.4) or DER (what most
 * crypto libraries emit by default).
 */
export function signRaw(
  header: unknown,
  payload: unknown,
  key: KeyObject,
  opts: { ecdsa?: 'raw' | 'der'; hash?: 'sha256' | 'sha384' | 'sha512' } = {},
): string {
  const seg = (v: unknown) => (typeof v === 'string' ? v : b64url(v));
  const input = `${seg(header)}.${seg(payload)}`;
  const hash = opts.hash ?? 'sha256';
  let sig: Buffer;
  if (key.asymmetricKeyType === 'ed25519') sig = nodeSign(null, Buffer.from(input), key);
  else if (key.asymmetricKeyType === 'ec') sig = nodeSign(hash, Buffer.from(input), { key, dsaEncoding: opts.ecdsa === 'der' ? 'der' : 'ieee-p1363' });
  else sig = nodeSign(hash, Buffer.from(input), key);
  return `${input}.${sig.toString('base64url')}`;
}

/** HMAC-signed token (`alg` HS256/384/512 in any case) with `secret` as the key. */
export function hmacToken(alg: string, secret: string | Buffer, header: Record<string, unknown>, payload: unknown): string {
  const bits = /512/.test(alg) ? 'sha512' : /384/.test(alg) ? 'sha384' : 'sha256';
  const input = `${b64url({ ...header, alg })}.${b64url(payload)}`;
  return `${input}.${createHmac(bits, secret).update(input).digest('base64url')}`;
}

/**
 * Every byte string an HS/RS confusion attack (CVE-2015-9235) may use as
 * the HMAC secret: the issuer's public key as SPKI PEM, PKCS#1 PEM, DER, the
 * JWK JSON, and its modulus.
 */
export function confusionSecrets(publicOrPrivate: KeyObject): Record<string, Buffer> {
  const pub = publicOrPrivate.type === 'public' ? publicOrPrivate : createPublicKey(publicOrPrivate);
  const out: Record<string, Buffer> = {
    'spki-pem': Buffer.from(pub.export({ type: 'spki', format: 'pem' }) as string),
    'spki-pem-no-newline': Buffer.from((pub.export({ type: 'spki', format: 'pem' }) as string).trimEnd()),
    'spki-der': pub.export({ type: 'spki', format: 'der' }),
    'jwk-json': Buffer.from(JSON.stringify(pub.export({ format: 'jwk' }))),
  };
  if (pub.asymmetricKeyType === 'rsa') {
    out['pkcs1-pem'] = Buffer.from(pub.export({ type: 'pkcs1', format: 'pem' }) as string);
    out['jwk-n'] = Buffer.from(String((pub.export({ format: 'jwk' }) as { n: string }).n));
  }
  return out;
}

/** The order n of P-256, big-endian. */
const P256_ORDER = Buffer.from('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551', 'hex');

/**
 * "Psychic" ECDSA signatures (CVE-2022-21449) for P-256: r = s = 0 and
 * r = s = n (which is 0 mod n), each in the JOSE raw form and in DER.
 */
export function psychicSignatures(): Record<string, Buffer> {
  const derOf = (r: Buffer, s: Buffer) => {
    const int = (b: Buffer) => {
      const v = b[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b;
      return Buffer.concat([Buffer.from([0x02, v.length]), v]);
    };
    const body = Buffer.concat([int(r), int(s)]);
    return Buffer.concat([Buffer.from([0x30, body.length]), body]);
  };
  const zero32 = Buffer.alloc(32);
  return {
    'raw r=s=0': Buffer.alloc(64),
    'der r=s=0': Buffer.from('3006020100020100', 'hex'),
    'der r=s=0 (32-byte ints)': derOf(zero32, zero32),
    'raw r=s=n': Buffer.concat([P256_ORDER, P256_ORDER]),
    'der r=s=n': derOf(P256_ORDER, P256_ORDER),
    'raw r=0 s=1': Buffer.concat([zero32, Buffer.alloc(31), Buffer.from([1])]),
    'empty': Buffer.alloc(0),
  };
}

/** A JWE in compact form (RFC 7516 §7.1): five segments. */
export function jweCompact(header: Record<string, unknown> = { alg: 'RSA-OAEP-256', enc: 'A256GCM' }): string {
  return [b64url(header), b64url(Buffer.alloc(256, 7)), b64url(Buffer.alloc(12, 1)), b64url('{"sub":"admin"}'), b64url(Buffer.alloc(16, 2))].join('.');
}

/** The JWS JSON serializations (RFC 7515 §7.2) of a compact token: flattened and general. */
export function jwsJson(compact: string): { flattened: string; general: string } {
  const [protectedHeader, payload, signature] = compact.split('.') as [string, string, string];
  return {
    flattened: JSON.stringify({ payload, protected: protectedHeader, signature }),
    general: JSON.stringify({ payload, signatures: [{ protected: protectedHeader, signature }] }),
  };
}

/** An RFC 7797 token: `b64: false` in `crit`, the payload segment is the JSON itself, signed with `key`. */
export function unencodedPayloadToken(header: Record<string, unknown>, payload: unknown, key: KeyObject): string {
  const h = b64url({ ...header, b64: false, crit: ['b64'] });
  const p = JSON.stringify(payload);
  const sig = nodeSign('sha256', Buffer.from(`${h}.${p}`), key);
  return `${h}.${p}.${sig.toString('base64url')}`;
}

// ---------------------------------------------------------------- fuzz arbitraries

const B64URL_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Any string of latin1 characters (what Node hands us for header bytes). */
export const latin1String = (maxLength = 64): fc.Arbitrary<string> =>
  fc.array(fc.integer({ min: 0, max: 255 }), { maxLength }).map((codes) => String.fromCharCode(...codes));

/** base64url-looking segments, so garbage gets past the cheap shape checks and into the decoder. */
export const b64urlSegment = (maxLength = 40): fc.Arbitrary<string> =>
  fc.array(fc.constantFrom(...B64URL_CHARS), { maxLength }).map((c) => c.join(''));

/** A JSON-encoded segment of an arbitrary JSON value, or of a JWS-header-like object. */
const jsonSegment = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }).map((v) => b64url(JSON.stringify(v) ?? 'null')),
  fc.dictionary(fc.constantFrom('alg', 'kid', 'typ', 'crit', 'jku', 'jwk', 'iss', 'aud', 'exp'), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 4 }).map((o) => b64url(o)),
);

/** Values a caller might put in the token header: garbage, other schemes, token-shaped garbage. */
export const credentialValueArb: fc.Arbitrary<string> = fc.oneof(
  latin1String(80),
  fc.tuple(fc.constantFrom('Bearer ', 'bearer ', 'BEARER  ', 'Bearer\t', 'Basic ', 'Bearer', 'DPoP ', ''), fc.oneof(
    fc.tuple(b64urlSegment(), b64urlSegment(), b64urlSegment()).map((p) => p.join('.')),
    fc.tuple(jsonSegment, jsonSegment, b64urlSegment(60)).map((p) => p.join('.')),
    fc.array(fc.constantFrom('.', 'a', 'e', 'J', '='), { maxLength: 200 }).map((c) => c.join('')),
    latin1String(40),
  )).map(([scheme, rest]) => `${scheme}${rest}`),
);

/** Header names that matter to the inbound pipeline, in every case, plus random tokens. */
export const headerNameArb: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('authorization', 'Authorization', 'AUTHORIZATION', 'aUtHoRiZaTiOn', 'x-peer-sub', 'x-peer-claims', 'host', 'content-length', 'transfer-encoding'),
  fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}$/),
);

/** A flat rawHeaders list as Node produces it: [name, value, name, value, ...]. */
export const rawHeadersArb: fc.Arbitrary<string[]> = fc
  .array(fc.tuple(headerNameArb, fc.oneof(credentialValueArb, latin1String(20))), { maxLength: 8 })
  .map((pairs) => pairs.flat());

/** Request targets built from the pieces path tricks are made of, plus arbitrary ones. */
export const requestTargetArb: fc.Arbitrary<string> = fc.oneof(
  fc.array(fc.constantFrom('/', '/', '.', '..', '%2e', '%2E', '%2f', '%2F', '%5c', '%5C', '%00', '%0a', '%7F', '%25', '%', ';', '\\', '#', '?', 'admin', 'public', 'api', 'x', '//', ' ', '\u0000', '\u00e9', '*'), { maxLength: 12 })
    .map((parts) => `/${parts.join('')}`),
  fc.webPath().map((p) => p || '/'),
  fc.tuple(fc.constantFrom('http://orders', 'https://x:1', 'HTTP://a'), fc.webPath()).map(([a, p]) => `${a}${p}`),
  latin1String(30),
);

/** One change to a compact token. Positions are taken modulo the length they index. */
export type Mutation =
  | { op: 'replace'; at: number; char: string }
  | { op: 'insert'; at: number; text: string }
  | { op: 'delete'; at: number; length: number }
  | { op: 'truncate'; at: number }
  | { op: 'swapSegments'; a: number; b: number }
  | { op: 'dupSegment'; segment: number }
  | { op: 'header'; key: string; value: unknown }
  | { op: 'payload'; key: string; value: unknown; remove: boolean }
  | { op: 'signature'; bytes: Uint8Array }
  | { op: 'flipCase'; at: number };

const claimValueArb = fc.oneof(
  fc.constantFrom<unknown>('none', 'None', 'HS256', 'RS256', 'ES256', 'EdDSA', 'PS256', 'RS512', '', 'at+jwt', 'JWT', 'orders', 'deployer', 'admin', null, 0, -1, 1e308, 4102444800),
  fc.jsonValue({ maxDepth: 2 }),
  fc.string({ maxLength: 12 }),
);

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('replace' as const), at: fc.nat(), char: fc.oneof(fc.constantFrom(...B64URL_CHARS, '.', '=', '+', '/'), latin1String(1)) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: fc.oneof(b64urlSegment(4), fc.constantFrom('.', '..', ' ', '\u0000')) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('swapSegments' as const), a: fc.nat(2), b: fc.nat(2) }),
  fc.record({ op: fc.constant('dupSegment' as const), segment: fc.nat(2) }),
  fc.record({ op: fc.constant('header' as const), key: fc.constantFrom('alg', 'kid', 'typ', 'crit', 'jku', 'jwk', 'x5u', 'x5c', 'b64', 'cty', 'zip', 'enc'), value: claimValueArb }),
  fc.record({ op: fc.constant('payload' as const), key: fc.constantFrom('iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'azp', 'client_id', 'jti', 'scope'), value: claimValueArb, remove: fc.boolean() }),
  fc.record({ op: fc.constant('signature' as const), bytes: fc.uint8Array({ maxLength: 300 }) }),
  fc.record({ op: fc.constant('flipCase' as const), at: fc.nat() }),
);

/** Applies one mutation to a token string (JSON edits keep the other segments and the old signature). */
export function applyMutation(token: string, m: Mutation): string {
  const at = (n: number, len: number) => (len === 0 ? 0 : n % (len + 1));
  const parts = token.split('.');
  const decode = (seg: string | undefined): Record<string, unknown> => {
    try {
      const v: unknown = JSON.parse(Buffer.from(seg ?? '', 'base64url').toString('utf8'));
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
    } catch {
      return {};
    }
  };
  switch (m.op) {
    case 'replace': {
      const i = at(m.at, token.length - 1);
      return token.slice(0, i) + m.char + token.slice(i + 1);
    }
    case 'insert': {
      const i = at(m.at, token.length);
      return token.slice(0, i) + m.text + token.slice(i);
    }
    case 'delete': {
      const i = at(m.at, token.length);
      return token.slice(0, i) + token.slice(i + m.length);
    }
    case 'truncate':
      return token.slice(0, at(m.at, token.length));
    case 'swapSegments': {
      const next = [...parts];
      [next[m.a], next[m.b]] = [parts[m.b] ?? '', parts[m.a] ?? ''];
      return next.join('.');
    }
    case 'dupSegment':
      return [...parts.slice(0, m.segment + 1), parts[m.segment] ?? '', ...parts.slice(m.segment + 1)].join('.');
    case 'header':
      return [b64url({ ...decode(parts[0]), [m.key]: m.value }), ...parts.slice(1)].join('.');
    case 'payload': {
      const payload = decode(parts[1]);
      if (m.remove) delete payload[m.key];
      else payload[m.key] = m.value;
      return [parts[0], b64url(payload), ...parts.slice(2)].join('.');
    }
    case 'signature':
      return [...parts.slice(0, 2), Buffer.from(m.bytes).toString('base64url')].join('.');
    case 'flipCase': {
      const i = at(m.at, token.length - 1);
      const c = token[i] ?? '';
      const flipped = c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase();
      return token.slice(0, i) + flipped + token.slice(i + 1);
    }
  }
}

/**
 * What the README's "Paths" section says a request target names: the path rules must judge and the app must
 * receive, and the query, forwarded untouched. Worked out here from that contract and RFC 3986, not with
 * src/inbound/path.ts, so an oracle built on it cannot share a bug with the code it judges. undefined where the
 * contract refuses the target (400 bad_path, or not a path or an http(s) URL with a host and no user info).
 */
export function contractTarget(target: string): { path: string; query: string } | undefined {
  let rest = target;
  if (!rest.startsWith('/')) {
    // Absolute-form is matched on its path; the authority runs to the first "/", "?" or "#" (RFC 3986 §3.2).
    const absolute = /^https?:\/\/([^/?#]*)/i.exec(rest);
    if (!absolute) return undefined;
    const host = absolute[1]!.replace(/:[0-9]*$/, '');
    if (host === '' || absolute[1]!.includes('@')) return undefined;
    rest = rest.slice(absolute[0].length);
    if (!rest.startsWith('/')) rest = `/${rest}`;
  }
  const q = rest.indexOf('?');
  const raw = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? '' : rest.slice(q);
  // 400 bad_path: broken escapes; %2F, %5C, %00 and the other escaped control characters; a raw \, ";" or "#";
  // spaces, control characters, non-ASCII.
  if (/%(?![0-9a-f]{2})/i.test(raw) || /%(2f|5c|[01][0-9a-f]|7f)/i.test(raw) || /[\\;#]/.test(raw) || /[^\x21-\x7e]/.test(raw)) return undefined;
  // RFC 3986 §6.2.2: escapes of unreserved characters decoded (so %2e%2e is ".."), the rest in upper-case hex.
  const decoded = raw.replace(/%([0-9a-f]{2})/gi, (_, hex: string) => {
    const c = String.fromCharCode(Number.parseInt(hex, 16));
    return /^[A-Za-z0-9._~-]$/.test(c) ? c : `%${hex.toUpperCase()}`;
  });
  // Empty segments collapse, then dot segments are resolved. The README lists both without an order; the sidecar
  // collapses first, so "/x//../y" is "/y" (RFC 3986 alone would give "/x/y"). Either way the app gets what was judged.
  return { path: removeDotSegments(decoded.replace(/\/{2,}/g, '/')), query };
}

/** RFC 3986 §5.2.4 as written there (its steps A to E), on an absolute path: ".." never climbs above "/". */
function removeDotSegments(path: string): string {
  let input = path;
  let output = '';
  const dropLastSegment = () => (output = output.slice(0, Math.max(0, output.lastIndexOf('/'))));
  while (input.length > 0) {
    if (input.startsWith('../')) input = input.slice(3); // A
    else if (input.startsWith('./')) input = input.slice(2); // A
    else if (input.startsWith('/./')) input = input.slice(2); // B
    else if (input === '/.') input = '/'; // B
    else if (input.startsWith('/../')) (input = input.slice(3)), dropLastSegment(); // C
    else if (input === '/..') (input = '/'), dropLastSegment(); // C
    else if (input === '.' || input === '..') input = ''; // D
    else {
      const segment = /^\/?[^/]*/.exec(input)![0]; // E
      output += segment;
      input = input.slice(segment.length);
    }
  }
  return output || '/';
}

/** Whether the fuzz suites' rules (`/public/**` public, first) make a canonical path public: `/public` and below. */
export const isPublicPath = (path: string): boolean => path === '/public' || path.startsWith('/public/');

// ---------------------------------------------------------------- fuzz budget

/**
 * fast-check runs for one property: `FUZZ_RUNS` (default 200, what `npm test`
 * runs) times `weight`, at least 1. The hard suite raises FUZZ_RUNS.
 */
export function fuzzRuns(weight = 1): number {
  const base = Number(process.env.FUZZ_RUNS ?? 200);
  return Math.max(1, Math.round((Number.isFinite(base) && base > 0 ? base : 200) * weight));
}

/** Adds `cases` to the hard suite's tally (a file per worker under FUZZ_TALLY_DIR), so the suite can prove its total. */
export async function tallyFuzzCases(name: string, cases: number): Promise<void> {
  const dir = process.env.FUZZ_TALLY_DIR;
  if (!dir) return;
  const { appendFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  appendFileSync(join(dir, `tally-${process.pid}.txt`), `${name}\t${cases}\n`);
}

/**
 * Whether this Node serves an Upgrade other than WebSocket as the plain request it also is (the listener's
 * shouldUpgradeCallback, read from Node 22.21 and 24.9), rather than handing it to the upgrade handler, which
 * refuses it with 400 upgrade_not_supported.
 */
export const SERVES_OTHER_UPGRADES_AS_REQUESTS = typeof (createServer() as { shouldUpgradeCallback?: unknown }).shouldUpgradeCallback === 'function';
