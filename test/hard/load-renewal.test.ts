import { Agent } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultyFront, startRecordingApp, type FaultyFront, type RecordingApp } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { get, tally } from './load-support.js';

/**
 * 1,000 concurrent calls at token renewal time. A front at the IdP's token
 * endpoint holds the background renewal request, so the renewal is
 * guaranteed to be in flight: first while the old token is still valid
 * (calls use it), then after it has expired (calls wait for the renewal).
 * Either way the IdP sees one token request for the renewal.
 */

// Long enough that the first burst (1,000 new connections) lands well inside the old token's last 20-50 % even
// on a busy machine. With 4 s that window was 0.8-2 s, and once 108 calls of the burst ended in 503, most likely
// calls that arrived after expiry and waited on the held renewal until its request timed out.
const TTL = 10;
let idp: TestIdp;
let front: FaultyFront;
let app: RecordingApp;
let sidecar: SidecarProcess;

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 'orders-secret' }], accessTokenTtlSeconds: TTL });
  front = await startFaultyFront(idp.issuer);
  app = await startRecordingApp();
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    limits: { upstreamConnections: 256 },
    outbound: {
      tokenSource: { type: 'client_credentials', tokenEndpoint: `${front.url}/token`, clientId: 'orders', clientSecret: 'orders-secret' },
      routes: [{ host: 'payments', target: app.url, audience: 'payments' }],
    },
  });
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([front?.close(), app?.close(), idp?.close()]);
});

const bearer = (v: unknown) => (typeof v === 'string' ? v.replace(/^Bearer /, '') : undefined);
const expOf = (t: string) => (JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp * 1000;

/** 1,000 calls at once, each on its own connection; resolves with the token each call reached the app with. */
async function burst(label: string): Promise<string[]> {
  const agent = new Agent({ keepAlive: false, maxSockets: 1000 });
  const before = app.requests.length;
  const replies = await Promise.all(Array.from({ length: 1000 }, (_, i) => get(sidecar.outbound!, `/${label}/${i}`, { host: 'payments' }, agent)));
  agent.destroy();
  expect(tally(replies.map((r) => r.status)), `statuses of the ${label} burst`).toEqual(new Map([[200, 1000]]));
  const seen = app.requests.slice(before);
  expect(seen).toHaveLength(1000);
  return seen.map((r) => bearer(r.headers.authorization)!);
}

describe('1,000 concurrent calls at token renewal time', () => {
  it('cost one IdP token request, whether the old token is still valid or has just expired', async () => {
    await sidecar.waitReady();
    expect(front.counts.pass).toBe(1);
    const before = app.requests.length;
    expect((await get(sidecar.outbound!, '/warm', { host: 'payments' }, new Agent())).status).toBe(200);
    const oldToken = bearer(app.requests[before]!.headers.authorization)!;

    // Hold the renewal the sidecar starts in the background (at 50-80 % of the lifetime).
    front.mode = 'hold';
    while ((front.counts.hold ?? 0) < 1) await new Promise((r) => setTimeout(r, 20));

    // Renewal in flight, old token still valid: every call goes out at once with the old token.
    expect(Date.now()).toBeLessThan(expOf(oldToken));
    const whileValid = await burst('valid');
    expect(new Set(whileValid)).toEqual(new Set([oldToken]));

    // Let the old token expire with the renewal still held; then 1,000 calls must all wait for that one renewal.
    while (Date.now() < expOf(oldToken) + 100) await new Promise((r) => setTimeout(r, 20));
    const waiting = burst('expired');
    // Give the calls time to arrive and queue on the renewal; any that arrive later only find the new token sooner.
    await new Promise((r) => setTimeout(r, 500));
    expect(app.requests.filter((r) => r.url.startsWith('/expired/'))).toEqual([]);
    front.release();
    const afterExpiry = await waiting;
    const fresh = new Set(afterExpiry);
    expect(fresh.size).toBe(1);
    expect(fresh.has(oldToken)).toBe(false);

    // One request for the start-up token, one for the renewal: nothing else reached the IdP.
    expect(front.counts.hold).toBe(1);
    expect(front.counts.pass).toBe(1);
    expect(idp.counts.token).toBe(2);
    console.log('renewal: 2,000 concurrent calls around one renewal (1,000 while valid, 1,000 after expiry) cost 1 IdP token request');
  });
});
