import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { rawExchange } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { send, type Reply } from './outbound-support.js';

/**
 * A sidecar writes times (log lines, messages, the `Date` header) without the Date methods that load V8's time zone
 * cache and with it ~1 MiB of the binary's ICU data (src/time-text.ts). Both sides run here with a preload that
 * counts those calls; every kind of response and log line a sidecar writes is produced, and each response still has
 * a `Date` (RFC 9110 §6.6.1).
 */
const countDateText = `--require="${resolve(import.meta.dirname, '../support/count-date-text.cjs')}"`;
const counted = (stderr: string) => /^date-text calls: (\d+) (.*)$/m.exec(stderr)?.slice(1);
const APP_DATE = 'Wed, 21 Oct 2015 07:28:00 GMT';

let idp: TestIdp;
let app: UpstreamApp;
let inbound: SidecarProcess;
let outbound: SidecarProcess;

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 'orders-secret' }] });
  app = await startUpstream((req, res) => {
    if (req.url === '/dateless') res.sendDate = false;
    res.writeHead(200, req.url === '/dated' ? { date: APP_DATE } : {}).end('ok');
  });
  const env = { NODE_OPTIONS: countDateText };
  inbound = await startSidecar(
    { service: 'payments', inbound: { target: app.url, audience: 'payments', issuers: [{ issuer: idp.issuer }], rules: [{ match: { path: '/**' }, allow: [{ sub: 'orders' }] }] } },
    { env },
  );
  outbound = await startSidecar(
    {
      service: 'orders',
      outbound: {
        tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' },
        routes: [{ host: 'payments', target: inbound.inbound!, audience: 'payments' }],
      },
    },
    { env },
  );
});

afterAll(async () => {
  await Promise.all([inbound, outbound].filter(Boolean).map((s) => s.stop()));
  await app?.close();
  await idp?.close();
});

/** A Date header that is an IMF-fixdate within a few seconds of now. */
function expectCurrentDate(reply: Reply): void {
  const date = reply.headers.date;
  expect(date).toMatch(/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$/);
  expect(Math.abs(Date.parse(date!) - Date.now())).toBeLessThan(5_000);
}

describe('times as text without V8 time zone data', () => {
  it('every response has a Date: the upstream’s passed on untouched, the sidecar’s own where there is none', async () => {
    const dated = await send(outbound.outbound!, { target: '/dated', host: 'payments' });
    expect(dated.status).toBe(200);
    expect(dated.headers.date).toBe(APP_DATE);
    // An upstream answer without one, through both sidecars: the inbound one adds it, as Node did.
    const dateless = await send(outbound.outbound!, { target: '/dateless', host: 'payments' });
    expect(dateless.status).toBe(200);
    expectCurrentDate(dateless);
    const direct = await send(inbound.inbound!, { target: '/dateless', headers: { authorization: `Bearer ${await idp.getToken('orders', 'payments')}` } });
    expect(direct.status).toBe(200);
    expectCurrentDate(direct);
    // The sidecars' own answers: a refusal on each side, and the admin endpoints (answered implicitly and explicitly).
    const refused = await send(inbound.inbound!, { target: '/x' });
    expect(refused.status).toBe(401);
    expectCurrentDate(refused);
    const noRoute = await send(outbound.outbound!, { target: '/x', host: 'nowhere' });
    expect(noRoute.status).toBeGreaterThanOrEqual(400);
    expectCurrentDate(noRoute);
    for (const path of ['/healthz', '/readyz', '/metrics', '/nope']) {
      const reply = await send(outbound.admin, { target: path });
      expectCurrentDate(reply);
    }
    // Answers written straight onto the socket, with no ServerResponse: a CONNECT refused, an upgrade without a
    // token, and a request Node's parser refuses.
    for (const [base, bytes, status] of [
      [inbound.inbound!, 'CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n', 405],
      [inbound.inbound!, 'GET /ws HTTP/1.1\r\nHost: payments\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', 401],
      [outbound.outbound!, 'GET /x HTTP/1.1\r\nHost: payments\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n', 400],
    ] as const) {
      const raw = (await rawExchange(base, bytes)).responses[0]!;
      expect(raw.status, bytes).toBe(status);
      expectCurrentDate({ status: raw.status, headers: raw.headers } as unknown as Reply);
    }
  });

  it('neither sidecar called a Date method that loads time zone data, through all of it and its log lines', async () => {
    // The log lines written: a token issued (with its expiry as ISO text), a refusal, startup and shutdown.
    expect(outbound.logs.some((l) => l.event === 'token_issued' && typeof l.expiresAt === 'string')).toBe(true);
    expect(inbound.logs.some((l) => l.event === 'token_rejected')).toBe(true);
    for (const sidecar of [inbound, outbound]) {
      expect(sidecar.logs.every((l) => typeof l.time === 'string' && new Date(l.time as string).toISOString() === l.time)).toBe(true);
      await sidecar.stop();
      // The process has exited, but its last stderr line may still be on the way.
      await vi.waitFor(() => expect(counted(sidecar.output())).toBeDefined());
      expect(counted(sidecar.output())).toEqual(['0', '']);
    }
    // The control: Node's own Date header is written with toUTCString, and the preload sees it.
    const control = spawnSync(
      process.execPath,
      [
        '-e',
        "const http = require('node:http'); http.createServer((q, s) => s.end()).listen(0, '127.0.0.1', function () { http.get(`http://127.0.0.1:${this.address().port}`, (r) => r.resume().on('end', () => process.exit(0))); });",
      ],
      { env: { ...process.env, NODE_OPTIONS: countDateText }, encoding: 'utf8' },
    );
    expect(control.status).toBe(0);
    expect(counted(control.stderr)?.[1]).toContain('toUTCString');
  });
});
