import { Agent } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRecordingApp, type RecordingApp } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { tamperHeader } from '../support/tokens.js';
import { get, runPool, tally } from './load-support.js';

/**
 * A flood of tokens with random `kid`s (an attacker trying to turn the
 * sidecar into a JWKS hammer against its own IdP) for several cooldown
 * periods: the IdP sees at most one JWKS fetch per cooldown, every flood
 * token is 401 unknown_key, and a real caller is served throughout.
 */

const COOLDOWN = 2;
/** The flood lasts this many cooldown periods. */
const PERIODS = 4;
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
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], jwks: { cooldownSeconds: COOLDOWN } },
  });
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), idp?.close()]);
});

describe('random-kid flood', () => {
  it(`random kids for ${PERIODS} cooldowns of ${COOLDOWN} s: at most one JWKS fetch per cooldown, all 401 unknown_key, real callers served`, async () => {
    const valid = await idp.getToken('orders', 'orders');
    const before = { ...idp.counts };
    const agent = new Agent({ keepAlive: true, maxSockets: 32 });
    const started = Date.now();
    let realOk = 0;
    let realOther = 0;
    let flooding = true;
    // A real caller alongside the flood, one request at a time.
    const real = (async () => {
      const realAgent = new Agent({ keepAlive: true, maxSockets: 1 });
      while (flooding) {
        const r = await get(sidecar.inbound!, '/real', { authorization: `Bearer ${valid}` }, realAgent);
        if (r.status === 200) realOk++;
        else realOther++;
      }
      realAgent.destroy();
    })();
    const deadline = started + PERIODS * COOLDOWN * 1000 + 500;
    const replies: string[] = [];
    await runPool(32, 32, async (w) => {
      for (let i = 0; Date.now() < deadline; i++) {
        const token = tamperHeader(valid, { kid: `flood-${w}-${i}-${Math.random().toString(36).slice(2)}` });
        const r = await get(sidecar.inbound!, '/flood', { authorization: `Bearer ${token}` }, agent);
        replies.push(`${r.status} ${JSON.parse(r.body).reason}`);
      }
    });
    const elapsed = (Date.now() - started) / 1000;
    const FLOOD = replies.length;
    flooding = false;
    await real;
    agent.destroy();

    const fetches = idp.counts.jwks - before.jwks;
    console.log(`kid flood: ${FLOOD} requests in ${elapsed.toFixed(1)} s (${Math.round(FLOOD / elapsed)}/s), ${fetches} JWKS fetches, ${realOk} real calls served meanwhile`);
    expect(tally(replies)).toEqual(new Map([['401 unknown_key', FLOOD]]));
    expect(fetches).toBeLessThanOrEqual(Math.ceil(elapsed / COOLDOWN) + 1);
    expect(fetches).toBeGreaterThanOrEqual(1);
    expect(idp.counts.discovery - before.discovery).toBe(0);
    expect(idp.counts.token - before.token).toBe(0);
    expect(realOther).toBe(0);
    expect(realOk).toBeGreaterThan(0);
    expect(app.requests.filter((r) => r.url === '/flood')).toEqual([]);
    expect(app.requests.filter((r) => r.url === '/real')).toHaveLength(realOk);
  });
});
