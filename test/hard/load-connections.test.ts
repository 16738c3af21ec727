import { Agent } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingApp, type RecordingApp } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { get, runPool, tally } from './load-support.js';

/**
 * 300 connections that hold the inbound listener without finishing a
 * request (silent, slowloris headers, half-closed mid-headers, a verified
 * request whose body never completes) while real clients are served. The
 * real clients see no failure; the sidecar sheds every hanging connection
 * on its own (headers and request timeouts), and the app sees no request
 * whose head never completed (a verified request with a slow body streams
 * to the app, as bodies do, and is cut with it).
 */

let idp: TestIdp;
let app: RecordingApp;
let sidecar: SidecarProcess;

beforeAll(async () => {
  idp = await startIdp();
  app = await startRecordingApp();
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    limits: { headersTimeoutSeconds: 2, requestTimeoutSeconds: 4, keepAliveTimeoutSeconds: 2 },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
  });
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), idp?.close()]);
});

interface Hanger {
  kind: string;
  socket: Socket;
  closedByServer: boolean;
  closed: Promise<void>;
}

function hang(kind: string, first: string, opts: { halfClose?: boolean } = {}): Promise<Hanger> {
  const { port } = new URL(sidecar.inbound!);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1', () => {
      if (first) socket.write(first);
      if (opts.halfClose) socket.end();
      resolve(h);
    });
    socket.on('error', () => {});
    socket.on('data', () => {});
    const h: Hanger = {
      kind,
      socket,
      closedByServer: false,
      closed: new Promise((r) => socket.once('close', () => r())),
    };
    socket.once('end', () => (h.closedByServer = true));
    socket.once('error', reject);
  });
}

describe('300 idle and half-open connections', () => {
  it('real clients are all served while they hang; the sidecar then sheds every one of them; the app saw no incomplete request head', async () => {
    const token = await idp.getToken('orders', 'orders');
    const hangers: Hanger[] = [];
    for (let i = 0; i < 75; i++) {
      hangers.push(
        await hang('silent', ''),
        await hang('slowloris', `GET /slow-${i} HTTP/1.1\r\nHost: orders\r\nX-Slow: `),
        await hang('half-closed', `GET /half-${i} HTTP/1.1\r\nHost: orders\r\nAuthor`, { halfClose: true }),
        await hang('unfinished-body', `POST /body-${i} HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${token}\r\nContent-Length: 1000\r\n\r\n${'a'.repeat(10)}`),
      );
    }
    expect(hangers).toHaveLength(300);

    const agent = new Agent({ keepAlive: true, maxSockets: 20 });
    const statuses = await runPool(1000, 20, () => get(sidecar.inbound!, '/real', { authorization: `Bearer ${token}` }, agent).then((r) => r.status));
    agent.destroy();
    expect(tally(statuses)).toEqual(new Map([[200, 1000]]));
    expect((await fetch(`${sidecar.admin}/healthz`)).status).toBe(200);

    // The sidecar closes them itself (timeouts are 2 s for headers, 4 s for a whole request).
    await Promise.all(hangers.map((h) => h.closed));
    const notClosedByServer = hangers.filter((h) => !h.closedByServer && h.kind !== 'half-closed').map((h) => h.kind);
    expect(notClosedByServer).toEqual([]);
    // Heads that never completed never reached the app; verified requests with unfinished bodies streamed to it under their own path.
    const seen = tally(app.requests.map((r) => r.url.replace(/-\d+$/, '')));
    expect(seen.get('/real')).toBe(1000);
    expect(seen.get('/slow')).toBeUndefined();
    expect(seen.get('/half')).toBeUndefined();
    expect([...seen.keys()].filter((k) => !['/real', '/body'].includes(k))).toEqual([]);
    expect(sidecar.child.exitCode).toBeNull();
    console.log(`connections: 300 hanging (${[...tally(hangers.map((h) => h.kind))].map(([k, n]) => `${n} ${k}`).join(', ')}), 1000 real requests all 200, every hanging connection shed by the sidecar`);
  });
});
