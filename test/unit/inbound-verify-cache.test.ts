import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { createIdentityBuilder, headerValue, identityBytes, identityHeaderNames } from '../../src/inbound/identity.js';
import { createVerifyCache } from '../../src/inbound/verify-cache.js';
import { CLIENT_INFO_HEADERS, isDropped } from '../../src/proxy/headers.js';
import { counterValue, manualClock, testMetrics } from './inbound-support.js';

describe('verify cache', () => {
  it('returns a live entry and counts hits and misses', async () => {
    const clock = manualClock(1_000_000);
    const metrics = testMetrics();
    const cache = createVerifyCache<string>({ maxEntries: 10, clock, metrics });
    expect(cache.get('t1')).toBeUndefined();
    cache.set('t1', { value: 'id-1', expiresAt: 1_060_000, keyVersion: 1 });
    expect(cache.get('t1')?.value).toBe('id-1');
    expect(cache.get('t2')).toBeUndefined();
    expect(await counterValue(metrics, 'verifyCacheLookups', { result: 'hit' })).toBe(1);
    expect(await counterValue(metrics, 'verifyCacheLookups', { result: 'miss' })).toBe(2);
  });

  it('never returns an entry at or after its expiry, and drops it', () => {
    const clock = manualClock(0);
    const cache = createVerifyCache<string>({ maxEntries: 10, clock, metrics: testMetrics() });
    cache.set('t', { value: 'x', expiresAt: 5000, keyVersion: 1 });
    clock.set(4999);
    expect(cache.get('t')).toBeDefined();
    clock.set(5000);
    expect(cache.get('t')).toBeUndefined();
    expect(cache.size).toBe(0);
    // already-dead entries are not stored at all
    cache.set('late', { value: 'x', expiresAt: 5000, keyVersion: 1 });
    expect(cache.size).toBe(0);
  });

  it('lets the caller veto an entry (key set changed) and drops it', () => {
    const cache = createVerifyCache<string>({ maxEntries: 10, clock: manualClock(0), metrics: testMetrics() });
    cache.set('t', { value: 'x', expiresAt: 10_000, keyVersion: 1 });
    expect(cache.get('t', (e) => e.keyVersion === 2)).toBeUndefined();
    expect(cache.get('t')).toBeUndefined();
  });

  it('is bounded: the least recently used entry goes first', () => {
    const cache = createVerifyCache<string>({ maxEntries: 3, clock: manualClock(0), metrics: testMetrics() });
    for (const t of ['a', 'b', 'c']) cache.set(t, { value: t, expiresAt: 10_000, keyVersion: 1 });
    cache.get('a');
    cache.set('d', { value: 'd', expiresAt: 10_000, keyVersion: 1 });
    expect(cache.size).toBe(3);
    expect(cache.get('b')).toBeUndefined();
    expect(cache.get('a')?.value).toBe('a');
    expect(cache.get('d')?.value).toBe('d');
  });

  it('is bounded in bytes too: large identities are fewer, the least recently used going first', () => {
    const cache = createVerifyCache<string>({ maxEntries: 100, maxBytes: 10_000, sizeOf: (v) => v.length, clock: manualClock(0), metrics: testMetrics() });
    for (const t of ['a', 'b', 'c', 'd']) cache.set(t, { value: t.repeat(3000), expiresAt: 10_000, keyVersion: 1 });
    expect(cache.size).toBe(3);
    expect(cache.get('a')).toBeUndefined();
    for (const t of ['b', 'c', 'd']) expect(cache.get(t)?.value, t).toHaveLength(3000);
    // Small ones are bounded by maxEntries as before.
    const small = createVerifyCache<string>({ maxEntries: 5, maxBytes: 10_000, sizeOf: (v) => v.length, clock: manualClock(0), metrics: testMetrics() });
    for (let i = 0; i < 20; i++) small.set(`t${i}`, { value: 'x', expiresAt: 10_000, keyVersion: 1 });
    expect(small.size).toBe(5);
    // A size that is no positive integer is taken as 1, never thrown on the request's path.
    const sizes: Record<string, number> = { nan: Number.NaN, half: 0.5, endless: Number.POSITIVE_INFINITY };
    const odd = createVerifyCache<string>({ maxEntries: 5, maxBytes: 100, sizeOf: (v) => sizes[v]!, clock: manualClock(0), metrics: testMetrics() });
    for (const t of ['nan', 'half', 'endless']) odd.set(t, { value: t, expiresAt: 10_000, keyVersion: 1 });
    // An endless size is too big to keep; the others weigh 1.
    expect(odd.size).toBe(2);
    expect(odd.get('endless')).toBeUndefined();
  });

  it("weighs an identity by its headers and claims, so 100 times the claims weigh dozens of times as much", () => {
    const build = createIdentityBuilder(parseConfig({ service: 't', inbound: { target: 'http://127.0.0.1:9', audience: 'a', issuers: [{ issuer: 'https://i' }] } }).inbound!.forward);
    const groups = (n: number) => Array.from({ length: n }, (_, i) => `group-${i}`);
    const small = identityBytes(build({ sub: 'orders', groups: groups(10) }, 'https://i'));
    const large = identityBytes(build({ sub: 'orders', groups: groups(1000) }, 'https://i'));
    expect(small).toBeGreaterThan(256);
    expect(large / small).toBeGreaterThan(25);
    expect(large).toBeGreaterThan(2 * Buffer.byteLength(JSON.stringify({ sub: 'orders', groups: groups(1000) })));
  });

  it('maxEntries 0 disables caching', () => {
    const cache = createVerifyCache<string>({ maxEntries: 0, clock: manualClock(0), metrics: testMetrics() });
    cache.set('t', { value: 'x', expiresAt: 10_000, keyVersion: 1 });
    expect(cache.get('t')).toBeUndefined();
  });
});

