import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawExchange } from '../support/attacks.js';
import { eventually } from './inbound-support.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';

const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-listener-'));

/** A self-signed certificate for 127.0.0.1 made with the openssl CLI. */
function selfSigned(name: string): { cert: string; key: string; pem: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return { cert, key, pem: readFileSync(cert, 'utf8') };
}

/** Raw bytes over TLS; resolves with everything the server sent until it closed. */
function rawTls(port: number, ca: string, bytes: string, opts: { keepOpenFor?: (s: TLSSocket) => Promise<void> } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ port, host: '127.0.0.1', ca, servername: undefined }, () => {
      s.write(bytes);
      void opts.keepOpenFor?.(s);
    });
    let text = '';
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('error', reject);
    s.on('close', () => resolve(text));
  });
}

function httpsGet(url: string, ca: string): Promise<{ status: number; cn: string; body: any }> {
  return new Promise((resolve, reject) => {
    httpsRequest(url, { ca, agent: false }, (res) => {
      let t = '';
      res.on('data', (d) => (t += d));
      res.on('end', () => resolve({ status: res.statusCode!, cn: String((res.socket as TLSSocket).getPeerCertificate().subject.CN), body: JSON.parse(t) }));
    })
      .on('error', reject)
      .end();
  });
}

/**
 * The inbound listener as users run it (the CLI): HTTPS with a certificate
 * reloaded on change, and the limits config keys enforced with the right 4xx.
 */
