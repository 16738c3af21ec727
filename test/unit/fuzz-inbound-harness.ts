import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createMetrics } from '../../src/admin/metrics.js';
import type { Decision } from '../../src/inbound/authorizer.js';
import { createInboundParts, type InboundParts } from '../../src/inbound/handler.js';
import { createLogger } from '../../src/log.js';
import { signRaw, tallyFuzzCases } from '../support/attacks.js';
import { inboundConfig, manualClock, manualScheduler, startJwksServer, type JwksServer } from './inbound-support.js';

/**
 * The harness of the inbound fuzz suites, fuzz-inbound-requests and
 * fuzz-inbound-tokens (two files, so that the hard suite's two workers share
 * their work). They fuzz the whole inbound decision (path normalisation, rule
 * match, extraction, verification, policy) through the functions the sidecar
 * itself runs, with real keys behind a JWKS server on loopback and a clock
 * that stands still. What every case must keep, checked by `decide`: never a
 * throw or an internal error, no token text in the log; and by `check`: no
 * unhandled rejection.
 *
 * The checks made on every case use node:assert, with their messages built only
 * when a check fails: at a million cases, vitest's `expect` and the messages
 * built ahead cost a fifth of the run. The checks are the same; a failure still
 * names the case.
 */

// Plain http like the local JWKS server both use (an https issuer needs an https jwksUri).
export const A = 'http://idp-a.test';
export const B = 'http://tenant-b.test/v2.0';
export const SKEW = 30;
export const MAX_LIFETIME = 3600;

export interface Key {
  alg: 'RS256' | 'ES256' | 'EdDSA';
  kid: string;
  private: KeyObject;
}

let jwks: JwksServer;
/** JWKS requests after start-up: one per issuer. */
let startupFetches: number;
let parts: InboundParts;
/** The trusted keys (in the JWKS) and an attacker's with the same algorithms and kids; set once the suite has started. */
export let keys: Key[];
export let attackerKeys: Key[];
const clock = manualClock(Date.parse('2031-05-01T12:00:00Z'));
export const nowSeconds = () => clock.now() / 1000;

/** Log text is searched for the current case's secrets as each line is written. */
let needles: string[] = [];
const leaks: string[] = [];
let unhandled = 0;
const onUnhandled = () => void unhandled++;

function newKey(alg: Key['alg'], kid: string): Key {
  const { privateKey } =
    alg === 'RS256' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
  return { alg, kid, private: privateKey };
}

const publicJwk = (k: Key) => ({ ...createPublicKey(k.private).export({ format: 'jwk' }), kid: k.kid, alg: k.alg, use: 'sig' });

/** Starts the JWKS server and the inbound parts before the file's tests, and stops them after. */
export function useInboundFuzz(): void {
  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    keys = [newKey('RS256', 'rsa-1'), newKey('ES256', 'ec-1'), newKey('EdDSA', 'ed-1')];
    attackerKeys = [newKey('RS256', 'rsa-1'), newKey('ES256', 'ec-1'), newKey('EdDSA', 'ed-1')];
    jwks = await startJwksServer({ keys: keys.map(publicJwk) });
    const config = inboundConfig({
      issuers: [
        { issuer: A, jwksUri: jwks.url },
        // Tenant B shares A's keys (multi-tenant IdP); only iss and its audience tell them apart.
        { issuer: B, jwksUri: jwks.url, audience: 'orders-b' },
      ],
      typ: 'at+jwt',
      maxTokenLifetimeSeconds: MAX_LIFETIME,
      cache: { maxEntries: 500 },
      rules: [
        { match: { path: '/public/**' }, public: true },
        { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
        { match: { path: '/api/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
      ],
    });
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        const line = chunk.toString();
        for (const n of needles) if (n.length >= 16 && line.includes(n)) leaks.push(n);
        cb();
      },
    });
    parts = createInboundParts(config, {
      logger: createLogger({ level: 'info', destination: sink as never }),
      metrics: createMetrics({ processMetrics: false }),
      clock,
      service: 'orders',
      scheduler: manualScheduler(),
    });
    await parts.keyStore.start();
    expect(parts.keyStore.isReady()).toBe(true);
    startupFetches = jwks.count;
  });

  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    // Checked once every test of the file has run: its fuzzing sends bursts of unknown kids, all within the cooldown
    // on a clock that stands still, so not one of them may cost a JWKS refetch. (A test of its own would run first.)
    try {
      expect(startupFetches, 'JWKS fetches at startup (discovery-less: one per issuer)').toBe(2);
      expect(jwks.count, 'JWKS fetches after the fuzzing: unknown kids within the cooldown refetched').toBe(startupFetches);
    } finally {
      await parts?.keyStore.close();
      await jwks?.close();
    }
  });
}

/** One decision; checks the invariants every input must keep, whatever it is. */
export async function decide(method: string, url: string, rawHeaders: string[], secrets: string[] = []): Promise<Decision> {
  needles = secrets.flatMap((t) => [t, t.split('.')[2] ?? '', t.split('.')[1] ?? '']);
  const decision = await parts.authorizer.authorize({ method, url, rawHeaders, peer: '127.0.0.1' });
  needles = [];
  if (!decision.allowed) {
    if (decision.error.code === 'internal_error') assert.fail(`internal error for ${JSON.stringify({ method, url })}`);
    if (![400, 401, 403, 503].includes(decision.error.status)) assert.fail(`status ${decision.error.status} for ${JSON.stringify({ method, url })}`);
  }
  if (leaks.length > 0) assert.fail(`token text written to the log: ${leaks.join(', ')}`);
  return decision;
}

export const bearer = (token: string) => ['Host', 'orders', 'Authorization', `Bearer ${token}`];
export const claimsOf = (token: string): Record<string, unknown> => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));

/** What the rules allow for a verified subject on a path. */
export function policyAllows(path: string, sub: unknown): boolean {
  if (path.startsWith('/admin')) return sub === 'deployer';
  if (path.startsWith('/api')) return sub === 'orders' || sub === 'deployer';
  return false;
}

function realToken(key: Key, claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  return signRaw({ alg: key.alg, typ: 'at+jwt', kid: key.kid, ...header }, claims, key.private);
}

/** Valid tokens of both tenants, every key, both subjects: the seeds for mutation. */
export function seedTokens(): string[] {
  const now = Math.floor(nowSeconds());
  const out: string[] = [];
  for (const key of keys) {
    for (const sub of ['orders', 'deployer']) {
      out.push(realToken(key, { iss: A, sub, aud: 'orders', iat: now, exp: now + 600, jti: randomUUID() }));
      out.push(realToken(key, { iss: B, sub, aud: ['x', 'orders-b'], iat: now, exp: now + 600, scope: 'read' }));
    }
  }
  return out;
}

/** `examples` are cases tried on every run, whatever the seed. */
export async function check<T>(name: string, runs: number, property: fc.IAsyncProperty<T>, examples: T[] = []): Promise<void> {
  const before = unhandled;
  await fc.assert(property, { numRuns: runs, examples });
  expect(unhandled - before, 'unhandled rejections').toBe(0);
  await tallyFuzzCases(name, runs);
}