describe('identity headers', () => {
  const forward = (f: Record<string, unknown> = {}) =>
    parseConfig({ service: 't', inbound: { target: 'http://127.0.0.1:9', audience: 'a', issuers: [{ issuer: 'https://i' }], forward: f } }).inbound!.forward;

  it('sets sub, iss, base64url JSON of all claims and the configured claim headers', () => {
    const build = createIdentityBuilder(forward({ claimHeaders: { 'X-Peer-Env': 'environment', 'x-peer-roles': 'roles', 'x-peer-none': 'absent', 'x-peer-proto': '__proto__', 'x-peer-ctor': 'constructor' } }));
    const claims = { sub: 'orders', iss: 'https://i', environment: 'prod', roles: ['a', 'b'], n: 1 };
    const id = build(claims, 'https://i');
    const h = new Map<string, string>();
    for (let i = 0; i < id.headers.length; i += 2) h.set(id.headers[i]!, id.headers[i + 1]!);
    expect(h.get('x-peer-sub')).toBe('orders');
    expect(h.get('x-peer-iss')).toBe('https://i');
    expect(JSON.parse(Buffer.from(h.get('x-peer-claims')!, 'base64url').toString())).toEqual(claims);
    expect(h.get('x-peer-env')).toBe('prod');
    expect(h.get('x-peer-roles')).toBe('["a","b"]');
    expect(h.has('x-peer-none')).toBe(false);
    // Names every object inherits are claims like any other: absent here, so no header.
    expect(h.has('x-peer-proto')).toBe(false);
    expect(h.has('x-peer-ctor')).toBe(false);
  });

  it('drops every identity header name (and the token unless keepToken) from incoming requests', () => {
    expect([...identityHeaderNames(forward({ claimHeaders: { 'x-peer-env': 'environment' } }), 'authorization', 'append')].sort()).toEqual(
      ['authorization', 'x-peer-claims', 'x-peer-env', 'x-peer-iss', 'x-peer-sub'],
    );
    expect(identityHeaderNames(forward({ keepToken: true }), 'authorization', 'append').has('authorization')).toBe(false);
    // A kept token header is listed in its `_` spelling: it passes, an X_Service_Token beside it does not (see isDropped).
    const kept = identityHeaderNames(forward({ keepToken: true }), 'x-service-token', 'append');
    expect(kept.has('x-service-token')).toBe(false);
    expect(kept.has('x_service_token')).toBe(true);
    // A token header written with `_` is dropped in its `-` spelling too (the proxy compares `_` as `-`).
    expect(identityHeaderNames(forward(), 'x_workload_token', 'append')).toEqual(new Set(['x-peer-sub', 'x-peer-iss', 'x-peer-claims', 'x_workload_token', 'x-workload-token']));
  });

  it("with forwardedHeaders: replace also drops the caller's client-info headers, and nothing else", () => {
    const appended = identityHeaderNames(forward(), 'authorization', 'append');
    const replaced = identityHeaderNames(forward(), 'authorization', 'replace');
    expect([...replaced].filter((n) => !appended.has(n)).sort()).toEqual([...CLIENT_INFO_HEADERS].sort());
    for (const name of ['x-forwarded-for', 'forwarded', 'x-real-ip', 'client-ip', 'x-forwarded-client-cert', 'x-original-url']) expect(replaced.has(name), name).toBe(true);
    // Through the proxy's comparison, every spelling an app reads as the same variable.
    expect(isDropped('x_real_ip', replaced)).toBe(true);
    expect(isDropped('x.forwarded.port', replaced)).toBe(true);
    expect(isDropped('x_real_ip', appended)).toBe(false);
    expect(isDropped('traceparent', replaced)).toBe(false);
  });

  it('percent-encodes claim values that are not plain printable ASCII, so CR/LF can never split a header', () => {
    expect(headerValue('orders')).toBe('orders');
    expect(headerValue('repo:acme/x:ref:refs/heads/main')).toBe('repo:acme/x:ref:refs/heads/main');
    expect(headerValue('a b')).toBe('a b');
    expect(headerValue('evil\r\nx-peer-sub: admin')).toBe('evil%0D%0Ax-peer-sub:%20admin');
    expect(headerValue('caf\u00e9')).toBe('caf%C3%A9');
    expect(headerValue('100%')).toBe('100%25');
    expect(headerValue(' padded ')).toBe('%20padded%20');
    for (const v of ['evil\r\nx: y', 'caf\u00e9', '100%', ' padded ', '\u0000', 'ok']) expect(decodeURIComponent(headerValue(v))).toBe(v);
  });
});