describe('inbound listener: TLS and limits through the CLI', () => {
  let idp: TestIdp;
  let app: UpstreamApp;
  let sidecar: SidecarProcess;
  let port: number;
  const first = selfSigned('sidecar-a');
  const second = selfSigned('sidecar-b');
  const live = { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') };

  beforeAll(async () => {
    copyFileSync(first.cert, live.certFile);
    copyFileSync(first.key, live.keyFile);
    idp = await startIdp();
    app = await startUpstream();
    sidecar = await startSidecar({
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      limits: { maxHeaderCount: 30, maxHeaderBytes: 4096, headersTimeoutSeconds: 1, requestTimeoutSeconds: 10 },
      inbound: {
        target: app.url,
        audience: 'orders',
        issuers: [{ issuer: idp.issuer }],
        tls: live,
        rules: [
          { match: { path: '/public/**' }, public: true },
          { match: { path: '/**' }, allow: [{ sub: 'orders' }] },
        ],
      },
    });
    port = Number(new URL(sidecar.inbound!).port);
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
    await idp?.close();
  });

  it('serves HTTPS and tells the app the original scheme', async () => {
    const res = await httpsGet(`https://127.0.0.1:${port}/public/hello`, first.pem);
    expect(res.status).toBe(200);
    expect(res.cn).toBe('sidecar-a');
    expect(res.body.headers['x-forwarded-proto']).toBe('https');
  });

  it('refuses more headers than limits.maxHeaderCount with 431 and never calls the app', async () => {
    const before = app.seen.length;
    let extra = '';
    for (let i = 0; i < 30; i++) extra += `X-Filler-${i}: x\r\n`;
    const answer = await rawTls(port, first.pem, `GET /public/many HTTP/1.1\r\nHost: orders\r\n${extra}\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
    expect(answer).toContain('"reason":"too_many_headers"');
    expect(app.seen.length).toBe(before);
  });

  it('refuses a header block over limits.maxHeaderBytes with 431', async () => {
    const answer = await rawTls(port, first.pem, `GET /public/big HTTP/1.1\r\nHost: orders\r\nX-Big: ${'b'.repeat(5000)}\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
    expect(answer).toContain('"reason":"headers_too_large"');
  });

  it('answers a slowloris client with 408 after limits.headersTimeoutSeconds while serving others', async () => {
    let servedMeanwhile = 0;
    const answer = await rawTls(port, first.pem, 'GET /public/slow HTTP/1.1\r\nHost: orders\r\nX-Slow: ', {
      keepOpenFor: async () => {
        servedMeanwhile = (await httpsGet(`https://127.0.0.1:${port}/public/meanwhile`, first.pem)).status;
      },
    });
    expect(servedMeanwhile).toBe(200);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toContain('"reason":"request_timeout"');
  });

  it('picks up a renewed certificate without a restart', async () => {
    copyFileSync(second.key, live.keyFile);
    copyFileSync(second.cert, live.certFile);
    await sidecar.waitForLog((l) => l.event === 'tls_reloaded');
    let cn = '';
    for (let i = 0; i < 50 && cn !== 'sidecar-b'; i++) {
      cn = (await httpsGet(`https://127.0.0.1:${port}/public/renewed`, second.pem).catch(() => ({ cn: '' }))).cn;
      if (cn !== 'sidecar-b') await new Promise((r) => setTimeout(r, 100));
    }
    expect(cn).toBe('sidecar-b');
    expect(sidecar.output()).not.toContain('PRIVATE KEY');
  });
});

describe('inbound listener: a config reload that changes its limits or TLS files', () => {
  // The listener keeps its address, so a second socket could not be bound beside it (EADDRINUSE, and the whole
  // reload refused); with port 0 the listener would move to a new port. The new settings apply to it in place.
  let app: UpstreamApp;
  let sidecar: SidecarProcess;
  const a = selfSigned('reload-a');
  const b = selfSigned('reload-b');
  const config = (tls: { certFile: string; keyFile: string }, maxHeaderCount: number) => ({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    limits: { maxHeaderCount },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: 'http://127.0.0.1:9' }], tls, rules: [{ match: { path: '/**' }, public: true }] },
  });
  beforeAll(async () => {
    app = await startUpstream();
    sidecar = await startSidecar(config({ certFile: a.cert, keyFile: a.key }, 30), { waitReady: false });
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
  });

  it('applies new limits and a new certificate path on the same socket; an unusable pair is refused and the old one serves', async () => {
    const port = Number(new URL(sidecar.inbound!).port);
    const headers = (n: number) => Array.from({ length: n }, (_, i) => `X-Filler-${i}: x\r\n`).join('');
    expect((await httpsGet(`https://127.0.0.1:${port}/before`, a.pem)).cn).toBe('reload-a');

    sidecar.rewriteConfig(config({ certFile: b.cert, keyFile: b.key }, 10));
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' || l.event === 'config_reload_failed');
    expect(sidecar.logs.filter((l) => l.event === 'config_reload_failed')).toEqual([]);
    expect((await httpsGet(`https://127.0.0.1:${port}/after`, b.pem)).cn).toBe('reload-b');
    const answer = await rawTls(port, b.pem, `GET /many HTTP/1.1\r\nHost: orders\r\n${headers(15)}\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);

    // A key that does not match its certificate: the reload is refused as a whole, nothing changes.
    sidecar.rewriteConfig(config({ certFile: a.cert, keyFile: b.key }, 30));
    sidecar.signal('SIGHUP');
    const failed = await sidecar.waitForLog((l) => l.event === 'config_reload_failed');
    expect(String(failed.error)).toMatch(/inbound\.tls: certFile and keyFile are not a usable pair/);
    expect((await httpsGet(`https://127.0.0.1:${port}/still`, b.pem)).cn).toBe('reload-b');
    expect(await rawTls(port, b.pem, `GET /many HTTP/1.1\r\nHost: orders\r\n${headers(15)}\r\n`)).toMatch(/^HTTP\/1\.1 431 /);

    // TLS turned off at the same address is another kind of server: refused with the reason, TLS keeps serving.
    const plain = config({ certFile: b.cert, keyFile: b.key }, 30) as Record<string, any>;
    delete plain.inbound.tls;
    sidecar.rewriteConfig(plain);
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reload_failed' && String(l.error).includes('restart_required'));
    expect((await httpsGet(`https://127.0.0.1:${port}/tls`, b.pem)).cn).toBe('reload-b');
    expect(sidecar.output()).not.toContain('PRIVATE KEY');
  });
});

