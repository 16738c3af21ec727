import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectRefused, flushLogs, rawExchange, rawRequestBytes, startRecordingApp, tokenLeaks, type RecordingApp, type Refusal } from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { inboundSidecarConfig } from './inbound-support.js';

/**
 * Path tricks against per-route rules, sent as raw bytes (clients normalise
 * URLs before sending). The invariant: a request never reaches the app under
 * a more permissive rule than its real path. Either the sidecar refuses the
 * path as ambiguous (400 bad_path), or it decides on one canonical form and
 * forwards exactly that form, so the app and the rules never disagree.
 *
 * Each row is written by hand: raw request target → the canonical path the
 * app must receive (or bad_path) → the rule that must decide. Every row is
 * sent by an anonymous caller, by `orders` (may use /api) and by `deployer`
 * (may use /api and /admin).
 */

type Rule = 'public' | 'admin' | 'api' | 'healthz' | 'none';
type Caller = 'anonymous' | 'orders' | 'deployer';

const rules = [
  { match: { path: '/healthz', methods: ['GET'] }, public: true },
  { match: { path: '/public/**' }, public: true },
  { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
  { match: { path: '/api/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
  // Reserved characters a path may carry plain or escaped: each rule must meet both spellings (an app that decodes the
  // path routes them as one), written plain (`:`), escaped (`%40`) or as a literal star (`%2A`, `*` being the wildcard).
  { match: { path: '/jobs/*:run' }, allow: [{ sub: 'deployer' }] },
  { match: { path: '/jobs/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
  { match: { path: '/users/%40admin/**' }, allow: [{ sub: 'deployer' }] },
  { match: { path: '/users/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
  { match: { path: '/files/%2A' }, allow: [{ sub: 'deployer' }] },
  { match: { path: '/files/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
];

/** [method, raw target, canonical path + query the app must receive | 'bad_path', rule that decides] */
const ROWS: [string, string, string, Rule][] = [
  // dot segments, plain and percent-encoded in every case mix
  ['GET', '/public/../admin/users', '/admin/users', 'admin'],
  ['GET', '/public/%2e%2e/admin/users', '/admin/users', 'admin'],
  ['GET', '/public/%2E%2e/admin/users', '/admin/users', 'admin'],
  ['GET', '/public/%2e%2E/admin/users', '/admin/users', 'admin'],
  ['GET', '/public/.%2E/admin/users', '/admin/users', 'admin'],
  ['GET', '/public/%2e./admin/users', '/admin/users', 'admin'],
  ['GET', '/public/./../admin/./users', '/admin/users', 'admin'],
  ['GET', '/public/x/../../admin/users', '/admin/users', 'admin'],
  ['GET', '/public/../../../../admin/users', '/admin/users', 'admin'],
  ['GET', '/api/../admin/users', '/admin/users', 'admin'],
  ['GET', '/public/.%2e', '/', 'none'],
  ['GET', '/public/x/%2e', '/public/x/', 'public'],
  // empty segments
  ['GET', '//admin//users', '/admin/users', 'admin'],
  ['GET', '///public/../admin', '/admin', 'admin'],
  ['GET', '/public//..//admin/users', '/admin/users', 'admin'],
  // case and trailing slashes: paths are case-sensitive (RFC 3986 §6.2.2.1), so no rule matches a different case
  ['GET', '/Admin/users', '/Admin/users', 'none'],
  ['GET', '/PUBLIC/x', '/PUBLIC/x', 'none'],
  ['GET', '/admin/users/', '/admin/users/', 'admin'],
  ['GET', '/admin', '/admin', 'admin'],
  ['GET', '/healthz/', '/healthz/', 'none'],
  ['HEAD', '/healthz', '/healthz', 'healthz'], // a GET rule covers HEAD
  ['POST', '/healthz', '/healthz', 'none'],
  ['GET', '/healthz', '/healthz', 'healthz'],
  // path parameters, encoded separators, backslashes, NUL, fragments: refused as ambiguous
  ['GET', '/public/x;/../../admin', 'bad_path', 'none'],
  ['GET', '/public/..;/admin/users', 'bad_path', 'none'],
  ['GET', '/admin;jsessionid=1/users', 'bad_path', 'none'],
  ['GET', '/public;/admin/users', 'bad_path', 'none'],
  ['GET', '/public%2f..%2fadmin/users', 'bad_path', 'none'],
  ['GET', '/public/..%2fadmin', 'bad_path', 'none'],
  ['GET', '/public/..%2Fadmin', 'bad_path', 'none'],
  ['GET', '/public/%2e%2e%2fadmin', 'bad_path', 'none'],
  ['GET', '/public\\..\\admin\\users', 'bad_path', 'none'],
  ['GET', '/public/..%5cadmin', 'bad_path', 'none'],
  ['GET', '/public/..%5Cadmin', 'bad_path', 'none'],
  ['GET', '/public/%00/../admin', 'bad_path', 'none'],
  // an encoded line break: a rule compiled to a regex without dotall would not see past it (CVE-2022-22978)
  ['GET', '/admin%0a/users', 'bad_path', 'none'],
  ['GET', '/admin/users%0D%0A', 'bad_path', 'none'],
  ['GET', '/public#/../admin', 'bad_path', 'none'],
  ['GET', '/public/%zz/../admin', 'bad_path', 'none'],
  ['GET', '/public/%2/../admin', 'bad_path', 'none'],
  ['GET', '*', 'bad_path', 'none'],
  // double encoding and overlong or look-alike dots are literal segments, forwarded exactly as matched
  ['GET', '/public/%252e%252e/admin/users', '/public/%252e%252e/admin/users', 'public'],
  ['GET', '/public/%c0%ae%c0%ae/admin', '/public/%C0%AE%C0%AE/admin', 'public'],
  ['GET', '/public/%ef%bc%8e%ef%bc%8e/admin', '/public/%EF%BC%8E%EF%BC%8E/admin', 'public'],
  // reserved characters, plain or escaped, meet the same rule; the app receives them as sent (escapes in upper case)
  ['POST', '/jobs/7:run', '/jobs/7:run', 'admin'],
  ['POST', '/jobs/7%3Arun', '/jobs/7%3Arun', 'admin'],
  ['POST', '/jobs/7%3arun', '/jobs/7%3Arun', 'admin'],
  ['POST', '/jobs/7', '/jobs/7', 'api'],
  ['GET', '/users/%40admin/keys', '/users/%40admin/keys', 'admin'],
  ['GET', '/users/@admin/keys', '/users/@admin/keys', 'admin'],
  ['GET', '/users/%40bob/keys', '/users/%40bob/keys', 'api'],
  ['GET', '/files/*', '/files/*', 'admin'],
  ['GET', '/files/%2a', '/files/%2A', 'admin'],
  ['GET', '/files/x', '/files/x', 'api'],
  // a query is not a path
  ['GET', '/public/x?/../../admin', '/public/x?/../../admin', 'public'],
  ['GET', '/admin/users?next=/public', '/admin/users?next=/public', 'admin'],
  // absolute-form targets: the authority is not ours to trust, only the path decides
  ['GET', 'http://orders/public/../admin/users', '/admin/users', 'admin'],
  ['GET', 'http://evil.example//admin', '/admin', 'admin'],
  ['GET', 'http://orders/public/%2e%2e/api/x', '/api/x', 'api'],
];

let idp: TestIdp;
let app: RecordingApp;
let sidecar: SidecarProcess;
const tokens: Partial<Record<Caller, string>> = {};

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 's1' }, { clientId: 'deployer', clientSecret: 's2' }] });
  app = await startRecordingApp();
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], rules },
  });
  tokens.orders = await idp.getToken('orders', 'orders');
  tokens.deployer = await idp.getToken('deployer', 'orders');
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), idp?.close()]);
});

