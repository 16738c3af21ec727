import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { call, inboundSidecarConfig, metricsText, rawRequest, sample } from './inbound-support.js';

/** Per-route rules on the normalised path, through the CLI-started sidecar. */
describe('inbound rules', () => {
  let idp: TestIdp;
  let app: UpstreamApp;
  let sidecar: SidecarProcess;
  let orders: string;
  let deployer: string;
  let billing: string;

  beforeAll(async () => {
    idp = await startIdp({
      clients: [
        { clientId: 'orders', clientSecret: 's1' },
        { clientId: 'deployer', clientSecret: 's2', extraClaims: { repository: 'acme/deployer', ref: 'refs/heads/main' } },
        { clientId: 'billing', clientSecret: 's3' },
      ],
    });
    app = await startUpstream();
    sidecar = await startSidecar(
      inboundSidecarConfig(app, [idp], {
        rules: [
          { match: { path: '/healthz', methods: ['GET'] }, public: true },
          { match: { path: '/public/**' }, public: true },
          { match: { path: '/payments/**', methods: ['POST'] }, allow: [{ sub: 'orders' }, { claims: { repository: 'acme/deployer', ref: 'refs/heads/main' } }] },
          { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
          { match: { path: '/reports/*/summary', methods: ['GET'] }, allow: [{ client_id: ['billing', 'orders'] }] },
          { match: { path: '/files/secret/**' }, allow: [{ sub: 'deployer' }] },
          { match: { path: '/files/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
        ],
      }),
    );
    [orders, deployer, billing] = await Promise.all([
      idp.getToken('orders', 'orders'),
      idp.getToken('deployer', 'orders'),
      idp.getToken('billing', 'orders'),
    ]);
  });
  afterAll(async () => {
    await sidecar?.stop();
    await app?.close();
    await idp?.close();
  });

  it('public routes need no token; only the listed methods are public', async () => {
    expect((await call(sidecar.inbound!, '/healthz')).status).toBe(200);
    expect((await call(sidecar.inbound!, '/public/a/b.css')).status).toBe(200);
    const post = await call(sidecar.inbound!, '/healthz', { method: 'POST' });
    expect(post.status).toBe(401);
    expect(post.body.reason).toBe('missing_token');
  });

  it('allow entries: sub, claims (all keys of an entry), client_id lists', async () => {
    expect((await call(sidecar.inbound!, '/payments/1', { method: 'POST', token: orders })).status).toBe(200);
    expect((await call(sidecar.inbound!, '/payments/1', { method: 'POST', token: deployer })).status).toBe(200);
    const denied = await call(sidecar.inbound!, '/payments/1', { method: 'POST', token: billing });
    expect(denied.status).toBe(403);
    expect(denied.body).toEqual({ error: expect.any(String), reason: 'policy_denied' });
    expect(denied.headers.get('www-authenticate')).toBe('Bearer error="insufficient_scope", error_description="policy_denied"');
    expect((await call(sidecar.inbound!, '/reports/2026/summary', { token: billing })).status).toBe(200);
    expect((await call(sidecar.inbound!, '/reports/2026/q1/summary', { token: billing })).status).toBe(403);
  });

  it('with rules present, an unmatched route is denied (403), but a bad token is still a 401 first', async () => {
    const seen = app.seen.length;
    expect((await call(sidecar.inbound!, '/unlisted', { token: orders })).status).toBe(403);
    expect((await call(sidecar.inbound!, '/payments/1', { method: 'GET', token: orders })).status).toBe(403);
    expect((await call(sidecar.inbound!, '/unlisted')).status).toBe(401);
    expect(app.seen.length).toBe(seen);
    await sidecar.waitForLog((l) => l.event === 'policy_denied' && l.path === '/unlisted' && (l.claims as { verified?: boolean })?.verified === true);
  });

  it('"..", "%2e%2e" and "//" never reach a more permissive rule; the app receives the normalised path', async () => {
    // /public/** is public, /admin/** needs the deployer: climbing out of /public must land on the admin rule.
    for (const trick of ['/public/../admin/users', '/public/%2e%2e/admin/users', '/public/.%2E/admin/users', '//admin//users', '/public/./../admin/./users']) {
      const res = await rawRequest(sidecar.inbound!, `GET ${trick} HTTP/1.1\r\nHost: orders`);
      expect(res.status, trick).toBe(401);
      expect(res.json().reason).toBe('missing_token');
      const allowed = await rawRequest(sidecar.inbound!, `GET ${trick}?x=1 HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${deployer}`);
      expect(allowed.status, trick).toBe(200);
      expect(app.seen.at(-1)!.url).toBe('/admin/users?x=1');
    }
    // Decoded unreserved characters, upper-case escapes: the app and the rules see the same thing.
    const res = await rawRequest(sidecar.inbound!, `GET /public/%61%62c/caf%c3%a9 HTTP/1.1\r\nHost: orders`);
    expect(res.status).toBe(200);
    expect(app.seen.at(-1)!.url).toBe('/public/abc/caf%C3%A9');
  });

  it('ambiguous paths are refused with 400 bad_path and never forwarded', async () => {
    const seen = app.seen.length;
    for (const p of ['/public/..%2fadmin/users', '/public/%2e%2e%2Fadmin', '/public/..%5cadmin', '/public;/../admin/users', '/admin;jsessionid=x/users', '/public/%00', '/public/%zz']) {
      const res = await rawRequest(sidecar.inbound!, `GET ${p} HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${deployer}`);
      expect(res.status, p).toBe(400);
      expect(res.json().reason).toBe('bad_path');
    }
    expect(app.seen.length).toBe(seen);
    const text = await metricsText(sidecar.admin);
    expect(sample(text, 'oidc_sidecar_inbound_requests_total', { decision: 'reject', reason: 'bad_path' })).toBe(7);
    expect(sample(text, 'oidc_sidecar_inbound_requests_total', { decision: 'deny', reason: 'policy_denied' })).toBeGreaterThan(0);
  });

  it('"/files/secret/**" (the README\'s form for a resource and everything under it) covers /files/secret, its trailing-slash forms and what is under it', async () => {
    // A broader rule (/files/**) follows, as in the trap the README describes: a literal "/files/secret" would leave
    // /files/secret/ and /files/secret/. to it.
    const forms = [['/files/secret', '/files/secret'], ['/files/secret/', '/files/secret/'], ['/files/secret/.', '/files/secret/'], ['/files/secret/x', '/files/secret/x']];
    for (const [target, canonical] of forms) {
      const seen = app.seen.length;
      const denied = await rawRequest(sidecar.inbound!, `GET ${target} HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${orders}`);
      expect([denied.status, denied.json().reason], target).toEqual([403, 'policy_denied']);
      expect(app.seen.length, target).toBe(seen);
      const allowed = await rawRequest(sidecar.inbound!, `GET ${target} HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${deployer}`);
      expect(allowed.status, target).toBe(200);
      expect(app.seen.at(-1)!.url, target).toBe(canonical);
    }
    expect((await call(sidecar.inbound!, '/files/secrets', { token: orders })).status).toBe(200);
  });

  it('logs no rule_unreachable line for rules that can each decide a request', () => {
    expect(sidecar.logs.filter((l) => l.event === 'rule_unreachable')).toEqual([]);
  });

  it('a rule an earlier one hides is logged at start and when a reload changes what there is to say, and the earlier rule decides, as the line says', async () => {
    const hidden = [
      { match: { path: '/api/**' }, allow: [{ sub: 'orders' }] },
      { match: { path: '/api/admin/**' }, allow: [{ sub: 'deployer' }] },
    ];
    const s = await startSidecar(inboundSidecarConfig(app, [idp], { rules: hidden }));
    try {
      const line = await s.waitForLog((l) => l.event === 'rule_unreachable');
      expect(line).toMatchObject({ level: 'warn', key: 'inbound.rules.1', pattern: '/api/admin/**', coveredBy: [0] });
      expect(line.msg).toBe('inbound.rules.1 (/api/admin/**) is never used: rule 0 (/api/**) matches every request it would match and comes first (the first matching rule decides); move it before that rule, or remove it');
      // What the operator is warned about: the admin rule's policy is not applied.
      expect((await call(s.inbound!, '/api/admin/users', { token: orders })).status).toBe(200);
      expect((await call(s.inbound!, '/api/admin/users', { token: deployer })).status).toBe(403);

      s.rewriteConfig(inboundSidecarConfig(app, [idp], { rules: [hidden[1], hidden[0]] }));
      s.signal('SIGHUP');
      await s.waitForLog((l) => l.event === 'config_reloaded');
      expect(s.logs.filter((l) => l.event === 'rule_unreachable')).toHaveLength(1);
      expect((await call(s.inbound!, '/api/admin/users', { token: orders })).status).toBe(403);
      expect((await call(s.inbound!, '/api/admin/users', { token: deployer })).status).toBe(200);

      s.rewriteConfig(inboundSidecarConfig(app, [idp], { rules: [...hidden, { match: { path: '/api/admin/**', methods: ['GET'] }, public: true }] }));
      s.signal('SIGHUP');
      await s.waitForLog((l) => l.event === 'config_reloaded' && s.logs.filter((r) => r.event === 'rule_unreachable').length === 3);
      expect(s.logs.filter((l) => l.event === 'rule_unreachable').slice(1).map((l) => l.key)).toEqual(['inbound.rules.1', 'inbound.rules.2']);
      // The same rules again: nothing new to say.
      const reloads = s.logs.filter((l) => l.event === 'config_reloaded').length;
      s.signal('SIGHUP');
      await s.waitForLog(() => s.logs.filter((l) => l.event === 'config_reloaded').length === reloads + 1);
      expect(s.logs.filter((l) => l.event === 'rule_unreachable')).toHaveLength(3);
    } finally {
      await s.stop();
    }
  });

  it('absolute-form request targets are matched on their path', async () => {
    const res = await rawRequest(sidecar.inbound!, `GET http://orders/public/../admin/x HTTP/1.1\r\nHost: orders`);
    expect(res.status).toBe(401);
    const ok = await rawRequest(sidecar.inbound!, `GET http://orders/healthz HTTP/1.1\r\nHost: orders`);
    expect(ok.status).toBe(200);
    expect(app.seen.at(-1)!.url).toBe('/healthz');
  });
});
