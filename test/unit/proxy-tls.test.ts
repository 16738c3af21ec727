import { execFileSync } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, request as httpsRequest, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { createLimitedServer, listenOn } from '../../src/proxy/listen.js';
import { SETTLE_MS } from '../../src/config/poll-files.js';
import { issuesOf } from '../support/config-errors.js';
import { certificateValidityProblem, loadTlsMaterial, TlsConfigError, watchTlsFiles, type TlsFiles, type TlsMaterial } from '../../src/proxy/tls.js';
import { datedSelfSignedCert, expiredSelfSignedCert, selfSignedCert } from '../support/certs.js';
import { startUpstream } from '../support/upstream.js';
import { limitsWith, rawConnect, startTestProxy } from './proxy-harness.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-tls-'));

const selfSigned = (name: string) => selfSignedCert(name, dir);

function captureLogs(): { logger: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({ level: 'info', destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  return { logger, lines };
}

/** One HTTPS GET trusting `ca`; resolves with the certificate's CN and the JSON body. */
function get(url: string, ca: string): Promise<{ cn: string; body: { headers: Record<string, string> } }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca, agent: false }, (res) => {
      const cn = String((res.socket as TLSSocket).getPeerCertificate().subject.CN);
      let t = '';
      res.on('data', (d) => (t += d));
      res.on('end', () => resolve({ cn, body: JSON.parse(t) }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A bare HTTPS server on 127.0.0.1 serving `material`, closed after the test; resolves with it and its URL. */
async function serveHttps(material: TlsMaterial): Promise<{ server: HttpsServer; url: string }> {
  const server = createHttpsServer(material, (_req, res) => res.end('{}'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => server.close(() => r())));
  return { server, url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/` };
}

/** Both texts with trailing newlines added to the shorter, so they have the same length. */
function samePadded(x: string, y: string): [string, string] {
  const n = Math.max(x.length, y.length);
  return [x.padEnd(n, '\n'), y.padEnd(n, '\n')];
}

/** The common name of the certificate a TLS server at `url` presents, whatever its dates. */
function servedName(url: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: hostname, port: Number(port), rejectUnauthorized: false }, () => {
      resolve(String(s.getPeerCertificate().subject?.CN));
      s.destroy();
    });
    s.on('error', reject);
  });
}

async function until(pred: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await pred())) await new Promise((r) => setTimeout(r, 25));
}

describe('inbound TLS', () => {
  it('says when a certificate is expired or not valid yet, and warns when it serves one', async () => {
    const c = selfSigned('validity'); // valid for one day from now
    const cert = readFileSync(c.cert);
    const day = 24 * 3600 * 1000;
    expect(certificateValidityProblem(cert)).toBeUndefined();
    expect(certificateValidityProblem(cert, Date.now() + 2 * day)).toMatch(/^expired at \d{4}-\d\d-\d\dT/);
    expect(certificateValidityProblem(cert, Date.now() - day)).toMatch(/^not valid until \d{4}-\d\d-\d\dT/);
    expect(certificateValidityProblem(Buffer.from('not a certificate'))).toBeUndefined();

    // A pair that is valid now is served without a warning. An expired one is served, with a warning, where nothing
    // better is at hand: when it starts being served, and when a reload brings it in over a pair not valid either.
    const valid = captureLogs();
    const validFiles = { certFile: c.cert, keyFile: c.key };
    const validMaterial = loadTlsMaterial(validFiles);
    const stopValid = watchTlsFiles((await serveHttps(validMaterial)).server, validFiles, validMaterial, valid.logger, 20);
    cleanups.push(async () => stopValid());
    expect(valid.lines.filter((l) => l.event === 'tls_certificate_not_valid')).toEqual([]);

    const older = expiredSelfSignedCert('older');
    const expired = expiredSelfSignedCert('expired');
    expect(certificateValidityProblem(readFileSync(expired.cert))).toBe('expired at 2020-01-02T00:00:00.000Z');
    const { logger, lines } = captureLogs();
    const warnings = () => lines.filter((l) => l.event === 'tls_certificate_not_valid');
    const files = { certFile: join(dir, 'validity-serving.crt'), keyFile: join(dir, 'validity-serving.key') };
    copyFileSync(older.cert, files.certFile);
    copyFileSync(older.key, files.keyFile);
    const material = loadTlsMaterial(files);
    const { server, url } = await serveHttps(material);
    const stop = watchTlsFiles(server, files, material, logger, 20);
    cleanups.push(async () => stop());
    const warning = expect.objectContaining({ level: 'warn', certFile: files.certFile, problem: 'expired at 2020-01-02T00:00:00.000Z' });
    expect(warnings()).toEqual([warning]);
    copyFileSync(expired.key, files.keyFile);
    copyFileSync(expired.cert, files.certFile);
    await until(() => lines.some((l) => l.event === 'tls_reloaded'));
    expect(warnings()).toEqual([warning, warning]);
    expect(await servedName(url)).toBe('expired');
  });

  it('keeps a valid pair over an expired one a reload brings, and takes up one not valid yet the moment it becomes valid', async () => {
    const good = selfSigned('keep-good');
    const expired = expiredSelfSignedCert('keep-expired');
    const files = { certFile: join(dir, 'keep.crt'), keyFile: join(dir, 'keep.key') };
    copyFileSync(good.cert, files.certFile);
    copyFileSync(good.key, files.keyFile);
    const material = loadTlsMaterial(files);
    const { server, url } = await serveHttps(material);
    const { logger, lines } = captureLogs();
    const stop = watchTlsFiles(server, files, material, logger, 20);
    cleanups.push(async () => stop());
    const events = () => lines.map((l) => l.event);

    // A Secret rolled back to an old revision: clients would refuse every handshake.
    copyFileSync(expired.key, files.keyFile);
    copyFileSync(expired.cert, files.certFile);
    await until(() => events().includes('tls_reload_failed'));
    expect(lines.find((l) => l.event === 'tls_reload_failed')).toMatchObject({ level: 'error', error: 'the new certificate is expired at 2020-01-02T00:00:00.000Z, and the current one is still valid' });
    expect(await servedName(url)).toBe('keep-good');

    // Issued by a clock a little ahead: served from its notBefore on, with no further change on disk.
    const soon = datedSelfSignedCert('keep-soon', new Date(Date.now() + 2000), new Date(Date.now() + 24 * 3600 * 1000));
    copyFileSync(soon.key, files.keyFile);
    copyFileSync(soon.cert, files.certFile);
    await until(() => events().includes('tls_reload_deferred'));
    expect(lines.find((l) => l.event === 'tls_reload_deferred')).toMatchObject({ level: 'warn', certFile: files.certFile, problem: expect.stringMatching(/^not valid until /) });
    expect(await servedName(url)).toBe('keep-good');
    await until(() => events().includes('tls_reloaded'));
    expect(await servedName(url)).toBe('keep-soon');
    expect(events().filter((e) => e === 'tls_certificate_not_valid')).toEqual([]);
  });

  it('serves HTTPS, tells the app X-Forwarded-Proto: https, and reloads the certificate when its files change', async () => {
    const a = selfSigned('cert-a');
    const b = selfSigned('cert-b');
    const live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
    copyFileSync(a.cert, live.cert);
    copyFileSync(a.key, live.key);
    const { logger, lines } = captureLogs();
    const app = await startUpstream();
    const proxy = await startTestProxy(app.url, { tls: { certFile: live.cert, keyFile: live.key }, server: { logger, tlsPollMs: 50 } });
    cleanups.push(() => app.close(), () => proxy.close());

    const first = await get(`${proxy.url}/`, a.pem);
    expect(first.cn).toBe('cert-a');
    expect(first.body.headers['x-forwarded-proto']).toBe('https');

    // Renewal: key and certificate replaced on disk (key first, as a careless writer might).
    copyFileSync(b.key, live.key);
    copyFileSync(b.cert, live.cert);
    await until(() => lines.some((l) => l.event === 'tls_reloaded'));
    await until(async () => (await get(`${proxy.url}/`, b.pem).catch(() => undefined))?.cn === 'cert-b');
  });

  it('picks up a renewal that landed between loading the pair and the first poll', async () => {
    const a = selfSigned('early-a');
    const b = selfSigned('early-b');
    const serving = loadTlsMaterial({ certFile: a.cert, keyFile: a.key });
    // The files on disk are already B when the watcher starts; the first stat alone would take B as "unchanged".
    const { server, url } = await serveHttps(serving);
    const { logger, lines } = captureLogs();
    const stop = watchTlsFiles(server, { certFile: b.cert, keyFile: b.key }, serving, logger, 60_000);
    cleanups.push(async () => stop());
    await until(() => lines.some((l) => l.event === 'tls_reloaded'));
    expect((await get(url, b.pem)).cn).toBe('early-b');
  });

  it('a stopped watcher leaves its server alone, even with a look already under way', async () => {
    const a = selfSigned('stopped-a');
    const b = selfSigned('stopped-b');
    const serving = loadTlsMaterial({ certFile: a.cert, keyFile: a.key });
    const { server, url } = await serveHttps(serving);
    const { logger, lines } = captureLogs();
    // The files differ from what is served, and the first look starts at once: stopping now must win.
    watchTlsFiles(server, { certFile: b.cert, keyFile: b.key }, serving, logger, 20)();
    await new Promise((r) => setTimeout(r, 3 * SETTLE_MS)); // past the settling delay a look in flight would start
    expect(lines).toEqual([]);
    expect((await get(url, a.pem)).cn).toBe('stopped-a');
  });

  it('a TLS listener that never binds (address in use) does not watch its files', async () => {
    const a = selfSigned('unbound-a');
    const b = selfSigned('unbound-b');
    const live = { certFile: join(dir, 'unbound.crt'), keyFile: join(dir, 'unbound.key') };
    copyFileSync(a.cert, live.certFile);
    copyFileSync(a.key, live.keyFile);
    const taken = await serveHttps(loadTlsMaterial(live));
    const { logger, lines } = captureLogs();
    const server = createLimitedServer(limitsWith(), () => {}, live, { logger, tlsPollMs: 20 });
    await expect(listenOn(server, { host: '127.0.0.1', port: Number(new URL(taken.url).port) })).rejects.toThrow(/EADDRINUSE/);
    copyFileSync(b.key, live.keyFile);
    copyFileSync(b.cert, live.certFile);
    await new Promise((r) => setTimeout(r, 3 * SETTLE_MS));
    expect(lines.filter((l) => String(l.event).startsWith('tls_'))).toEqual([]);
  });

  it('a closed TLS listener stops watching its files, though a tunnel it still carries keeps it from closing', async () => {
    const a = selfSigned('retired-a');
    const b = selfSigned('retired-b');
    const live = { certFile: join(dir, 'retired.crt'), keyFile: join(dir, 'retired.key') };
    copyFileSync(a.cert, live.certFile);
    copyFileSync(a.key, live.keyFile);
    const { logger, lines } = captureLogs();
    // An upgrade answered 101 and then left open: a tunnel, which close() does not cut (a listener a reload retired).
    const upgrade = (_req: unknown, socket: Duplex) => void socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    const server = createLimitedServer(limitsWith(), () => {}, live, { logger, tlsPollMs: 20, upgrade });
    const { port } = await listenOn(server, { host: '127.0.0.1', port: 0 });
    const client = tlsConnect({ port, host: '127.0.0.1', ca: a.pem });
    client.on('error', () => {});
    cleanups.push(async () => void client.destroy());
    let got = '';
    client.on('data', (d: Buffer) => (got += d.toString('latin1')));
    client.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    await until(() => got.includes('\r\n\r\n'));
    await new Promise((r) => setTimeout(r, 3 * SETTLE_MS)); // the watcher's first look is done
    server.close();
    copyFileSync(b.key, live.keyFile);
    copyFileSync(b.cert, live.certFile);
    await new Promise((r) => setTimeout(r, 3 * SETTLE_MS));
    expect(lines.filter((l) => String(l.event).startsWith('tls_'))).toEqual([]);
  });

  it('notices a renewal written in place that keeps the inode, size and modification time', async () => {
    const a = selfSigned('inplace-a');
    const b = selfSigned('inplace-b');
    const live = { certFile: join(dir, 'inplace.crt'), keyFile: join(dir, 'inplace.key') };
    // Pad each PEM with trailing newlines to a common length, so B can overwrite A byte for byte in size.
    const [certA, certB] = samePadded(readFileSync(a.cert, 'utf8'), readFileSync(b.cert, 'utf8'));
    const [keyA, keyB] = samePadded(readFileSync(a.key, 'utf8'), readFileSync(b.key, 'utf8'));
    writeFileSync(live.certFile, certA);
    writeFileSync(live.keyFile, keyA);
    const stamp = 1_700_000_000; // whole seconds: restored exactly after the rewrite
    for (const f of [live.certFile, live.keyFile]) utimesSync(f, stamp, stamp);
    const serving = loadTlsMaterial(live);
    const { server, url } = await serveHttps(serving);
    const { logger, lines } = captureLogs();
    const stop = watchTlsFiles(server, live, serving, logger, 50);
    cleanups.push(async () => stop());
    await new Promise((r) => setTimeout(r, 3 * SETTLE_MS)); // the first look and a few polls of the unchanged files
    expect(lines.some((l) => l.event === 'tls_reloaded')).toBe(false);

    const before = statSync(live.certFile);
    writeFileSync(live.keyFile, keyB); // in place, like `cp -p` or `rsync --inplace -t`
    writeFileSync(live.certFile, certB);
    for (const f of [live.certFile, live.keyFile]) utimesSync(f, stamp, stamp);
    const after = statSync(live.certFile);
    expect([after.ino, after.size, after.mtimeMs]).toEqual([before.ino, before.size, before.mtimeMs]);
    await until(() => lines.some((l) => l.event === 'tls_reloaded'));
    expect((await get(url, b.pem)).cn).toBe('inplace-b');
  });

  it('keeps serving the current certificate when the new files do not form a pair', async () => {
    const a = selfSigned('keep-a');
    const b = selfSigned('keep-b');
    const live = { cert: join(dir, 'keep.crt'), key: join(dir, 'keep.key') };
    copyFileSync(a.cert, live.cert);
    copyFileSync(a.key, live.key);
    const { logger, lines } = captureLogs();
    const app = await startUpstream();
    const proxy = await startTestProxy(app.url, { tls: { certFile: live.cert, keyFile: live.key }, server: { logger, tlsPollMs: 50 } });
    cleanups.push(() => app.close(), () => proxy.close());

    copyFileSync(b.cert, live.cert); // certificate B with key A: mismatched
    await until(() => lines.some((l) => l.event === 'tls_reload_failed'));
    expect((await get(`${proxy.url}/`, a.pem)).cn).toBe('keep-a');
    expect(JSON.stringify(lines)).not.toContain('PRIVATE KEY');
  });

  it('cuts a client that does not finish the TLS handshake within limits.headersTimeoutSeconds, while others are served', async () => {
    const a = selfSigned('handshake');
    const app = await startUpstream();
    const proxy = await startTestProxy(app.url, { tls: { certFile: a.cert, keyFile: a.key }, limits: { headersTimeoutSeconds: 0.5, requestTimeoutSeconds: 5 } });
    cleanups.push(() => app.close(), () => proxy.close());

    // One connects and says nothing; one starts a ClientHello (record header and the first byte) and stalls.
    const silent = await rawConnect(proxy.port);
    const stalled = await rawConnect(proxy.port);
    stalled.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x01]));
    const answers = [silent, stalled].map((s) => {
      let got = '';
      s.on('data', (d) => (got += d.toString('latin1')));
      s.on('error', () => {});
      return new Promise<string>((r) => s.on('close', () => r(got)));
    });
    cleanups.push(async () => [silent, stalled].forEach((s) => s.destroy()));

    expect((await get(`${proxy.url}/meanwhile`, a.pem)).cn).toBe('handshake');
    // Node's default would keep them for 120 s; nothing is written to a socket that never spoke TLS.
    expect(await Promise.all(answers)).toEqual(['', '']);
    expect((await get(`${proxy.url}/after`, a.pem)).cn).toBe('handshake');
    expect(app.seen.map((r) => r.url)).toEqual(['/meanwhile', '/after']);
  });

  it("cuts a connection still in its TLS handshake when the drain's deadline cuts the rest: the handshake timeout does not hold a stop", async () => {
    const a = selfSigned('drain');
    const app = await startUpstream();
    const proxy = await startTestProxy(app.url, { tls: { certFile: a.cert, keyFile: a.key }, limits: { headersTimeoutSeconds: 30, requestTimeoutSeconds: 60 } });
    cleanups.push(() => app.close(), () => proxy.close());
    const silent = await rawConnect(proxy.port);
    const served = await new Promise<TLSSocket>((resolve) => {
      const s = tlsConnect({ port: proxy.port, host: '127.0.0.1', ca: a.pem, servername: 'drain' }, () => resolve(s));
    });
    const closed = (s: Duplex) => new Promise<void>((r) => (s.destroyed ? r() : s.once('close', () => r())));
    [silent, served].forEach((s) => s.on('error', () => {}));
    cleanups.push(async () => [silent, served].forEach((s) => s.destroy()));
    // What app.ts's closeServer does when a drain's deadline passes.
    const stopped = new Promise<void>((r) => proxy.server.close(() => r()));
    proxy.server.closeAllConnections();
    // Both at once, not the silent one 30 s later (the handshake timeout), which is when close() would have called back.
    await Promise.all([closed(silent), closed(served), stopped]);
  });

  it('reports a TLS client too slow with its request (408), but not one that finished its handshake and never asked anything', async () => {
    const a = selfSigned('slow-request');
    const app = await startUpstream();
    const refusals: { reason: string; peer: string | undefined }[] = [];
    const proxy = await startTestProxy(app.url, {
      tls: { certFile: a.cert, keyFile: a.key },
      limits: { headersTimeoutSeconds: 0.5, requestTimeoutSeconds: 5 },
      server: { refused: (req, refusal) => void refusals.push({ reason: refusal.reason, peer: req.socket.remoteAddress }) },
    });
    cleanups.push(() => app.close(), () => proxy.close());
    // Both finish the handshake (whose bytes Node counts apart from the request's); one then sends half a request line.
    const connectTls = () =>
      new Promise<TLSSocket>((resolve, reject) => {
        const s = tlsConnect({ host: '127.0.0.1', port: proxy.port, ca: a.pem, servername: 'localhost', checkServerIdentity: () => undefined }, () => resolve(s));
        s.once('error', reject);
      });
    const [idle, slow] = await Promise.all([connectTls(), connectTls()]);
    slow.write('GET /slow HT');
    const answers = [idle, slow].map((s) => {
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
      s.on('error', () => {});
      return new Promise<string>((r) => s.on('close', () => r(got)));
    });
    cleanups.push(async () => [idle, slow].forEach((s) => s.destroy()));
    const [idleAnswer, slowAnswer] = await Promise.all(answers);
    expect(idleAnswer).toMatch(/^HTTP\/1\.1 408 /);
    expect(slowAnswer).toMatch(/^HTTP\/1\.1 408 /);
    expect(refusals).toEqual([{ reason: 'request_timeout', peer: '127.0.0.1' }]);
  });

  it('refuses unreadable or mismatched files at startup with a coded error naming the key', () => {
    const a = selfSigned('start-a');
    const b = selfSigned('start-b');
    const missing = { certFile: join(dir, 'nope.crt'), keyFile: a.key };
    expect(() => loadTlsMaterial(missing)).toThrow(TlsConfigError);
    expect(() => loadTlsMaterial(missing)).toThrow(/^inbound\.tls\.certFile: cannot read \S*nope\.crt: no such file$/);
    expect(() => createLimitedServer(limitsWith(), () => {}, missing)).toThrow(TlsConfigError);
    // Neither file there: both named in the one error, on their key paths, as every other config file problem.
    const neither = { certFile: join(dir, 'nope.crt'), keyFile: join(dir, 'nope.key') };
    expect(issuesOf(() => loadTlsMaterial(neither))).toEqual([
      `inbound.tls.certFile: cannot read ${neither.certFile}: no such file`,
      `inbound.tls.keyFile: cannot read ${neither.keyFile}: no such file`,
    ]);
    try {
      loadTlsMaterial({ certFile: a.cert, keyFile: b.key });
      expect.unreachable();
    } catch (err) {
      expect((err as TlsConfigError).code).toBe('tls_invalid');
      expect((err as Error).message).toMatch(/not a usable pair/);
    }
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, 'not a pem');
    expect(() => loadTlsMaterial({ certFile: garbage, keyFile: a.key })).toThrow(TlsConfigError);
  });

  it('says what is wrong with the files OpenSSL would only call "bad decrypt" or "unsupported": a passphrase, swapped files, no key', () => {
    const a = selfSigned('contents');
    const b = selfSigned('contents-other');
    const key = createPrivateKey(readFileSync(a.key));
    const write = (name: string, text: string) => {
      writeFileSync(join(dir, name), text);
      return join(dir, name);
    };
    const encryptedPkcs8 = write('enc-pkcs8.key', String(key.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'pw' })));
    const encryptedSec1 = write('enc-sec1.key', String(key.export({ format: 'pem', type: 'sec1', cipher: 'aes-256-cbc', passphrase: 'pw' })));
    for (const keyFile of [encryptedPkcs8, encryptedSec1]) {
      expect(issuesOf(() => loadTlsMaterial({ certFile: a.cert, keyFile }))).toEqual([
        expect.stringMatching(/^inbound\.tls\.keyFile: the private key is encrypted with a passphrase, which the sidecar cannot supply/),
      ]);
    }
    // The two files swapped: each named on its own key path, with what it holds instead.
    expect(issuesOf(() => loadTlsMaterial({ certFile: a.key, keyFile: a.cert }))).toEqual([
      'inbound.tls.certFile: no PEM certificate (-----BEGIN CERTIFICATE-----): it holds PRIVATE KEY',
      'inbound.tls.keyFile: no PEM private key (-----BEGIN PRIVATE KEY----- or similar): it holds CERTIFICATE',
    ]);
    const text = write('text.key', 'not a pem');
    expect(issuesOf(() => loadTlsMaterial({ certFile: a.cert, keyFile: text }))).toEqual([
      'inbound.tls.keyFile: no PEM private key (-----BEGIN PRIVATE KEY----- or similar): it holds no PEM block',
    ]);
    // Both PEM, of the right kinds, but not a pair.
    expect(issuesOf(() => loadTlsMaterial({ certFile: a.cert, keyFile: b.key }))).toEqual([
      "inbound.tls: certFile and keyFile are not a usable pair: the key in keyFile is not the certificate's key",
    ]);
    // A key file that also holds the chain, and a certificate file that also holds the key, are both fine.
    const both = write('both.pem', readFileSync(a.cert, 'utf8') + readFileSync(a.key, 'utf8'));
    expect(loadTlsMaterial({ certFile: both, keyFile: both }).cert.length).toBeGreaterThan(0);
  });

  it('takes every certificate label OpenSSL serves: "TRUSTED CERTIFICATE" (openssl x509 -trustout) and the old "X509 CERTIFICATE"', () => {
    const a = selfSigned('cert-labels');
    const pem = readFileSync(a.cert, 'utf8');
    const trusted = join(dir, 'trusted.crt');
    execFileSync('openssl', ['x509', '-in', a.cert, '-trustout', '-addtrust', 'serverAuth', '-out', trusted]);
    expect(readFileSync(trusted, 'utf8')).toMatch(/^-----BEGIN TRUSTED CERTIFICATE-----/m);
    const old = join(dir, 'old-label.crt');
    writeFileSync(old, pem.replace(/(BEGIN|END) CERTIFICATE/g, '$1 X509 CERTIFICATE'));
    for (const certFile of [trusted, old]) {
      expect(loadTlsMaterial({ certFile, keyFile: a.key }).cert.length).toBeGreaterThan(0);
    }
  });

  it('takes PEM files whose BEGIN lines start with a UTF-8 byte order mark (a Windows editor), as OpenSSL does', () => {
    const a = selfSigned('plain-for-bom');
    const bom = '\uFEFF';
    const cert = join(dir, 'bom.crt');
    const key = join(dir, 'bom.key');
    const both = join(dir, 'bom-both.pem');
    writeFileSync(cert, bom + readFileSync(a.cert, 'utf8'));
    writeFileSync(key, bom + readFileSync(a.key, 'utf8'));
    // A chain put together with cat, the key's file saved with a mark: the mark is mid-file.
    writeFileSync(both, readFileSync(a.cert, 'utf8') + bom + readFileSync(a.key, 'utf8'));
    for (const files of [{ certFile: cert, keyFile: a.key }, { certFile: a.cert, keyFile: key }, { certFile: both, keyFile: both }]) {
      expect(loadTlsMaterial(files).cert.length).toBeGreaterThan(0);
    }
  });

  it('refuses a FIFO, a device or an oversized file as certFile/keyFile without reading it (a FIFO would block the event loop)', () => {
    const a = selfSigned('odd-files');
    const fifo = join(dir, 'cert.fifo');
    execFileSync('mkfifo', [fifo]);
    const huge = join(dir, 'huge.pem');
    writeFileSync(huge, Buffer.alloc(1024 * 1024 + 1, 'A'));
    const cases: [string, TlsFiles, RegExp][] = [
      ['a FIFO', { certFile: fifo, keyFile: a.key }, /inbound\.tls\.certFile: cannot read \S*cert\.fifo: is not a regular file$/],
      ['/dev/zero', { certFile: a.cert, keyFile: '/dev/zero' }, /inbound\.tls\.keyFile: cannot read \/dev\/zero: is not a regular file$/],
      ['over 1 MiB', { certFile: huge, keyFile: a.key }, /inbound\.tls\.certFile: cannot read \S*huge\.pem: larger than 1 MiB, which is plenty for a PEM certificate chain or private key$/],
    ];
    for (const [label, files, message] of cases) expect(() => loadTlsMaterial(files), label).toThrow(message);
  });
});