/** What `caller` must get on a path decided by `rule`: 200 or the refusal. */
function expected(rule: Rule, caller: Caller): 200 | Refusal {
  if (rule === 'public' || rule === 'healthz') return 200;
  if (caller === 'anonymous') return { status: 401, reason: 'missing_token' };
  if (rule === 'api') return 200;
  if (rule === 'admin' && caller === 'deployer') return 200;
  return { status: 403, reason: 'policy_denied' };
}

describe('path tricks never reach the app under a more permissive rule than the real path', () => {
  for (const [method, target, canonical, rule] of ROWS) {
    it(`${method} ${target} → ${canonical === 'bad_path' ? '400 bad_path' : `${canonical} (${rule})`}`, async () => {
      for (const caller of ['anonymous', 'orders', 'deployer'] as const) {
        const token = tokens[caller as 'orders'];
        const headers: [string, string][] = [['Host', 'orders'], ...(token ? [['Authorization', `Bearer ${token}`] as [string, string]] : [])];
        const bytes = rawRequestBytes(target, headers, { method });
        const label = `${caller} ${method} ${target}`;
        const secrets = token ? [token] : [];
        if (canonical === 'bad_path') {
          await expectRefused(sidecar, app, label, bytes, { status: 400, reason: 'bad_path' }, secrets);
          continue;
        }
        const want = expected(rule, caller);
        if (want === 200) {
          const before = app.requests.length;
          const res = (await rawExchange(sidecar.inbound!, bytes)).responses[0]!;
          expect(res.status, label).toBe(200);
          const seen = app.requests.slice(before);
          expect(seen.map((r) => `${r.method} ${r.url}`), label).toEqual([`${method} ${canonical}`]);
          // A verified caller arrives with its identity; a public route never carries one the caller made up.
          expect(seen[0]!.headers['x-peer-sub'], label).toBe(rule === 'public' || rule === 'healthz' ? undefined : caller);
        } else {
          await expectRefused(sidecar, app, label, bytes, want, secrets);
        }
      }
    });
  }

  it('a raw NUL or space inside the request line is refused by the parser (400), nothing reaches the app', async () => {
    for (const target of ['/public/\u0000/../admin', '/public/ /../admin']) {
      const before = app.requests.length;
      const ex = await rawExchange(sidecar.inbound!, rawRequestBytes(target, [['Host', 'orders']]));
      expect(ex.responses[0]!.status, JSON.stringify(target)).toBe(400);
      expect(app.requests.slice(before)).toEqual([]);
    }
  });

  it('raw control characters, raw non-ASCII bytes and an authority-form target are malformed request lines: 400 bad_request, as README says', async () => {
    const targets = ['/public/a\tb', '/public/a\u0001b', '/public/a\u007fb', '/public/caf\u00c3\u00a9', 'orders:80'];
    for (const target of targets) {
      const bytes = Buffer.from(rawRequestBytes(target, [['Host', 'orders']]), 'latin1');
      await expectRefused(sidecar, app, JSON.stringify(target), bytes, { status: 400, reason: 'bad_request' });
    }
  });

  it('credentials in a request target never reach the log: userinfo, #fragment, ;params and query are cut from every logged path', async () => {
    const password = 's3cr3t-pass';
    const session = 'SESSION-0f9e8d7c6b5a';
    const token = tokens.orders!;
    // A WebSocket handshake that is no GET: refused by the upgrade check on every Node.
    const ws = [['Connection', 'Upgrade'], ['Upgrade', 'websocket'], ['Content-Length', '0']] as [string, string][];
    // [label, request bytes, status, reason, the path the log line must carry]
    const cases: [string, string, number, string, string][] = [
      // Refused by the normaliser (bad_path): the raw target is what gets logged.
      ['userinfo and ;', rawRequestBytes(`http://svc:${password}@orders/a;b`, [['Host', 'orders']]), 400, 'bad_path', 'http://orders/a;…'],
      ['fragment', rawRequestBytes(`/callback#access_token=${token}`, [['Host', 'orders']]), 400, 'bad_path', '/callback'],
      ['jsessionid', rawRequestBytes(`/admin;jsessionid=${session}/users`, [['Host', 'orders']]), 400, 'bad_path', '/admin;…/users'],
      ['@ in userinfo', rawRequestBytes(`https://svc:${password}@x@orders/a;b?access_token=${token}`, [['Host', 'orders']]), 400, 'bad_path', 'https://orders/a;…'],
      ['userinfo and fragment', rawRequestBytes(`http://svc:${password}@orders/admin/users#${token}`, [['Host', 'orders']]), 400, 'bad_path', 'http://orders/admin/users'],
      // User info in an absolute-form target is an error (RFC 9110 §4.2.4) even where the path is fine.
      ['userinfo and query', rawRequestBytes(`http://svc:${password}@orders/admin/users?access_token=${token}`, [['Host', 'orders']]), 400, 'bad_path', 'http://orders/admin/users'],
      // Normalised, then refused for the token: the canonical path.
      ['query, missing token', rawRequestBytes(`http://orders/admin/users?access_token=${token}`, [['Host', 'orders']]), 401, 'missing_token', '/admin/users'],
      // Refused by the listener (two Host headers), by the upgrade check and as CONNECT: the raw req.url.
      ['listener', rawRequestBytes(`http://svc:${password}@orders/public/x#access_token=${token}`, [['Host', 'orders'], ['Host', 'admin']]), 400, 'bad_request', 'http://orders/public/x'],
      ['upgrade', rawRequestBytes(`http://svc:${password}@orders/public/ws?access_token=${token}`, [['Host', 'orders'], ...ws], { method: 'POST' }), 400, 'upgrade_not_supported', 'http://orders/public/ws'],
      ['CONNECT', rawRequestBytes(`svc:${password}@orders:443`, [['Host', 'orders:443']], { method: 'CONNECT' }), 405, 'connect_not_supported', 'orders:443'],
    ];
    const before = app.requests.length;
    for (const [label, bytes, status, reason, path] of cases) {
      const from = sidecar.logs.length;
      const res = (await rawExchange(sidecar.inbound!, bytes)).responses[0];
      expect([res?.status, res?.json().reason], label).toEqual([status, reason]);
      const logged = await sidecar.waitForLog((l) => sidecar.logs.indexOf(l) >= from && l.reason === reason);
      expect(logged.path, label).toBe(path);
    }
    expect(app.requests.slice(before)).toEqual([]);
    await flushLogs(sidecar);
    const output = sidecar.output();
    expect(output).not.toContain(password);
    expect(output).not.toContain(session);
    expect(tokenLeaks(output, [token])).toEqual([]);
  });

  it('refusals are audited with the canonical path, and no token reached the output', async () => {
    await flushLogs(sidecar);
    const denied = sidecar.logs.filter((l) => l.event === 'policy_denied').map((l) => l.path);
    expect(denied).toContain('/admin/users');
    expect(denied).not.toContain('/public/../admin/users');
    expect(tokenLeaks(sidecar.output(), Object.values(tokens) as string[])).toEqual([]);
  });
});