describe('both listeners: request versions, Host and transfer codings (RFC 9112 §2.3, §3.2, §6.1)', () => {
  let app: UpstreamApp;
  let sidecar: SidecarProcess;

  beforeAll(async () => {
    app = await startUpstream();
    sidecar = await startSidecar({
      service: 'orders',
      log: { level: 'info' },
      lifecycle: { watchConfig: false },
      // The issuer is never reached: the route is public, and the outbound side passes unknown hosts through.
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: 'http://127.0.0.1:9' }], rules: [{ match: { path: '/**' }, public: true }] },
      outbound: { tokenSource: { type: 'env', variable: 'OIDC_SIDECAR_TEST_UNSET' }, routes: [], unknownHosts: 'passthrough' },
    }, { waitReady: false }); // never ready: the issuer's keys never load
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
  });

  const post = (te: string) => `POST /upload HTTP/1.1\r\nHost: ${app.hostPort}\r\nTransfer-Encoding: ${te}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n`;

  it.each(['inbound', 'outbound'] as const)('%s: a coding other than chunked is 501 transfer_coding_not_supported and never reaches the app; chunked does', async (side) => {
    const before = app.seen.length;
    const ex = await rawExchange(sidecar[side]!, post('gzip, chunked'));
    expect(ex.responses.map((r) => r.status)).toEqual([501]);
    expect(ex.responses[0]!.json()).toEqual({ error: 'only the chunked transfer coding is supported', reason: 'transfer_coding_not_supported' });
    expect(ex.closedByServer).toBe(true);
    expect(app.seen.length).toBe(before);

    const plain = await rawExchange(sidecar[side]!, post('chunked'));
    expect(plain.responses.map((r) => r.status)).toEqual([200]);
    expect(app.seen.slice(before).map((r) => [r.url, r.bodyBytes])).toEqual([['/upload', 3]]);
  });

  /** The request target each side serves: a path inbound, the app's absolute URL outbound (a passthrough host). */
  const target = (side: 'inbound' | 'outbound', path: string) => (side === 'inbound' ? path : `${app.url}${path}`);

  it.each(['inbound', 'outbound'] as const)('%s: refuses what Node would let through or answer uncounted, each as JSON, counted and logged, and never calls the app', async (side) => {
    const refusals: [string, number, string, string][] = [
      // Node answers this with a bare 400 of its own, neither counted nor logged.
      ['HTTP/1.1 without Host', 400, 'bad_request', `GET ${target(side, '/no-host')} HTTP/1.1\r\n\r\n`],
      // RFC 9112 §6.1: faulty framing; Node would decode the chunks.
      ['HTTP/1.0 with Transfer-Encoding', 400, 'bad_request', `POST ${target(side, '/te10')} HTTP/1.0\r\nHost: ${app.hostPort}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`],
      // No version: Node reads HTTP/0.9 and still parses the headers after it.
      ['a request line without a version', 505, 'http_version_not_supported', `GET ${target(side, '/v09')}\r\nHost: ${app.hostPort}\r\n\r\n`],
      ['HTTP/2.0 in an HTTP/1 request line', 505, 'http_version_not_supported', `GET ${target(side, '/v20')} HTTP/2.0\r\nHost: ${app.hostPort}\r\n\r\n`],
    ];
    const before = app.seen.length;
    for (const [what, status, reason, bytes] of refusals) {
      const ex = await rawExchange(sidecar[side]!, bytes);
      expect(ex.responses.map((r) => r.status), what).toEqual([status]);
      expect(ex.responses[0]!.json(), what).toMatchObject({ reason });
      expect(ex.closedByServer, what).toBe(true);
    }
    expect(app.seen.length).toBe(before);
    await eventually(() => sidecar.logs.filter((l) => l.event === 'request_rejected' && ['bad_request', 'http_version_not_supported'].includes(l.reason as string) && l.peer).length >= 4);
    const metrics = await (await fetch(`${sidecar.admin}/metrics`)).text();
    const counted = side === 'inbound' ? 'oidc_sidecar_inbound_requests_total{decision="reject",reason="http_version_not_supported"}' : 'oidc_sidecar_outbound_requests_total{route="none",status="http_version_not_supported"}';
    expect(metrics).toContain(`${counted} 2`);
  });

  it.each(['inbound', 'outbound'] as const)('%s: still serves HTTP/1.0 without Host, and HTTP/1.0 with a Content-Length body', async (side) => {
    const before = app.seen.length;
    const bare = await rawExchange(sidecar[side]!, `GET ${target(side, '/old')} HTTP/1.0\r\n\r\n`);
    const sized = await rawExchange(sidecar[side]!, `POST ${target(side, '/old-post')} HTTP/1.0\r\n${side === 'inbound' ? '' : `Host: ${app.hostPort}\r\n`}Content-Length: 3\r\n\r\nabc`);
    expect([bare, sized].map((ex) => ex.responses.map((r) => r.status))).toEqual([[200], [200]]);
    expect(app.seen.slice(before).map((r) => [r.url, r.bodyBytes])).toEqual([['/old', 0], ['/old-post', 3]]);
  });

  it('outbound: CONNECT without a Host header still opens its tunnel (the authority is in the request target)', async () => {
    const ex = await rawExchange(sidecar.outbound!, `CONNECT ${app.hostPort} HTTP/1.1\r\n\r\nGET /through HTTP/1.1\r\nHost: ${app.hostPort}\r\nConnection: close\r\n\r\n`);
    expect(ex.raw.startsWith('HTTP/1.1 200')).toBe(true);
    expect(ex.raw).toContain('"url":"/through"');
  });
});

