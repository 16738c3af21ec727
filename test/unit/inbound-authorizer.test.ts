import { afterEach, describe, expect, it } from 'vitest';
import { createInboundParts } from '../../src/inbound/handler.js';
import type { Decision, InboundRequest } from '../../src/inbound/authorizer.js';
import { signToken, testKeyPair } from '../support/tokens.js';
import { captureLogger, counterValue, inboundConfig, manualClock, manualScheduler, startJwksServer, testMetrics } from './inbound-support.js';

const ISS = 'http://idp.test';
const cleanups: Array<() => Promise<unknown> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const RULES = [
  { match: { path: '/health' }, public: true },
  { match: { path: '/api/**' }, allow: [{ sub: 'orders' }] },
];

async function setup(rules: unknown[] = RULES) {
  const key = await testKeyPair('ES256', 'ec-1');
  const server = await startJwksServer({ keys: [key.publicJwk] });
  cleanups.push(() => server.close());
  const config = inboundConfig({
    issuers: [{ issuer: ISS, jwksUri: server.url }],
    rules,
  });
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'));
  const metrics = testMetrics();
  const log = captureLogger();
  const parts = createInboundParts(config, { logger: log.logger, metrics, clock, service: 'payments', scheduler: manualScheduler() });
  cleanups.push(() => parts.keyStore.close());
  await parts.keyStore.start();
  const now = Math.floor(clock.now() / 1000);
  const mint = (sub: string) =>
    signToken({ iss: ISS, sub, aud: config.audience, iat: now, exp: now + 300 }, { key: key.privateKey, alg: key.alg, kid: key.kid });
  const request = (token: string | undefined, url = '/api/orders'): InboundRequest => ({
    method: 'GET',
    url,
    rawHeaders: token ? ['Authorization', `Bearer ${token}`] : [],
    peer: '127.0.0.1',
  });
  return { parts, metrics, log, mint, request };
}

const lookups = (metrics: ReturnType<typeof testMetrics>, result: 'hit' | 'miss') => counterValue(metrics, 'verifyCacheLookups', { result });

