import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { JWK } from 'jose';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { KeysUnavailableError } from '../../src/errors.js';
import { filterJwks } from '../../src/inbound/jwks-filter.js';
import { createKeyStore } from '../../src/inbound/key-store.js';
import { selfSignedCert } from '../support/certs.js';
import { startIdp } from '../support/idp.js';
import { testKeyPair, unusableJwks } from '../support/tokens.js';
import {
  captureLogger,
  counterValue,
  inboundConfig,
  manualClock,
  manualScheduler,
  startJwksServer,
  testMetrics,
  type JwksServer,
} from './inbound-support.js';

const cleanups: Array<() => Promise<unknown> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** `random` spreads a Retry-After wait; 0 (none added) unless a test is about the spread. */
async function setup(jwks: Record<string, unknown> = {}, initialKeys?: (k1: JWK) => unknown[], random = () => 0) {
  const k1 = await testKeyPair('RS256', 'k1');
  const server = await startJwksServer({ keys: initialKeys?.(k1.publicJwk) ?? [k1.publicJwk] });
  cleanups.push(() => server.close());
  const config = inboundConfig({ issuers: [{ issuer: 'http://idp.test', jwksUri: server.url }], jwks });
  const clock = manualClock();
  const scheduler = manualScheduler();
  const metrics = testMetrics();
  const { logger, lines } = captureLogger();
  const store = createKeyStore(config.issuers, config.jwks, { logger, metrics, clock, scheduler, random });
  cleanups.push(() => store.close());
  return { k1, server, config, clock, scheduler, metrics, lines, store, keys: () => store.get('http://idp.test')! };
}

/** Runs the pending refresh timer and waits until that fetch reached the server and its outcome is applied. */
async function fireTimer(server: JwksServer, scheduler: ReturnType<typeof manualScheduler>): Promise<void> {
  const before = server.count;
  expect(scheduler.runAll()).toBe(1);
  await vi.waitFor(() => expect(server.count).toBe(before + 1));
  await vi.waitFor(() => expect(scheduler.pending()).toHaveLength(1));
}

