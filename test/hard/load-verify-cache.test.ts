import { Agent } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRaw, startRecordingApp, type RecordingApp } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { epochSeconds } from '../support/tokens.js';
import { gauge, get, MiB, runPool, tally } from './load-support.js';

/**
 * 10,000 distinct valid tokens (each carrying a 3 KB claim, as fat real
 * tokens do) through a sidecar whose verified-token cache is capped at 100
 * entries: resident memory stays bounded. The same load through a sidecar
 * with a cache big enough to keep every token is the control: it shows the
 * measurement can see what an unbounded cache would cost.
 */

const TOKENS = 10_000;
const WARMUP = 1_000;
let idp: TestIdp;
let app: RecordingApp;
let tokens: string[];

beforeAll(async () => {
  idp = await startIdp({ alg: 'ES256' });
  app = await startRecordingApp((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200).end());
  });
  const key = idp.signingKeys[0]!;
  const now = epochSeconds();
  const pad = 'p'.repeat(3000);
  tokens = Array.from({ length: TOKENS }, (_, i) =>
    signRaw({ alg: 'ES256', typ: 'at+jwt', kid: key.kid }, { iss: idp.issuer, sub: `svc-${i}`, aud: 'orders', iat: now, exp: now + 3600, jti: `t-${i}`, pad }, key.private),
  );
});
afterAll(async () => {
  await Promise.all([app?.close(), idp?.close()]);
});

async function drive(sidecar: SidecarProcess, from: number, to: number): Promise<Map<number, number>> {
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  try {
    const statuses = await runPool(to - from, 16, (i) => get(sidecar.inbound!, '/x', { authorization: `Bearer ${tokens[from + i]}` }, agent).then((r) => r.status));
    return tally(statuses);
  } finally {
    agent.destroy();
  }
}

async function measure(maxEntries: number, maxBytes?: number): Promise<{ rssWarm: number; rssEnd: number; heapWarm: number; heapEnd: number }> {
  const sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], cache: { maxEntries, ...(maxBytes === undefined ? {} : { maxBytes }) } },
  });
  try {
    expect(await drive(sidecar, 0, WARMUP)).toEqual(new Map([[200, WARMUP]]));
    const rssWarm = await gauge(sidecar.admin, 'process_resident_memory_bytes');
    const heapWarm = await gauge(sidecar.admin, 'nodejs_heap_size_used_bytes');
    expect(await drive(sidecar, WARMUP, TOKENS)).toEqual(new Map([[200, TOKENS - WARMUP]]));
    const rssEnd = await gauge(sidecar.admin, 'process_resident_memory_bytes');
    const heapEnd = await gauge(sidecar.admin, 'nodejs_heap_size_used_bytes');
    return { rssWarm, rssEnd, heapWarm, heapEnd };
  } finally {
    await sidecar.stop();
  }
}

describe('verified-token cache under 10k distinct tokens', () => {
  it('with cache.maxEntries 100, resident memory stays bounded; a cache that keeps everything (the control) grows visibly', async () => {
    const bounded = await measure(100);
    // The control keeps everything: no count and no byte budget (32 MiB by default) in the way.
    const unbounded = await measure(TOKENS * 2, 2 ** 40);
    const mb = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
    console.log(
      `verify cache, ${TOKENS} distinct tokens: maxEntries=100 rss ${mb(bounded.rssWarm)} -> ${mb(bounded.rssEnd)}, heap ${mb(bounded.heapWarm)} -> ${mb(bounded.heapEnd)}; ` +
        `maxEntries=${TOKENS * 2} rss ${mb(unbounded.rssWarm)} -> ${mb(unbounded.rssEnd)}, heap ${mb(unbounded.heapWarm)} -> ${mb(unbounded.heapEnd)}`,
    );
    expect(bounded.rssEnd - bounded.rssWarm).toBeLessThan(32 * MiB);
    expect(unbounded.heapEnd - unbounded.heapWarm).toBeGreaterThan(bounded.heapEnd - bounded.heapWarm + 32 * MiB);
  });
});