describe('inbound TLS misconfiguration', () => {
  it('refuses to start with an unreadable key file: one clear line, exit 1, no stack trace', async () => {
    const a = selfSigned('broken');
    const config = writeConfig({
      service: 'orders',
      lifecycle: { watchConfig: false },
      admin: { listen: '127.0.0.1:0' },
      inbound: {
        listen: '127.0.0.1:0',
        target: 'http://127.0.0.1:9',
        audience: 'orders',
        issuers: [{ issuer: 'http://127.0.0.1:9' }],
        tls: { certFile: a.cert, keyFile: join(dir, 'missing.key') },
      },
    });
    const r = await runCli(['run', '--config', config]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^oidc-sidecar: invalid config: inbound\.tls\.keyFile: cannot read \S*missing\.key: no such file \(line \d+\)\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('a listener on [::] (the Kubernetes example)', () => {
  it('passes an IPv4 caller on, in X-Forwarded-For and in the log, as its IPv4 address, as on 0.0.0.0', async () => {
    const app = await startUpstream();
    const seen: Record<string, { forwardedFor: string; peer: unknown }> = {};
    try {
      for (const listen of ['0.0.0.0:0', '[::]:0']) {
        const sidecar = await startSidecar(
          { service: 'o', inbound: { listen, target: app.url, audience: 'o', issuers: [{ issuer: 'https://idp.example' }], rules: [{ match: { path: '/open' }, public: true }] } },
          { waitReady: false },
        );
        try {
          const port = new URL(sidecar.inbound!.replace('[::]', '127.0.0.1')).port;
          const res = await fetch(`http://127.0.0.1:${port}/open`);
          const forwardedFor = ((await res.json()) as { headers: Record<string, string> }).headers['x-forwarded-for']!;
          // A refusal's audit line names the peer.
          expect((await fetch(`http://127.0.0.1:${port}/closed`)).status).toBe(401);
          const line = await sidecar.waitForLog((l) => l.event === 'token_rejected');
          seen[listen] = { forwardedFor, peer: line.peer };
        } finally {
          await sidecar.stop();
        }
      }
    } finally {
      await app.close();
    }
    expect(seen['[::]:0']).toEqual({ forwardedFor: '127.0.0.1', peer: '127.0.0.1' });
    expect(seen['0.0.0.0:0']).toEqual(seen['[::]:0']);
  });
});