describe('authorizer decide(): the request path', () => {
  it('verifies a new token once (one cache miss), then decides the same token synchronously from the cache (one hit)', async () => {
    const { parts, metrics, mint, request } = await setup();
    const token = await mint('orders');
    const first = parts.authorizer.decide(request(token));
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toMatchObject({ allowed: true, reason: 'ok', target: '/api/orders' });
    expect(await lookups(metrics, 'miss')).toBe(1);

    const again = parts.authorizer.decide(request(token, '/api/orders?page=2'));
    expect(again).not.toBeInstanceOf(Promise);
    expect((again as Decision).allowed).toBe(true);
    expect(await lookups(metrics, 'hit')).toBe(1);
    expect(await lookups(metrics, 'miss')).toBe(1);
  });

  it('refuses synchronously what needs no signature check, and a cached identity outside the rule is still denied', async () => {
    const { parts, metrics, mint, request, log } = await setup();
    const missing = parts.authorizer.decide(request(undefined));
    expect(missing).not.toBeInstanceOf(Promise);
    expect(missing).toMatchObject({ allowed: false, error: { code: 'missing_token' } });
    expect(parts.authorizer.decide(request(undefined, '/health'))).toMatchObject({ allowed: true, reason: 'public' });

    const stranger = await mint('someone-else');
    expect(await parts.authorizer.decide(request(stranger))).toMatchObject({ allowed: false, error: { code: 'policy_denied' } });
    const cachedDenial = parts.authorizer.decide(request(stranger));
    expect(cachedDenial).not.toBeInstanceOf(Promise);
    expect(cachedDenial).toMatchObject({ allowed: false, error: { code: 'policy_denied' } });
    expect(await counterValue(metrics, 'inboundRequests', { decision: 'deny', reason: 'policy_denied' })).toBe(2);
    expect(log.lines.filter((l) => l.event === 'policy_denied')).toHaveLength(2);
  });

  it('a path with escapes meets the rule its decoded spelling meets and the rule its spelling as sent meets: the stricter decides, and it is public only if both are', async () => {
    const { parts, mint, request } = await setup([
      { match: { path: '/api/a:b' }, public: true },
      { match: { path: '/admin/[ops]/**' }, allow: [{ sub: 'deployer' }] },
      { match: { path: '/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
    ]);
    const [orders, deployer] = [await mint('orders'), await mint('deployer')];
    const decide = async (token: string | undefined, url: string) => parts.authorizer.decide(request(token, url));
    expect(await decide(undefined, '/api/a:b')).toMatchObject({ allowed: true, reason: 'public' });
    // An app that decodes reads /api/a%3Ab as the public /api/a:b; one that routes on the escapes as sent reads another
    // path, which /** guards: so a token is needed, and /** decides it.
    expect(await decide(undefined, '/api/a%3Ab')).toMatchObject({ allowed: false, error: { code: 'missing_token' } });
    expect(await decide(orders, '/api/a%3Ab')).toMatchObject({ allowed: true, reason: 'ok', target: '/api/a%3Ab' });
    // Brackets, escaped or not, meet the deployer's rule ([ and ] are no RFC 3986 sub-delims, but apps decode them).
    for (const url of ['/admin/[ops]/x', '/admin/%5Bops%5D/x', '/admin/%5bops%5d/x']) {
      expect(await decide(orders, url), url).toMatchObject({ allowed: false, error: { code: 'policy_denied' } });
      expect(await decide(deployer, url), url).toMatchObject({ allowed: true });
    }
  });

  it('a path spelt as apps read it the same (other letter case, the trailing slash toggled) must also pass the earlier rule that spelling meets', async () => {
    const { parts, mint, request } = await setup([
      { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
      { match: { path: '/Docs/**' }, public: true },
      { match: { path: '/secret' }, allow: [{ sub: 'deployer' }] },
      { match: { path: '/health' }, public: true },
      { match: { path: '/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
    ]);
    const [orders, deployer] = [await mint('orders'), await mint('deployer')];
    const decide = async (token: string | undefined, url: string) => parts.authorizer.decide(request(token, url));
    // /ADMIN/users is /admin/users to such an app: the /admin/** rule applies as well as /**.
    expect(await decide(orders, '/admin/users')).toMatchObject({ allowed: false, error: { code: 'policy_denied' } });
    const sidestep = await decide(orders, '/ADMIN/users');
    expect(sidestep).toMatchObject({ allowed: false, error: { code: 'policy_denied' }, rule: { index: 0 } });
    expect((sidestep as { error: Error }).error.message).toBe('no allow entry of rule 0 (/admin/**), which matches this path spelt in other letter case, with the trailing slash toggled or with its escapes as sent, matched this identity');
    expect(await decide(deployer, '/ADMIN/users')).toMatchObject({ allowed: true, target: '/ADMIN/users', rule: { index: 4 } });
    // /secret/ is /secret to Express without strict routing: the /secret rule applies as well as /**.
    expect(await decide(orders, '/secret/')).toMatchObject({ allowed: false, error: { code: 'policy_denied' }, rule: { index: 2 } });
    expect(await decide(orders, '/Secret')).toMatchObject({ allowed: false, error: { code: 'policy_denied' }, rule: { index: 2 } });
    expect(await decide(deployer, '/secret/')).toMatchObject({ allowed: true, target: '/secret/' });
    // Never wider: /health/ meets the public /health rule, but /** still wants its token.
    expect(await decide(undefined, '/health')).toMatchObject({ allowed: true, reason: 'public' });
    expect(await decide(undefined, '/health/')).toMatchObject({ allowed: false, error: { code: 'missing_token' } });
    // Public only when both are: /docs/x is /Docs/x to a case-blind app, but /** still wants a token here.
    expect(await decide(undefined, '/Docs/x')).toMatchObject({ allowed: true, reason: 'public' });
    expect(await decide(undefined, '/docs/x')).toMatchObject({ allowed: false, error: { code: 'missing_token' } });
    expect(await decide(orders, '/docs/x')).toMatchObject({ allowed: true, reason: 'ok' });
    // Other letter case that selects no other rule changes nothing.
    expect(await decide(orders, '/Api/Orders')).toMatchObject({ allowed: true, target: '/Api/Orders', rule: { index: 4 } });
  });

  it('starts every series of the contract at 0, and counts each refusal in the series it started', async () => {
    const { parts, metrics, mint, request } = await setup();
    const series = async () =>
      Object.fromEntries((await metrics.inboundRequests.get()).values.map((v) => [`${v.labels.decision}/${v.labels.reason}`, v.value]));
    const reasons = ['missing_token', 'malformed_token', 'unsupported_alg', 'unknown_issuer', 'unknown_key', 'bad_signature', 'expired', 'not_yet_valid', 'issued_in_future', 'audience_mismatch', 'lifetime_too_long', 'missing_claim'];
    expect(await series()).toEqual({
      'allow/ok': 0,
      'allow/public': 0,
      ...Object.fromEntries(reasons.map((r) => [`reject/${r}`, 0])),
      'deny/policy_denied': 0,
      'error/keys_unavailable': 0,
    });
    // Refusals of each kind that the authorizer tells apart by the error's class land in those series, no new ones.
    const [, payload] = (await mint('orders')).split('.');
    const unsigned = `eyJhbGciOiJub25lIn0.${payload}.`;
    await parts.authorizer.decide(request(undefined));
    await parts.authorizer.decide(request('not-a-jwt'));
    await parts.authorizer.decide(request(unsigned));
    await parts.authorizer.decide(request(await mint('someone-else')));
    await parts.authorizer.decide(request(await mint('orders')));
    parts.authorizer.decide(request(undefined, '/health'));
    const after = await series();
    expect(Object.keys(after)).toHaveLength(2 + reasons.length + 2);
    expect(after).toMatchObject({ 'reject/missing_token': 1, 'reject/malformed_token': 1, 'reject/unsupported_alg': 1, 'deny/policy_denied': 1, 'allow/ok': 1, 'allow/public': 1 });
  });
});