describe('key store', () => {
  it('loads the keys from jwksUri, becomes ready, counts the fetch and schedules the refresh', async () => {
    const { store, server, metrics, scheduler, keys } = await setup({ refreshIntervalSeconds: 120 });
    expect(store.isReady()).toBe(false);
    expect(() => keys().keySet()).toThrow(KeysUnavailableError);
    await store.start();
    expect(store.isReady()).toBe(true);
    expect(server.count).toBe(1);
    expect(keys().version).toBe(1);
    expect(typeof keys().keySet()).toBe('function');
    expect(await counterValue(metrics, 'jwksFetches', { issuer: 'http://idp.test', result: 'success' })).toBe(1);
    expect(scheduler.pending()).toEqual([{ ms: 120_000 }]);
  });

  it('finds the JWKS by OIDC discovery on a real provider', async () => {
    const idp = await startIdp();
    cleanups.push(() => idp.close());
    const config = inboundConfig({ issuers: [{ issuer: idp.issuer }] });
    const store = createKeyStore(config.issuers, config.jwks, {
      logger: captureLogger().logger,
      metrics: testMetrics(),
      clock: manualClock(),
      scheduler: manualScheduler(),
    });
    cleanups.push(() => store.close());
    await store.start();
    expect(store.isReady()).toBe(true);
    expect(idp.counts.discovery).toBe(1);
    expect(idp.counts.jwks).toBe(1);
  });

  it('retries a failing startup with doubling backoff capped at retryMaxSeconds, and is ready once a fetch works', async () => {
    const { store, server, scheduler, metrics, keys, lines } = await setup({ retryMinSeconds: 1, retryMaxSeconds: 4 });
    server.set({ status: 503, body: '{}' });
    await store.start();
    expect(store.isReady()).toBe(false);
    expect(keys().lastError).toMatch(/HTTP 503/);
    expect(() => keys().keySet()).toThrow(/not loaded/);
    const delays = [scheduler.pending()[0]!.ms];
    for (let i = 0; i < 4; i++) {
      await fireTimer(server, scheduler);
      delays.push(scheduler.pending()[0]!.ms);
    }
    expect(delays).toEqual([1000, 2000, 4000, 4000, 4000]);
    expect(await counterValue(metrics, 'jwksFetches', { issuer: 'http://idp.test', result: 'jwks_http_error' })).toBe(5);
    expect(lines.some((l) => l.event === 'jwks_fetch_failed')).toBe(true);

    server.set({ keys: [(await testKeyPair('ES256', 'e1')).publicJwk] });
    await fireTimer(server, scheduler);
    expect(store.isReady()).toBe(true);
    expect(scheduler.pending()[0]!.ms).toBe(300_000);
  });

  it("waits as long as a 429's Retry-After asks (within the backoff's bounds) before the next fetch, and an unknown kid does not fetch sooner", async () => {
    const { store, server, scheduler, clock, keys, lines } = await setup({ retryMinSeconds: 1, retryMaxSeconds: 60, cooldownSeconds: 1 });
    server.set({ status: 429, body: '{}', headers: { 'retry-after': '20' } });
    await store.start();
    expect(scheduler.pending()).toEqual([{ ms: 20_000 }]);
    expect(lines.find((l) => l.event === 'jwks_fetch_failed')).toMatchObject({ error: 'jwks_http_error', retryAfterSeconds: 20 });
    // A flood of unknown kids inside that window sends the IdP nothing, past the cooldown too.
    clock.advance(19_999);
    for (let i = 0; i < 5; i++) expect(await keys().refetchForUnknownKey()).toBe(false);
    expect(server.count).toBe(1);
    // Asked for more than retryMaxSeconds (here as a date): capped there.
    server.set({ status: 503, body: '{}', headers: { 'retry-after': new Date(clock.now() + 3_600_000).toUTCString() } });
    clock.advance(1);
    await fireTimer(server, scheduler);
    expect(scheduler.pending()).toEqual([{ ms: 60_000 }]);
    // Once the window has passed, a fetch goes out again; a success ends the quiet at once.
    server.set({ keys: [(await testKeyPair('ES256', 'e1')).publicJwk] });
    clock.advance(60_000);
    expect(await keys().refetchForUnknownKey()).toBe(true);
    expect(server.count).toBe(3);
    expect(store.isReady()).toBe(true);
  });

  it('keeps verifying with the last good keys through fetch failures, until maxStaleSeconds', async () => {
    const { store, server, scheduler, clock, keys } = await setup({ maxStaleSeconds: 3600, refreshIntervalSeconds: 60 });
    await store.start();
    const before = keys().keySet();
    server.set({ status: 500, body: 'oops' });
    clock.advance(60_000);
    await fireTimer(server, scheduler);
    clock.advance(3_000_000);
    expect(keys().keySet()).toBe(before);
    expect(store.isReady()).toBe(true);
    clock.advance(600_001);
    expect(store.isReady()).toBe(false);
    expect(() => keys().keySet()).toThrow(KeysUnavailableError);
    expect(() => keys().keySet()).toThrow(/older than 3600 s/);

    server.set({ keys: [(await testKeyPair('RS256', 'k2')).publicJwk] });
    await fireTimer(server, scheduler);
    expect(store.isReady()).toBe(true);
  });

  it("spreads a Retry-After wait by up to a fifth more, never past the backoff's ceiling, so a fleet throttled at once does not come back at once", async () => {
    const { store, server, scheduler, clock, keys, lines } = await setup({ retryMinSeconds: 1, retryMaxSeconds: 60, cooldownSeconds: 1 }, undefined, () => 1);
    server.set({ status: 429, body: '{}', headers: { 'retry-after': '20' } });
    await store.start();
    expect(scheduler.pending()).toEqual([{ ms: 24_000 }]);
    expect(lines.find((l) => l.event === 'jwks_fetch_failed')).toMatchObject({ retryAfterSeconds: 24 });
    // The spread quiet holds an unknown kid off too.
    clock.advance(23_999);
    expect(await keys().refetchForUnknownKey()).toBe(false);
    expect(server.count).toBe(1);
    // 55 s plus a fifth would pass retryMaxSeconds: the wait stops there.
    server.set({ status: 429, body: '{}', headers: { 'retry-after': '55' } });
    clock.advance(1);
    await fireTimer(server, scheduler);
    expect(scheduler.pending()).toEqual([{ ms: 60_000 }]);
  });

  it('with the shortest maxStaleSeconds the schema accepts, the keys outlive a refresh and a retry that each take their whole timeout budget', async () => {
    // 20 (refresh) + 2 × 1 (discovery, JWKS) + 1 (retryMinSeconds) + 2 × 1 = 25: the least the schema accepts for these values.
    const { store, server, scheduler, clock, keys } = await setup({ refreshIntervalSeconds: 20, timeoutSeconds: 1, retryMinSeconds: 1, maxStaleSeconds: 25 });
    await store.start();
    const attempt = async (answer: Parameters<JwksServer['set']>[0], takesMs: number) => {
      const before = server.count;
      server.hold();
      expect(scheduler.runAll()).toBe(1);
      await vi.waitFor(() => expect(server.count).toBe(before + 1));
      clock.advance(takesMs); // the IdP answers at the very end of the budget
      expect(store.isReady()).toBe(true);
      server.set(answer);
      server.release();
      await vi.waitFor(() => expect(scheduler.pending()).toHaveLength(1));
    };
    clock.advance(20_000);
    await attempt({ status: 503, body: '{}' }, 2000); // the scheduled refresh fails slowly ...
    expect(scheduler.pending()).toEqual([{ ms: 1000 }]);
    clock.advance(1000);
    await attempt({ keys: [(await testKeyPair('RS256', 'k2')).publicJwk] }, 2000); // ... and the retry, as slow, succeeds in time
    expect(scheduler.pending()).toEqual([{ ms: 20_000 }]);
    clock.advance(24_999);
    expect(keys().isUsable()).toBe(true);
    expect(keys().version).toBe(2);
  });

  it('refetches for an unknown kid at most once per cooldown, counted from the last fetch of any kind', async () => {
    const { store, server, clock, keys } = await setup({ cooldownSeconds: 30 });
    await store.start();
    expect(server.count).toBe(1);
    for (let i = 0; i < 20; i++) await keys().refetchForUnknownKey();
    expect(server.count).toBe(1);
    clock.advance(30_000);
    for (let i = 0; i < 20; i++) await keys().refetchForUnknownKey();
    expect(server.count).toBe(2);
    clock.advance(29_999);
    await keys().refetchForUnknownKey();
    expect(server.count).toBe(2);
  });

  it("counts the cooldown, an IdP's Retry-After and maxStaleSeconds on the monotonic clock: a wall clock step neither holds off a refetch nor makes fresh keys stale", async () => {
    const { store, server, clock, keys } = await setup({ cooldownSeconds: 1, maxStaleSeconds: 3600, refreshIntervalSeconds: 60 });
    const hour = 3_600_000;
    await store.start();
    // The wall clock steps back an hour (NTP, a resumed VM): an unknown kid a cooldown later still refetches.
    clock.set(clock.now() - hour);
    clock.advance(1000);
    expect(await keys().refetchForUnknownKey()).toBe(true);
    expect(server.count).toBe(2);
    // It steps forward two hours: keys fetched a moment ago are not stale.
    clock.set(clock.now() + 2 * hour);
    expect(store.isReady()).toBe(true);
    expect(typeof keys().keySet()).toBe('function');
    // The IdP asks for 20 s of quiet and the wall clock steps back: 20 s later a fetch goes out again.
    server.set({ status: 429, body: '{}', headers: { 'retry-after': '20' } });
    clock.advance(1000);
    expect(await keys().refetchForUnknownKey()).toBe(false);
    expect(server.count).toBe(3);
    clock.set(clock.now() - hour);
    clock.advance(19_999);
    expect(await keys().refetchForUnknownKey()).toBe(false);
    expect(server.count).toBe(3);
    server.set({ keys: [(await testKeyPair('ES256', 'e1')).publicJwk] });
    clock.advance(1);
    expect(await keys().refetchForUnknownKey()).toBe(true);
    expect(server.count).toBe(4);
  });

  it('shares one in-flight fetch between concurrent unknown-kid callers (single-flight)', async () => {
    const { store, server, clock, keys } = await setup({ cooldownSeconds: 1 });
    await store.start();
    server.hold();
    clock.advance(1000);
    const waiting = Array.from({ length: 50 }, () => keys().refetchForUnknownKey());
    await vi.waitFor(() => expect(server.count).toBe(2));
    server.release();
    await Promise.all(waiting);
    expect(server.count).toBe(2);
  });

  it('bumps the version only when the usable key set changes', async () => {
    const { store, server, scheduler, keys, lines } = await setup({}, undefined);
    await store.start();
    expect(keys().version).toBe(1);
    await fireTimer(server, scheduler);
    expect(keys().version).toBe(1);
    const k2 = await testKeyPair('RS256', 'k2');
    server.set({ keys: [k2.publicJwk] });
    await fireTimer(server, scheduler);
    expect(keys().version).toBe(2);
    expect(lines.filter((l) => l.event === 'jwks_updated').map((l) => l.kids)).toEqual([['k1'], ['k2']]);
  });

  it('takes the same keys in another order, or with their members in another order, as the set it holds', async () => {
    const { k1, store, server, scheduler, keys, lines } = await setup({}, undefined);
    const k2 = await testKeyPair('ES256', 'k2');
    server.set({ keys: [k1.publicJwk, k2.publicJwk] });
    await store.start();
    expect(keys().version).toBe(1);
    // An IdP that builds its JWKS from a map may list the keys, and their members, in another order each time: the
    // verified-token cache was emptied and "issuer keys changed" logged at every refresh.
    const reordered = (jwk: JWK) => Object.fromEntries(Object.entries(jwk).reverse()) as JWK;
    server.set({ keys: [reordered(k2.publicJwk), reordered(k1.publicJwk)] });
    await fireTimer(server, scheduler);
    expect(keys().version).toBe(1);
    expect(lines.filter((l) => l.event === 'jwks_updated')).toHaveLength(1);
  });

  it('keeps the last good keys when the IdP answers with something that is not a JWKS', async () => {
    const { store, server, scheduler, metrics, keys } = await setup();
    await store.start();
    const good = keys().keySet();
    for (const bad of [{ status: 200, body: 'not json' }, { status: 200, body: '{"nokeys":1}' }]) {
      server.set(bad as never);
      await fireTimer(server, scheduler);
      expect(keys().keySet()).toBe(good);
    }
    expect(store.isReady()).toBe(true);
    expect(await counterValue(metrics, 'jwksFetches', { issuer: 'http://idp.test', result: 'idp_bad_response' })).toBe(1);
    expect(await counterValue(metrics, 'jwksFetches', { issuer: 'http://idp.test', result: 'jwks_invalid' })).toBe(1);
  });

  it('withdraws the keys it holds when the IdP serves a JWKS with nothing usable in it, until usable keys come back', async () => {
    for (const unusable of [{ keys: [] }, { keys: [{ kty: 'oct', k: 'c2VjcmV0' }] }, { keys: [{ kty: 'RSA', kid: 'k1', use: 'enc', n: 'AQAB', e: 'AQAB' }] }]) {
      const { k1, store, server, scheduler, metrics, keys, lines } = await setup();
      await store.start();
      expect(keys().version).toBe(1);
      // The IdP withdrew k1 (a stolen key) and publishes nothing we can verify with: k1 must stop verifying now, not
      // after maxStaleSeconds; a SIGHUP's refetch must not bring it back either (the successor gets no snapshot).
      server.set(unusable);
      await fireTimer(server, scheduler);
      expect(() => keys().keySet()).toThrow(KeysUnavailableError);
      expect(() => keys().keySet()).toThrow(/not loaded \(JWKS has no key usable/);
      expect(store.isReady()).toBe(false);
      expect(keys().version).toBe(2);
      expect(store.snapshot().size).toBe(0);
      expect(lines.filter((l) => l.event === 'jwks_keys_withdrawn').map((l) => l.kids)).toEqual([['k1']]);
      expect(await counterValue(metrics, 'jwksFetches', { issuer: 'http://idp.test', result: 'jwks_no_usable_keys' })).toBe(1);
      // A second empty answer withdraws nothing more and logs no second withdrawal.
      await fireTimer(server, scheduler);
      expect(lines.filter((l) => l.event === 'jwks_keys_withdrawn')).toHaveLength(1);
      server.set({ keys: [k1.publicJwk] });
      await fireTimer(server, scheduler);
      expect(store.isReady()).toBe(true);
      expect(keys().version).toBe(3);
      while (cleanups.length) await cleanups.pop()!();
    }
  });

  it('retries on the backoff when an unknown-kid refetch fails or withdraws the keys, not at the next refresh', async () => {
    const { k1, store, server, clock, scheduler, keys } = await setup({ cooldownSeconds: 30, refreshIntervalSeconds: 300, retryMinSeconds: 1 });
    await store.start();
    expect(scheduler.pending()).toEqual([{ ms: 300_000 }]);
    // An empty set for a moment, met by a refetch a caller's unknown kid set off.
    server.set({ keys: [] });
    clock.advance(31_000);
    expect(await keys().refetchForUnknownKey()).toBe(false);
    expect(store.isReady()).toBe(false);
    expect(scheduler.pending()).toEqual([{ ms: 1000 }]);
    server.set({ keys: [k1.publicJwk] });
    await fireTimer(server, scheduler);
    expect(store.isReady()).toBe(true);
    expect(scheduler.pending()).toEqual([{ ms: 300_000 }]);
  });

  it('does not follow a redirect from the JWKS endpoint', async () => {
    // The redirect names a real place that serves a valid JWKS: a client that followed it would be ready. (A 302
    // with no Location, as this test once used, cannot be followed at all, so it proved nothing.)
    const jwk = (await testKeyPair()).publicJwk;
    const hits = { jwks: 0, elsewhere: 0 };
    const server = createHttpServer((req, res) => {
      if (req.url === '/jwks') {
        hits.jwks++;
        res.writeHead(302, { location: '/elsewhere' }).end();
      } else if (req.url === '/elsewhere') {
        hits.elsewhere++;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
      } else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const config = inboundConfig({ issuers: [{ issuer: 'http://idp.test', jwksUri: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks` }] });
    const store = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics: testMetrics(), clock: manualClock(), scheduler: manualScheduler() });
    cleanups.push(() => store.close());
    await store.start();
    expect(store.isReady()).toBe(false);
    expect(store.get('http://idp.test')!.lastError).toMatch(/HTTP 302/);
    expect(hits).toEqual({ jwks: 1, elsewhere: 0 });
  });

  it('close() clears the refresh timer and later fetches never start', async () => {
    const { store, scheduler, server } = await setup();
    await store.start();
    expect(scheduler.pending()).toHaveLength(1);
    await store.close();
    expect(scheduler.pending()).toHaveLength(0);
    await store.get('http://idp.test')!.refetchForUnknownKey();
    expect(server.count).toBe(1);
  });

  it('waitUntilReady resolves true once keys arrive and false after the timeout', async () => {
    const { store, server, scheduler } = await setup();
    server.set({ status: 503 });
    await store.start();
    expect(await store.waitUntilReady(20)).toBe(false);
    const ready = store.waitUntilReady(10_000);
    server.set({ keys: [(await testKeyPair()).publicJwk] });
    scheduler.runAll();
    expect(await ready).toBe(true);
  });

  it('start and waitUntilReady can be limited to some issuers: the others are not contacted', async () => {
    const k = await testKeyPair();
    const up = await startJwksServer({ keys: [k.publicJwk] });
    const down = await startJwksServer({ keys: [k.publicJwk] });
    cleanups.push(() => up.close(), () => down.close());
    down.set({ status: 503 });
    const config = inboundConfig({ issuers: [{ issuer: 'http://up.test', jwksUri: up.url }, { issuer: 'http://down.test', jwksUri: down.url }] });
    const store = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics: testMetrics(), clock: manualClock(), scheduler: manualScheduler() });
    cleanups.push(() => store.close());
    await store.start(['http://up.test']);
    expect([up.count, down.count]).toEqual([1, 0]);
    expect(await store.waitUntilReady(10_000, ['http://up.test'])).toBe(true);
    expect(store.isReady()).toBe(false);
    await store.start(['http://down.test']);
    expect(down.count).toBe(1);
    expect(await store.waitUntilReady(20, ['http://down.test'])).toBe(false);
  });

  it('trusts an IdP behind a private CA through caFile', async () => {
    const { cert, key } = selfSignedCert('idp');
    const jwk = (await testKeyPair()).publicJwk;
    const server = createHttpsServer({ cert: readFileSync(cert), key: readFileSync(key) }, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
    const make = (caFile?: string) => {
      const config = inboundConfig({ issuers: [{ issuer: 'http://idp.test', jwksUri: url, ...(caFile ? { caFile } : {}) }] });
      const store = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics: testMetrics(), clock: manualClock(), scheduler: manualScheduler() });
      cleanups.push(() => store.close());
      return store;
    };
    const untrusted = make();
    await untrusted.start();
    expect(untrusted.isReady()).toBe(false);
    const trusted = make(cert);
    await trusted.start();
    expect(trusted.isReady()).toBe(true);
  });
});

describe('key store discovery never downgrades to cleartext', () => {
  it('an https issuer whose discovery names an http jwks_uri gets no keys and the http URL no request; http issuer to https jwks_uri is fine', async () => {
    const tls = selfSignedCert('discovery-idp');
    const jwk = (await testKeyPair()).publicJwk;
    const origins = { plain: '', secure: '' };
    const hits = { plainJwks: 0, secureJwks: 0 };
    // Each server publishes discovery whose jwks_uri points at the other one's scheme.
    const serve = (self: 'plain' | 'secure', other: 'plain' | 'secure') => (req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/.well-known/openid-configuration') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: origins[self], jwks_uri: `${origins[other]}/jwks` }));
      } else if (req.url === '/jwks') {
        hits[self === 'plain' ? 'plainJwks' : 'secureJwks']++;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
      } else res.writeHead(404).end();
    };
    const plain = createHttpServer(serve('plain', 'secure'));
    const secure = createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, serve('secure', 'plain'));
    for (const [name, server] of [['plain', plain], ['secure', secure]] as const) {
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
      origins[name] = `${name === 'plain' ? 'http' : 'https'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
    }
    const make = (issuer: string) => {
      const config = inboundConfig({ issuers: [{ issuer, caFile: tls.cert }] });
      const metrics = testMetrics();
      const store = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics, clock: manualClock(), scheduler: manualScheduler() });
      cleanups.push(() => store.close());
      return { store, metrics };
    };

    const downgraded = make(origins.secure);
    await downgraded.store.start();
    expect(downgraded.store.isReady()).toBe(false);
    expect(downgraded.store.get(origins.secure)!.lastError).toBe(
      `${origins.secure}/.well-known/openid-configuration: jwks_uri ${origins.plain}/jwks is not https although the issuer is; keys are never fetched over cleartext`,
    );
    expect(await counterValue(downgraded.metrics, 'jwksFetches', { issuer: origins.secure, result: 'discovery_failed' })).toBe(1);
    expect(hits.plainJwks).toBe(0);

    const upgraded = make(origins.plain);
    await upgraded.store.start();
    expect(upgraded.store.isReady()).toBe(true);
    expect(hits.secureJwks).toBe(1);
  });
});

describe('key store: what the IdP says, and what the sidecar cut itself', () => {
  /** An issuer on 127.0.0.1:0 whose discovery document's `issuer` is `claimed(origin)`, or that never answers with `hang`. */
  async function issuerServer(opts: { claimed?: (origin: string) => string; hang?: boolean }) {
    let requests = 0;
    const server = createHttpServer((req, res) => {
      requests++;
      if (opts.hang) return;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: opts.claimed!(origin), jwks_uri: `${origin}/jwks` }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return { origin, requests: () => requests };
  }
  const storeFor = (issuer: string) => {
    const config = inboundConfig({ issuers: [{ issuer }] });
    const metrics = testMetrics();
    const { logger, lines } = captureLogger();
    const store = createKeyStore(config.issuers, config.jwks, { logger, metrics, clock: manualClock(), scheduler: manualScheduler() });
    cleanups.push(() => store.close());
    return { store, metrics, lines };
  };

  it('reads the discovery document again at each refresh, so a moved jwks_uri is followed while the old one still answers; an unknown kid uses the last one', async () => {
    const k1 = await testKeyPair('ES256', 'k1');
    const k2 = await testKeyPair('ES256', 'k2');
    let jwksPath = '/old';
    let discoveryDown = false;
    const hits: string[] = [];
    const server = createHttpServer((req, res) => {
      hits.push(req.url!);
      if (discoveryDown && req.url === '/.well-known/openid-configuration') return void res.writeHead(503).end();
      const body =
        req.url === '/.well-known/openid-configuration' ? { issuer: origin, jwks_uri: `${origin}${jwksPath}` }
        : req.url === '/old' ? { keys: [k1.publicJwk] }
        : { keys: [k1.publicJwk, k2.publicJwk] };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const config = inboundConfig({ issuers: [{ issuer: origin }], jwks: { cooldownSeconds: 30 } });
    const clock = manualClock();
    const scheduler = manualScheduler();
    const { logger, lines } = captureLogger();
    const store = createKeyStore(config.issuers, config.jwks, { logger, metrics: testMetrics(), clock, scheduler });
    cleanups.push(() => store.close());
    await store.start();
    jwksPath = '/new';
    clock.advance(31_000);
    await store.get(origin)!.refetchForUnknownKey();
    expect(hits).toEqual(['/.well-known/openid-configuration', '/old', '/old']);
    expect(scheduler.runAll()).toBe(1);
    await vi.waitFor(() => expect(hits).toHaveLength(5));
    expect(hits.slice(3)).toEqual(['/.well-known/openid-configuration', '/new']);
    await vi.waitFor(() => expect(store.get(origin)!.version).toBe(2));
    // A discovery document that cannot be read says nothing against the jwks_uri it gave: the refresh still fetches it.
    discoveryDown = true;
    await vi.waitFor(() => expect(scheduler.pending()).toHaveLength(1));
    expect(scheduler.runAll()).toBe(1);
    await vi.waitFor(() => expect(hits).toHaveLength(7));
    expect(hits.slice(5)).toEqual(['/.well-known/openid-configuration', '/new']);
    await vi.waitFor(() => expect(scheduler.pending()).toEqual([{ ms: 300_000 }]));
    expect(store.get(origin)!.lastError).toBeUndefined();
    // Said once, at warn: a document that stays broken is an outage waiting for the next restart.
    expect(scheduler.runAll()).toBe(1);
    await vi.waitFor(() => expect(hits).toHaveLength(9));
    expect(lines.filter((l) => l.event === 'discovery_failed')).toEqual([expect.objectContaining({ level: 'warn', jwksUri: `${origin}/new` })]);
    // A reload's store reads discovery again, and falls back on the jwks_uri taken over with the keys.
    const next = createKeyStore(config.issuers, config.jwks, { logger: captureLogger().logger, metrics: testMetrics(), clock, scheduler: manualScheduler(), handover: store.snapshot() });
    cleanups.push(() => next.close());
    await next.start();
    expect(hits.slice(9)).toEqual(['/.well-known/openid-configuration', '/new']);
    expect(next.get(origin)!.lastError).toBeUndefined();
  });

  it("quotes a discovery document's issuer of any length capped, in the log line, /readyz's reason and the 503 that name the failure", async () => {
    const idp = await issuerServer({ claimed: () => 'x'.repeat(500_000) });
    const { store, lines } = storeFor(idp.origin);
    await store.start();
    const lastError = store.get(idp.origin)!.lastError!;
    expect(lastError).toMatch(/metadata names issuer "x{256}…", expected exactly/);
    expect(lastError.length).toBeLessThanOrEqual(513);
    const failed = lines.filter((l) => l.event === 'jwks_fetch_failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]!.detail).toBe(lastError);
    expect(() => store.get(idp.origin)!.keySet()).toThrow(lastError);
    expect(JSON.stringify(lines).length).toBeLessThan(5000);
  });

  it('neither logs nor counts as an IdP failure a fetch that close() cut (shutdown, or a reload retiring the store)', async () => {
    const idp = await issuerServer({ hang: true });
    const { store, metrics, lines } = storeFor(idp.origin);
    const starting = store.start();
    await vi.waitFor(() => expect(idp.requests()).toBe(1));
    await store.close();
    await starting;
    expect(lines.filter((l) => l.event === 'jwks_fetch_failed')).toEqual([]);
    const { values } = await (metrics.jwksFetches as unknown as { get(): Promise<{ values: { value: number }[] }> }).get();
    expect(values.reduce((n, v) => n + v.value, 0)).toBe(0);
  });
});

describe('filterJwks', () => {
  it('keeps only asymmetric signing keys usable with the allowed algorithms and without private parts', async () => {
    const rsa = await testKeyPair('RS256', 'rsa');
    const ec = await testKeyPair('ES256', 'ec');
    const ed = await testKeyPair('EdDSA', 'ed');
    const es384 = await testKeyPair('ES384', 'es384');
    const keys = [
      rsa.publicJwk,
      ec.publicJwk,
      ed.publicJwk,
      es384.publicJwk, // alg not allowed
      { ...ec.publicJwk, kid: 'enc', use: 'enc' },
      { ...ec.publicJwk, kid: 'ops', key_ops: ['encrypt'] },
      { kty: 'oct', kid: 'hmac', k: 'c2VjcmV0' },
      { ...(await testKeyPair('RS256', 'other')).privateJwk, kid: 'private' },
      { ...ec.publicJwk, kid: 'ps', alg: 'PS256' }, // alg allowed but EC cannot do PS256
      { ...ec.publicJwk, kid: 123 },
      'garbage',
      null,
    ];
    const kept = await filterJwks({ keys }, ['RS256', 'ES256', 'EdDSA']);
    expect(kept.keys.map((k) => k.kid)).toEqual(['rsa', 'ec', 'ed']);
    expect(kept.dropped).toEqual([{ kid: 'private', reason: 'the JWKS publishes its private key: anyone who read it can sign with it', compromised: true }]);
    expect((await filterJwks({ keys }, ['ES256'])).keys.map((k) => k.kid)).toEqual(['ec']);
    await expect(filterJwks({ keys }, ['PS512'])).rejects.toThrow(/no key usable/);
  });

  it('imports each signing key once and leaves out, with the reason, one that is malformed or an RSA key under 2048 bits', async () => {
    const rsa = await testKeyPair('RS256', 'rsa');
    const ec = await testKeyPair('ES256', 'ec');
    const bad = await unusableJwks();
    const { keys, dropped } = await filterJwks({ keys: [...bad, rsa.publicJwk, ec.publicJwk] }, ['RS256', 'PS256', 'ES256']);
    expect(keys.map((k) => k.kid)).toEqual(['rsa', 'ec']);
    expect(dropped).toEqual([
      { kid: 'rsa-1024', reason: 'RSA modulus of 1024 bits, under the 2048 that RS256 requires' },
      { kid: 'rsa-broken', reason: 'RSA modulus of 0 bits, under the 2048 that RS256 requires' },
      { kid: 'ec-off-curve', reason: expect.stringMatching(/^cannot be imported for ES256: /) },
    ]);
    // Nothing usable left: a failed fetch (the last good keys stay), and the error says which keys and why.
    await expect(filterJwks({ keys: bad.map(({ kid: _kid, ...k }) => k) }, ['RS256', 'ES256'])).rejects.toThrow(
      /^JWKS has no key usable with the allowed algorithms \(a key without kid: RSA modulus of 1024 bits, under the 2048 that RS256 requires; a key without kid: RSA modulus of 0 bits, .*; a key without kid: cannot be imported for ES256: .*\)$/,
    );
  });

  it('leaves out a published private key and its public half, whatever their use or alg, and says it at error level', async () => {
    const leaked = await testKeyPair('ES256', 'leaked');
    const good = await testKeyPair('ES256', 'good');
    const { keys, dropped } = await filterJwks({ keys: [{ ...leaked.publicJwk, kid: 'leaked-pub' }, good.publicJwk, { ...leaked.privateJwk, use: 'enc' }] }, ['ES256']);
    expect(keys.map((k) => k.kid)).toEqual(['good']);
    expect(dropped).toEqual([
      { kid: 'leaked', reason: 'the JWKS publishes its private key: anyone who read it can sign with it', compromised: true },
      { kid: 'leaked-pub', reason: "the JWKS also publishes this key's private key: anyone who read it can sign with it", compromised: true },
    ]);
    // Only the private key: nothing usable, and the error says why rather than "no key usable".
    await expect(filterJwks({ keys: [leaked.privateJwk] }, ['ES256'])).rejects.toThrow(/\(kid "leaked": the JWKS publishes its private key/);
    // A member set to null publishes no private key: not called compromised, and left out with the reason jose gives.
    expect((await filterJwks({ keys: [{ ...leaked.publicJwk, d: null }, good.publicJwk] }, ['ES256'])).dropped).toEqual([
      { kid: 'leaked', reason: expect.stringMatching(/^cannot be imported for ES256: /) },
    ]);
    const { store, lines } = await setup({}, (k1) => [k1, leaked.publicJwk, leaked.privateJwk]);
    await store.start();
    expect(lines.find((l) => l.event === 'jwks_keys_dropped')).toMatchObject({ level: 'error', dropped: [{ kid: 'leaked', compromised: true }, { kid: 'leaked', compromised: true }] });
    expect(lines.find((l) => l.event === 'jwks_updated')!.kids).toEqual(['k1']);
    expect(JSON.stringify(lines)).not.toContain(String(leaked.privateJwk.d));
    // Published as the only key, it is said as loudly (once), beside the keys withdrawn for want of a usable one.
    const alone = await setup({}, () => [leaked.privateJwk]);
    await alone.store.start();
    await fireTimer(alone.server, alone.scheduler);
    expect(alone.lines.filter((l) => l.event === 'jwks_keys_dropped')).toEqual([expect.objectContaining({ level: 'error', dropped: [expect.objectContaining({ kid: 'leaked', compromised: true })] })]);
  });

  it('leaves out public keys anyone can sign for: an RSA exponent of 1 or an even one, an Ed25519 point of small order', async () => {
    const rsa = await testKeyPair('RS256', 'rsa');
    const ed = await testKeyPair('EdDSA', 'ed');
    const point = (hex: string) => Buffer.from(hex, 'hex').toString('base64url');
    const ff = 'ff'.repeat(30);
    const weak = [
      { ...rsa.publicJwk, kid: 'e-1', e: 'AQ' },
      { ...rsa.publicJwk, kid: 'e-2', e: 'Ag' },
      { ...rsa.publicJwk, kid: 'e-65536', e: 'AQAA' },
      { ...ed.publicJwk, kid: 'zero', x: point('00'.repeat(32)) },
      { ...ed.publicJwk, kid: 'identity', x: point(`01${'00'.repeat(31)}`) },
      { ...ed.publicJwk, kid: 'order-2', x: point(`ec${ff}7f`) },
      { ...ed.publicJwk, kid: 'order-8-signed', x: point('26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85') },
      { ...ed.publicJwk, kid: 'p-plus-1', x: point(`ee${ff}ff`) },
    ];
    const { keys, dropped } = await filterJwks({ keys: [...weak, rsa.publicJwk, ed.publicJwk, { ...rsa.publicJwk, kid: 'e-3', e: 'Aw' }] }, ['RS256', 'EdDSA']);
    expect(keys.map((k) => k.kid)).toEqual(['rsa', 'ed', 'e-3']);
    expect(dropped.map((d) => [d.kid, d.reason.split(':')[0]])).toEqual([
      ['e-1', 'RSA public exponent is not an odd number of 3 or more'],
      ['e-2', 'RSA public exponent is not an odd number of 3 or more'],
      ['e-65536', 'RSA public exponent is not an odd number of 3 or more'],
      ...['zero', 'identity', 'order-2', 'order-8-signed', 'p-plus-1'].map((kid) => [kid, 'Ed25519 public key is a point of small order, with no private key behind it']),
    ]);
  });

  it('logs the unusable keys it left out by kid and reason, without key material, once until the list changes', async () => {
    const bad = await unusableJwks();
    const { store, server, scheduler, keys, lines, k1 } = await setup({}, (k1) => [bad[0], k1]);
    await store.start();
    expect(keys().isUsable()).toBe(true);
    const dropped = () => lines.filter((l) => l.event === 'jwks_keys_dropped');
    expect(dropped()).toHaveLength(1);
    expect(dropped()[0]).toMatchObject({ level: 'warn', issuer: 'http://idp.test', dropped: [{ kid: 'rsa-1024', reason: 'RSA modulus of 1024 bits, under the 2048 that RS256 requires' }] });
    expect(lines.find((l) => l.event === 'jwks_updated')!.kids).toEqual(['k1']);
    await fireTimer(server, scheduler);
    expect(dropped()).toHaveLength(1);
    server.set({ keys: [bad[2], k1.publicJwk] });
    await fireTimer(server, scheduler);
    expect(dropped().map((l) => l.dropped[0].kid)).toEqual(['rsa-1024', 'ec-off-curve']);
    expect(JSON.stringify(lines)).not.toContain(bad[0]!.n);
    expect(JSON.stringify(lines)).not.toContain(bad[2]!.x);
  });

  it('looks at no more than the first 100 keys of an oversized JWKS, and says so once', async () => {
    const ec = await testKeyPair('ES256', 'ec');
    const many = Array.from({ length: 150 }, (_, i) => ({ ...ec.publicJwk, kid: `k${i}` }));
    const filtered = await filterJwks({ keys: many }, ['ES256']);
    expect(filtered.keys.map((k) => k.kid)).toEqual(many.slice(0, 100).map((k) => k.kid));
    expect(filtered.ignored).toBe(50);

    const { store, server, scheduler, lines } = await setup({}, () => many);
    await store.start();
    expect(lines.find((l) => l.event === 'jwks_updated')!.keyCount).toBe(100);
    const ignored = () => lines.filter((l) => l.event === 'jwks_keys_ignored');
    expect(ignored()).toEqual([expect.objectContaining({ level: 'warn', ignored: 50, limit: 100 })]);
    await fireTimer(server, scheduler);
    expect(ignored()).toHaveLength(1);
  });

  it('caps the kids it logs and quotes: the IdP chooses their length', async () => {
    const ec = await testKeyPair('ES256', 'ec');
    const bad = await unusableJwks();
    const longKid = 'x'.repeat(20_000);
    const { store, lines } = await setup({}, () => [{ ...bad[0], kid: `${longKid}-bad` }, { ...ec.publicJwk, kid: longKid }]);
    await store.start();
    const updated = lines.find((l) => l.event === 'jwks_updated')!;
    expect(updated.kids).toEqual([`${'x'.repeat(128)}…`]);
    expect(lines.find((l) => l.event === 'jwks_keys_dropped')!.dropped).toEqual([{ kid: `${'x'.repeat(128)}…`, reason: expect.any(String) }]);
    for (const l of lines) expect(JSON.stringify(l).length, String(l.event)).toBeLessThan(2000);

    // Nothing usable: the error names five unusable keys and counts the rest, each kid capped.
    const tenBad = Array.from({ length: 10 }, (_, i) => ({ ...bad[0], kid: `${longKid}${i}` }));
    const err = await filterJwks({ keys: tenBad }, ['RS256']).then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(/; 5 more unusable\)$/);
    expect(err!.message.length).toBeLessThan(1500);
  });
});