describe('rule globs are matched in linear time (ReDoS)', () => {
  // Rules are matched before any token is looked at, so the path is the anonymous caller's to choose. As backtracking
  // regexes, a segment glob with several `*` (`*-*-*`) costs the cube of a segment's length, and several `**` the
  // cube of the segment count: one 12 KiB path would hold the event loop, and with it every other caller, for hours.
  let globApp: RecordingApp;
  let globSidecar: SidecarProcess;
  beforeAll(async () => {
    globApp = await startRecordingApp();
    globSidecar = await startSidecar(
      inboundSidecarConfig(globApp, [idp], {
        rules: [
          { match: { path: '/files/*-*-*.txt' }, public: true },
          { match: { path: '/**/a/**/b/**/c' }, public: true },
          { match: { path: '/api/**' }, allow: [{ sub: 'orders' }] },
        ],
      }),
    );
  });
  afterAll(async () => {
    await globSidecar?.stop();
    await globApp?.close();
  });

  it('a long path against *-*-* and **/a/**/b/**/c is decided at once, and the globs still match what they should', async () => {
    const get = async (target: string) => (await rawExchange(globSidecar.inbound!, rawRequestBytes(target, [['Host', 'orders']]))).responses[0]!.status;
    for (const [target, status] of [
      [`/files/${'-'.repeat(12_000)}x`, 401],
      [`/files/${'-'.repeat(12_000)}.txt`, 200],
      [`${'/a/b'.repeat(3_000)}/x`, 401],
      [`${'/a/b'.repeat(3_000)}/c`, 200],
      ['/files/a-b-c.txt', 200],
      ['/files/a-b.txt', 401],
      ['/files/a-b-c/d.txt', 401],
      ['/a/b/c', 200],
      ['/x/a/y/b/z/c', 200],
      ['/a/c/b', 401],
    ] as [string, number][]) {
      expect(await get(target), target.length > 40 ? `${target.slice(0, 40)}… (${target.length})` : target).toBe(status);
    }
  });
});
