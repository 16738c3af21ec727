import { mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { configJsonSchema } from '../../src/commands/schema.js';
import { DEFAULTS } from '../../src/config/defaults.js';
import { loadConfig, parseConfig, resolveConfigPaths } from '../../src/config/load.js';
import { deepMerge } from '../../src/config/merge.js';
import { redactConfig } from '../../src/config/redact.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { issuesOf } from '../support/config-errors.js';

const minimalInbound = {
  service: 'orders',
  inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example' }] },
};

function tmpFile(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('config defaults', () => {
  it('fills every default from DEFAULTS and freezes the result', () => {
    const c = parseConfig(minimalInbound);
    expect(c.inbound!.listen).toBe(DEFAULTS.inbound.listen);
    expect(c.inbound!.clockSkewSeconds).toBe(30);
    expect(c.inbound!.issuers[0]!.algorithms).toEqual(['RS256', 'PS256', 'ES256', 'EdDSA']);
    expect(c.inbound!.forward).toEqual({
      subjectHeader: 'x-peer-sub',
      issuerHeader: 'x-peer-iss',
      claimsHeader: 'x-peer-claims',
      claimHeaders: {},
      keepToken: false,
    });
    expect(c.admin.listen).toBe('0.0.0.0:15020');
    expect(c.inbound!.jwks.maxStaleSeconds).toBe(86_400);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.inbound!.issuers[0])).toBe(true);
  });

  it('defaults the outbound listener to loopback and unknown hosts to deny', () => {
    const c = parseConfig({ service: 'a', outbound: { tokenSource: { type: 'env', variable: 'T' }, routes: [{ host: 'Payments', audience: 'payments' }] } });
    expect(c.outbound!.listen).toBe('127.0.0.1:15001');
    expect(c.outbound!.unknownHosts).toBe('deny');
    expect(c.outbound!.routes[0]!.host).toBe('payments');
  });
});

describe('config validation errors name the key path', () => {
  it('rejects unknown keys anywhere (a typo must not disable security)', () => {
    const issues = issuesOf(() =>
      parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, rule: [], forward: { keeptoken: true } } }),
    );
    expect(issues).toContain('inbound.rule: unknown key (did you mean rules?)');
    expect(issues).toContain('inbound.forward.keeptoken: unknown key (did you mean keepToken?)');
  });

  it('names the key an unknown one was probably meant to be: letter case, `_`, a prefix or a typo away, in a token source of any type', () => {
    const issues = issuesOf(() =>
      parseConfig({
        ...minimalInbound,
        inbound: { ...minimalInbound.inbound, clockSkew: 5, issuers: [{ issuer: 'https://idp', jwks_uri: 'https://idp/j' }], audiance: 'x' },
        outbound: { tokenSource: { type: 'client_credentials', tokenEndPoint: 'http://idp/t', clientId: 'a', clientSecret: 'b' }, routes: [{ host: 'a', audience: 'a', scope: ['x'] }] },
        bogus: 1,
      }),
    );
    expect(issues).toEqual(
      expect.arrayContaining([
        'inbound.clockSkew: unknown key (did you mean clockSkewSeconds?)',
        'inbound.issuers.0.jwks_uri: unknown key (did you mean jwksUri?)',
        'inbound.audiance: unknown key (did you mean audience?)',
        'outbound.tokenSource.tokenEndPoint: unknown key (did you mean tokenEndpoint?)',
        'outbound.routes.0.scope: unknown key (did you mean scopes?)',
        'bogus: unknown key',
      ]),
    );
  });

  it("names a key of another token source type as that, not 'did you mean' the key itself, and how an overlay removes it", () => {
    const base = tmpFile('base.yaml', 'service: a\noutbound:\n  tokenSource: { type: file, path: /x }\n  routes: []\n');
    const overlay = tmpFile('cc.yaml', 'outbound:\n  tokenSource: { type: client_credentials, tokenEndpoint: "http://127.0.0.1:1/t", clientId: a, clientSecret: s }\n');
    expect(issuesOf(() => loadConfig([base, overlay], {}))).toEqual([
      `outbound.tokenSource.path: unknown key for type client_credentials (a key of another type; an overlay that changes the type removes it with \`path: null\`) (in ${base}, line 3)`,
    ]);
    const removed = tmpFile('cc2.yaml', 'outbound:\n  tokenSource: { type: client_credentials, tokenEndpoint: "http://127.0.0.1:1/t", clientId: a, clientSecret: s, path: null }\n');
    expect(loadConfig([base, removed], {}).outbound!.tokenSource).toMatchObject({ type: 'client_credentials', clientId: 'a' });
  });

  it('says how to nest a key written with dots (`log.level: debug`, as Helm and Spring write it), with its line', () => {
    const p = tmpFile('dotted.yaml', 'service: a\nlog.level: debug\ninbound.jwks.timeoutSeconds: 3\nsome.thing: 1\noutbound: { tokenSource: { type: env, variable: T }, routes: [] }\n');
    expect(issuesOf(() => loadConfig([p], {}))).toEqual([
      'log.level: unknown key: a dot does not nest keys; put level under log (log: { level: … }) (line 2)',
      'inbound.jwks.timeoutSeconds: unknown key: a dot does not nest keys; put timeoutSeconds under inbound.jwks (inbound: { jwks: { timeoutSeconds: … } }) (line 3)',
      // Not every part a key: no nesting to suggest.
      'some.thing: unknown key (line 4)',
    ]);
    // Beside a real `log:` section, in the same file or in an earlier one, the line is the dotted key's own, not log's.
    const both = tmpFile('both.yaml', 'service: a\nlog:\n  level: info\nlog.level: debug\noutbound: { tokenSource: { type: env, variable: T }, routes: [] }\n');
    expect(issuesOf(() => loadConfig([both], {}))).toEqual(['log.level: unknown key: a dot does not nest keys; put level under log (log: { level: … }) (line 4)']);
    const base = tmpFile('base.yaml', 'service: a\nlog:\n  level: info\noutbound: { tokenSource: { type: env, variable: T }, routes: [] }\n');
    const overlay = tmpFile('helm.yaml', 'log.level: debug\n');
    expect(issuesOf(() => loadConfig([base, overlay], {}))).toEqual([
      `log.level: unknown key: a dot does not nest keys; put level under log (log: { level: … }) (in ${overlay}, line 1)`,
    ]);
  });

  it('reports every problem at once', () => {
    const issues = issuesOf(() => parseConfig({ inbound: { target: 'not a url', audience: [], issuers: [] } }));
    expect(issues.some((i) => i.startsWith('service:'))).toBe(true);
    expect(issues.some((i) => i.startsWith('inbound.target:'))).toBe(true);
    expect(issues.some((i) => i.startsWith('inbound.audience:'))).toBe(true);
    expect(issues.some((i) => i.startsWith('inbound.issuers:'))).toBe(true);
  });

  it('a required key left out reads `required`, with its description as the hint where it has one', () => {
    expect(issuesOf(() => parseConfig({ inbound: { issuers: [{}] }, outbound: { tokenSource: { type: 'env', variable: 'T' }, routes: [{ host: 'p' }] } }))).toEqual([
      "service: required (this workload's name, used in logs and metrics)",
      'inbound.target: required (the app, e.g. http://127.0.0.1:8080)',
      // A key that takes several forms (a string or a list) too, not a bare "Invalid input".
      "inbound.audience: required (the token's aud must contain one of these)",
      'inbound.issuers.0.issuer: required (exact `iss` value; discovery at {issuer}/.well-known/openid-configuration)',
      'outbound.routes.0.audience: required',
    ]);
    // A value of the wrong type keeps zod's wording; a schema's own message is untouched.
    expect(issuesOf(() => parseConfig({ ...minimalInbound, service: 5 }))).toEqual(['service: Invalid input: expected string, received number']);
    expect(issuesOf(() => parseConfig({ ...minimalInbound, service: '' }))).toEqual(['service: Too small: expected string to have >=1 characters']);
  });

  it('a key that takes a value or a list says what it takes and what it got, not a bare "Invalid input"', () => {
    const withAudience = (audience: unknown) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, audience } });
    const audienceTakes = 'inbound.audience: expected a string or a non-empty list of strings, got';
    expect(issuesOf(() => parseConfig(withAudience(3)))).toEqual([`${audienceTakes} a number`]);
    expect(issuesOf(() => parseConfig(withAudience(null)))).toEqual([`${audienceTakes} null`]);
    expect(issuesOf(() => parseConfig(withAudience({ orders: true })))).toEqual([`${audienceTakes} a map`]);
    expect(issuesOf(() => parseConfig(withAudience(['orders', 2])))).toEqual([`${audienceTakes} a list whose item 1 is a number`]);
    // Where one form fits but breaks a check, that check's words stay.
    expect(issuesOf(() => parseConfig(withAudience([])))).toEqual(['inbound.audience: Too small: expected array to have >=1 items']);
    const withAllow = (allow: unknown) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, rules: [{ match: { path: '/x' }, allow: [allow] }] } });
    expect(issuesOf(() => parseConfig(withAllow({ sub: [true] })))).toEqual(['inbound.rules.0.allow.0.sub: expected a string or a non-empty list of strings, got a list whose item 0 is a boolean']);
    expect(issuesOf(() => parseConfig(withAllow({ claims: { team: ['a', ['b']] } })))).toEqual([
      'inbound.rules.0.allow.0.claims.team: expected a string, number or boolean, or a non-empty list of them, got a list whose item 1 is a list',
    ]);
  });

  it('never accepts none or HS* algorithms', () => {
    for (const alg of ['none', 'HS256', 'HS512']) {
      const issues = issuesOf(() =>
        parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, issuers: [{ issuer: 'https://i', algorithms: [alg] }] } }),
      );
      expect(issues[0]).toMatch(/^inbound\.issuers\.0\.algorithms\.0: /);
    }
  });

  it('requires a rule to be public or to have allow entries, never both', () => {
    const base = (rule: unknown) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, rules: [rule] } });
    expect(issuesOf(() => parseConfig(base({ match: { path: '/x' } })))).toEqual(['inbound.rules.0.allow: a rule needs `public: true` or an `allow` list']);
    expect(issuesOf(() => parseConfig(base({ match: { path: '/x' }, public: true, allow: [{ sub: 'a' }] })))[0]).toMatch(/^inbound\.rules\.0\.public:/);
    expect(issuesOf(() => parseConfig(base({ match: { path: '/x' }, allow: [{}] })))[0]).toMatch(/^inbound\.rules\.0\.allow\.0:/);
    // zod's records drop a `__proto__` key without a word, which took that claim's check away.
    const proto = JSON.parse('{"claims":{"__proto__":"admin","team":"ops"}}');
    expect(issuesOf(() => parseConfig(base({ match: { path: '/admin/**' }, allow: [proto] })))).toEqual([
      'inbound.rules.0.allow.0.claims.__proto__: a key named "__proto__" is not accepted',
    ]);
    expect(issuesOf(() => loadConfig([tmpFile('proto.yaml', 'service: s\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n  rules: [{ match: { path: /** }, allow: [{ claims: { __proto__: admin, team: ops } }] }]\n')], {}))).toEqual([
      'inbound.rules.0.allow.0.claims.__proto__: a key named "__proto__" is not accepted (line 6)',
    ]);
    // An empty claims map is an entry that checks nothing: it would let every valid token in.
    expect(issuesOf(() => parseConfig(base({ match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }, { claims: {} }] })))).toEqual([
      'inbound.rules.0.allow.1.claims: needs at least one claim: an empty map checks nothing, so the entry would allow every valid token',
    ]);
    expect(issuesOf(() => parseConfig(base({ match: { path: 'x' }, public: true })))[0]).toMatch(/^inbound\.rules\.0\.match\.path:/);
  });

  it('names the token source type when it is unknown', () => {
    const issues = issuesOf(() => parseConfig({ service: 'a', outbound: { tokenSource: { type: 'magic' }, routes: [] } }));
    expect(issues).toEqual(['outbound.tokenSource.type: must be one of client_credentials, token_exchange, file, github_actions, env']);
  });

  it('needs exactly one token endpoint and one client credential', () => {
    const issues = issuesOf(() =>
      parseConfig({ service: 'a', outbound: { tokenSource: { type: 'client_credentials', clientId: 'a' }, routes: [] } }),
    );
    expect(issues).toContain('outbound.tokenSource.tokenEndpoint: set exactly one of `issuer` (discovery) or `tokenEndpoint`');
    expect(issues.some((i) => i.startsWith('outbound.tokenSource.clientSecret: set exactly one client credential'))).toBe(true);
  });

  it('flags a route with no token source and duplicate hosts', () => {
    const issues = issuesOf(() =>
      parseConfig({ service: 'a', outbound: { routes: [{ host: 'b', audience: 'b' }, { host: 'B', audience: 'b', tokenSource: { type: 'env', variable: 'X' } }] } }),
    );
    expect(issues).toContain('outbound.routes.0.tokenSource: no tokenSource here and no outbound.tokenSource default');
    expect(issues).toContain('outbound.routes.1.host: duplicate route for host "b"');
  });

  it('refuses an audience that {audience} would put in a file path as more than one file name (a URL audience), naming where the path is set', () => {
    const issues = issuesOf(() =>
      parseConfig({
        service: 'a',
        outbound: {
          tokenSource: { type: 'file', path: '/var/run/secrets/tokens/{audience}' },
          routes: [
            { host: 'a', audience: 'https://payments.example' },
            { host: 'b', audience: '..' },
            { host: 'c', audience: 'ledger' },
            { host: 'd', audience: 'https://ledger.example', tokenSource: { type: 'file', path: '/tokens/ledger' } },
            { host: 'e', audience: 'x/y', tokenSource: { type: 'file', path: '/tokens/{audience}.jwt' } },
          ],
        },
      }),
    );
    expect(issues).toEqual([
      'outbound.routes.0.audience: "https://payments.example" cannot fill {audience} in outbound.tokenSource.path: it is put in a file path as one file name, so it may not contain "/" or be "." or ".."; give this route its own tokenSource with the file\'s path',
      'outbound.routes.1.audience: ".." cannot fill {audience} in outbound.tokenSource.path: it is put in a file path as one file name, so it may not contain "/" or be "." or ".."; give this route its own tokenSource with the file\'s path',
      'outbound.routes.4.audience: "x/y" cannot fill {audience} in outbound.routes.4.tokenSource.path: it is put in a file path as one file name, so it may not contain "/" or be "." or ".."; give this route its own tokenSource with the file\'s path',
    ]);
  });

  it('refuses a route host the router could not parse, so validate refuses what run would: port 0 or past 65535, a leading dot, a trailing hyphen', () => {
    const withRoute = (host: string) => () => parseConfig({ service: 'a', outbound: { tokenSource: { type: 'env', variable: 'T' }, routes: [{ host, audience: 'b' }] } });
    for (const host of ['payments:99999', 'payments:0', '.payments', 'payments-', 'pay ments', '[::1', 'payments:']) {
      expect(issuesOf(withRoute(host)), host).toEqual(['outbound.routes.0.host: must be a host name, optionally with a port 1-65535']);
    }
    for (const host of ['payments', 'Payments:8443', 'payments.svc.cluster.local:65535', '[::1]:80', '10.0.0.1']) expect(withRoute(host), host).not.toThrow();
  });

  it('refuses a query or fragment in inbound.target or a route target: run would drop it, so validate must not print it as if it applied', () => {
    const query = "must not have a query (?...): each request's own path and query go after the target's path, and it would be dropped";
    const fragment = 'must not have a fragment (#...): it is never sent with a request';
    for (const target of ['http://127.0.0.1:8080/app?tenant=acme', 'http://127.0.0.1:8080/app#frag', 'http://127.0.0.1:8080/?']) {
      const message = target.includes('#') ? fragment : query;
      expect(issuesOf(() => parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, target } })), target).toEqual([`inbound.target: ${message}`]);
      expect(issuesOf(() => parseConfig({ service: 'a', outbound: { tokenSource: { type: 'env', variable: 'T' }, routes: [{ host: 'b', audience: 'b', target }] } })), target).toEqual([
        `outbound.routes.0.target: ${message}`,
      ]);
    }
    expect(() => parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, target: 'https://app.internal:8443/base/' } })).not.toThrow();
  });

  it('refuses a whole number past 2^53 in a claim rule: YAML has already rounded it, so the rule would match another ID', () => {
    const withClaims = (claims: Record<string, unknown>) => () =>
      parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, rules: [{ match: { path: '/**' }, allow: [{ claims }] }] } });
    const message = 'a whole number this large loses digits (past 2^53); quote it ("...") to match the claim as a string';
    expect(issuesOf(withClaims({ google_sub: 112233445566778899001 }))).toEqual([`inbound.rules.0.allow.0.claims.google_sub: ${message}`]);
    expect(issuesOf(withClaims({ org: [1, 2 ** 53] }))).toEqual([`inbound.rules.0.allow.0.claims.org.1: ${message}`]);
    expect(() => withClaims({ n: 1.5, m: Number.MAX_SAFE_INTEGER, s: '112233445566778899001' })()).not.toThrow();
  });

  it('refuses a fragment in every configured URL (never sent; `#access_token=...` pasted from a browser is a secret)', () => {
    const fragment = 'must not have a fragment (#...): it is never sent with a request';
    const source = { type: 'client_credentials', tokenEndpoint: 'https://idp.example.com/token#access_token=FRAG1', clientId: 'a', clientSecret: 's' };
    expect(issuesOf(() => parseConfig({ service: 'a', outbound: { tokenSource: source, routes: [{ host: 'b', audience: 'b' }] } }))).toEqual([`outbound.tokenSource.tokenEndpoint: ${fragment}`]);
    const issuers = [{ issuer: 'https://idp.example.com', jwksUri: 'https://idp.example.com/jwks#k' }];
    expect(issuesOf(() => parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, issuers } }))).toEqual([`inbound.issuers.0.jwksUri: ${fragment}`]);
  });

  it('takes tunnel limits: maxTunnels a positive whole number, tunnelIdleTimeoutSeconds 0 (off) or more', () => {
    const withLimits = (limits: Record<string, unknown>) => () => parseConfig({ ...minimalInbound, limits });
    expect(withLimits({})().limits).toMatchObject({ maxTunnels: 1024, tunnelIdleTimeoutSeconds: 3600 });
    expect(withLimits({ maxTunnels: 1, tunnelIdleTimeoutSeconds: 0 })().limits).toMatchObject({ maxTunnels: 1, tunnelIdleTimeoutSeconds: 0 });
    for (const maxTunnels of [0, -1, 1.5, '10']) expect(issuesOf(withLimits({ maxTunnels }))[0], String(maxTunnels)).toMatch(/^limits\.maxTunnels: /);
    expect(issuesOf(withLimits({ tunnelIdleTimeoutSeconds: -1 }))[0]).toMatch(/^limits\.tunnelIdleTimeoutSeconds: /);
  });

  it('refuses a route host without a target when http://{host} is no URL, so validate refuses what run would (it failed with "Invalid URL")', () => {
    const route = (host: string, target?: string) => () =>
      parseConfig({ service: 'a', outbound: { tokenSource: { type: 'env', variable: 'T' }, routes: [{ host, audience: 'b', ...(target ? { target } : {}) }] } });
    for (const host of ['foo.1', '1.2.3.256', '4294967296:80']) {
      expect(issuesOf(route(host)), host).toEqual([
        `outbound.routes.0.host: no target, and the default http://${host} is not a URL (a last label of digits must make an IPv4 address): set target`,
      ]);
      expect(route(host, 'http://10.0.0.1'), host).not.toThrow();
    }
  });

  it('requires jwks.cooldownSeconds >= 1 (0 would make every unknown kid a JWKS fetch)', () => {
    const withCooldown = (cooldownSeconds: number) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, jwks: { cooldownSeconds } } });
    expect(issuesOf(() => parseConfig(withCooldown(0)))).toEqual([
      'inbound.jwks.cooldownSeconds: must be at least 1: with 0 every token with an unknown kid would trigger a JWKS fetch',
    ]);
    expect(issuesOf(() => parseConfig(withCooldown(0.5)))[0]).toMatch(/^inbound\.jwks\.cooldownSeconds: must be at least 1/);
    expect(parseConfig(withCooldown(1)).inbound!.jwks.cooldownSeconds).toBe(1);
  });

  it('refuses a timeout or interval longer than a Node timer holds (Node would make it 1 ms), at its key path', () => {
    const max = 2_147_482; // floor((2^31 - 1) ms / 1000), less Node's 1 s keep-alive buffer
    const timers: [string, (v: number) => Record<string, unknown>][] = [
      ...['refreshIntervalSeconds', 'cooldownSeconds', 'timeoutSeconds', 'retryMinSeconds', 'retryMaxSeconds'].map(
        // maxStaleSeconds must outlast a refresh interval and four timeouts (see the next test): far above the longest timer.
        (k): [string, (v: number) => Record<string, unknown>] => [`inbound.jwks.${k}`, (v) => ({ inbound: { ...minimalInbound.inbound, jwks: { [k]: v, maxStaleSeconds: 10 * v } } })],
      ),
      ...['headersTimeoutSeconds', 'requestTimeoutSeconds', 'keepAliveTimeoutSeconds', 'upstreamTimeoutSeconds', 'upstreamConnectTimeoutSeconds', 'tunnelIdleTimeoutSeconds'].map(
        // headersTimeoutSeconds must also stay within requestTimeoutSeconds; 0 turns that one off.
        (k): [string, (v: number) => Record<string, unknown>] => [`limits.${k}`, (v) => ({ limits: { requestTimeoutSeconds: k === 'requestTimeoutSeconds' ? v : 0, [k]: v } })],
      ),
      ['lifecycle.drainTimeoutSeconds', (v) => ({ lifecycle: { drainTimeoutSeconds: v } })],
      ['outbound.tokenRequestTimeoutSeconds', (v) => ({ outbound: { tokenSource: { type: 'env', variable: 'T' }, tokenRequestTimeoutSeconds: v } })],
    ];
    for (const [path, doc] of timers) {
      expect(issuesOf(() => parseConfig({ ...minimalInbound, ...doc(max + 1) })), path).toEqual([
        `${path}: must be at most ${max} (about 24.8 days, the longest timer Node can set)`,
      ]);
      expect(() => parseConfig({ ...minimalInbound, ...doc(max) }), path).not.toThrow();
    }
  });

  it('refuses a jwks.maxStaleSeconds the keys would reach before the next refresh and one retry could succeed, naming both keys', () => {
    const withJwks = (jwks: Record<string, unknown>) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, jwks } });
    // The reviewer's pair: keys stale 3 s after each fetch, refreshed every 20 s, so 17 s of every 20 the sidecar answered 503.
    expect(issuesOf(() => parseConfig(withJwks({ refreshIntervalSeconds: 20, maxStaleSeconds: 3 })))).toEqual([
      'inbound.jwks.maxStaleSeconds: must be at least 41 (refreshIntervalSeconds 20 + retryMinSeconds 1 + 4 × timeoutSeconds 5): ' +
        'the keys must outlive the next refresh and one retry, each up to two requests (discovery, JWKS); shorter, they go stale ' +
        'before a refresh can succeed and every token gets 503 keys_unavailable while the IdP is healthy',
    ]);
    // Timeouts and the retry count: 20 + 1 + 4 × 5 = 41 is the least; 40.999 is too short.
    expect(parseConfig(withJwks({ refreshIntervalSeconds: 20, maxStaleSeconds: 41 })).inbound!.jwks.maxStaleSeconds).toBe(41);
    expect(issuesOf(() => parseConfig(withJwks({ refreshIntervalSeconds: 20, maxStaleSeconds: 40.999 })))[0]).toMatch(/^inbound\.jwks\.maxStaleSeconds: must be at least 41 /);
    expect(issuesOf(() => parseConfig(withJwks({ refreshIntervalSeconds: 20, maxStaleSeconds: 41, timeoutSeconds: 6 })))[0]).toMatch(/must be at least 45 /);
    // The first retry never waits longer than the refresh interval; fractions add up without float noise.
    expect(issuesOf(() => parseConfig(withJwks({ refreshIntervalSeconds: 0.1, retryMinSeconds: 5, timeoutSeconds: 0.1, maxStaleSeconds: 0.5 })))[0]).toMatch(
      /^inbound\.jwks\.maxStaleSeconds: must be at least 0\.6 \(refreshIntervalSeconds 0\.1 \+ refreshIntervalSeconds 0\.1 \(the first retry's delay\) \+ 4 × timeoutSeconds 0\.1\)/,
    );
    // A refresh interval longer than the default grace needs a longer grace too; the defaults are consistent.
    expect(issuesOf(() => parseConfig(withJwks({ refreshIntervalSeconds: 86_400 })))[0]).toMatch(/^inbound\.jwks\.maxStaleSeconds: must be at least 86421 /);
    expect(parseConfig(minimalInbound).inbound!.jwks).toMatchObject({ refreshIntervalSeconds: 300, maxStaleSeconds: 86_400 });
  });

  it('refuses identity header names that are reserved, the token header, or contain "_", at their key path', () => {
    const withForward = (forward: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
      ...minimalInbound,
      inbound: { ...minimalInbound.inbound, ...extra, forward },
    });
    const reserved = [
      'host',
      'Content-Length',
      'transfer-encoding',
      'Expect',
      'connection',
      'te',
      'trailer',
      'upgrade',
      'keep-alive',
      'http2-settings',
      'proxy-authorization',
      'Proxy-Sub',
      'cookie',
      'Authorization',
      'X-Forwarded-For',
      'x-forwarded-proto',
      'x-forwarded-host',
    ];
    for (const name of reserved) {
      for (const key of ['subjectHeader', 'issuerHeader', 'claimsHeader']) {
        expect(issuesOf(() => parseConfig(withForward({ [key]: name }))), `${key}: ${name}`).toEqual([
          `inbound.forward.${key}: "${name.toLowerCase()}" is reserved (HTTP framing, connection, credentials or the sidecar's own X-Forwarded-*); name identity headers e.g. x-peer-*`,
        ]);
      }
      expect(issuesOf(() => parseConfig(withForward({ claimHeaders: { [name]: 'env' } }))), `claimHeaders: ${name}`).toEqual([
        `inbound.forward.claimHeaders.${name}: "${name.toLowerCase()}" is reserved (HTTP framing, connection, credentials or the sidecar's own X-Forwarded-*); name identity headers e.g. x-peer-*`,
      ]);
    }
    const underscore = 'must be letters, digits and "-" only: CGI-style apps read "_" and other punctuation as "-" (HTTP_X_PEER_SUB), so another spelling would reach the app as the same header';
    expect(issuesOf(() => parseConfig(withForward({ subjectHeader: 'X_Peer_Sub', claimHeaders: { 'X-Peer_Env': 'env', 'x.peer.sub': 'email', 'x-ok': 'ok' } })))).toEqual([
      `inbound.forward.subjectHeader: ${underscore}`,
      `inbound.forward.claimHeaders.X-Peer_Env: ${underscore}`,
      `inbound.forward.claimHeaders.x.peer.sub: ${underscore}`,
    ]);
    const custom = { tokenHeader: 'X-Workload-Token' };
    expect(issuesOf(() => parseConfig(withForward({ issuerHeader: 'x-workload-token' }, custom)))).toEqual([
      'inbound.forward.issuerHeader: must not be the token header "x-workload-token" (inbound.tokenHeader)',
    ]);
    expect(issuesOf(() => parseConfig(withForward({ claimHeaders: { 'X-Workload-Token': 'sub' } }, custom)))).toEqual([
      'inbound.forward.claimHeaders.x-workload-token: must not be the token header "x-workload-token" (inbound.tokenHeader)',
    ]);
    // keepToken does not make it acceptable either: identity and credential never share a header.
    expect(issuesOf(() => parseConfig(withForward({ keepToken: true, subjectHeader: 'x-workload-token' }, custom)))).toHaveLength(1);
    const ok = parseConfig(withForward({ subjectHeader: 'X-Caller', claimHeaders: { 'X-Peer-Env': 'env' } }, custom)).inbound!.forward;
    expect(ok).toMatchObject({ subjectHeader: 'x-caller', claimHeaders: { 'x-peer-env': 'env' } });
  });

  it('refuses two identity values for one header name, whatever its letter case', () => {
    const withForward = (forward: Record<string, unknown>) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, forward } });
    expect(issuesOf(() => parseConfig(withForward({ claimHeaders: { 'X-Peer-Email': 'email', 'x-peer-email': 'upn', 'X-PEER-SUB': 'sub' } })))).toEqual([
      'inbound.forward.claimHeaders.x-peer-email: "x-peer-email" is already set by inbound.forward.claimHeaders.X-Peer-Email',
      'inbound.forward.claimHeaders.X-PEER-SUB: "x-peer-sub" is already set by inbound.forward.subjectHeader',
    ]);
    expect(issuesOf(() => parseConfig(withForward({ subjectHeader: 'X-Caller', claimsHeader: 'x-caller' })))).toEqual([
      'inbound.forward.claimsHeader: "x-caller" is already set by inbound.forward.subjectHeader',
    ]);
  });

  it('refuses a second entry for the same issuer (the last one silently won), compared exactly as a token\'s iss is', () => {
    const withIssuers = (issuers: unknown[]) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, issuers } });
    const issues = issuesOf(() =>
      parseConfig(
        withIssuers([
          { issuer: 'https://idp.example', audience: 'only-a' },
          { issuer: 'https://other.example' },
          { issuer: 'https://idp.example', audience: 'only-b', jwksUri: 'https://dead.example/jwks' },
          { issuer: 'https://idp.example' },
        ]),
      ),
    );
    const message = (i: number) => `inbound.issuers.${i}.issuer: "https://idp.example" is already trusted by inbound.issuers.0: one entry per issuer (a token's iss selects exactly one); give that entry every audience, as a list`;
    expect(issues).toEqual([message(2), message(3)]);
    // iss is matched exactly (no trailing-slash or case tolerance), so these are different issuers to a token, and to the schema.
    expect(parseConfig(withIssuers([{ issuer: 'https://idp.example' }, { issuer: 'https://idp.example/', jwksUri: 'https://idp.example/jwks' }, { issuer: 'https://IDP.example' }])).inbound!.issuers).toHaveLength(3);
  });

  it('refuses an http jwksUri for an https issuer (keys over cleartext)', () => {
    const withIssuer = (issuer: Record<string, unknown>) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, issuers: [{ issuer: 'https://idp.example' }, issuer] } });
    expect(issuesOf(() => parseConfig(withIssuer({ issuer: 'https://idp.example/realms/a', jwksUri: 'http://idp.example/realms/a/certs' })))).toEqual([
      'inbound.issuers.1.jwksUri: must be an https URL: the issuer is https, and keys fetched over http could be replaced on the way (http is allowed on loopback only: 127.0.0.1, [::1], localhost)',
    ]);
    // This host's loopback never crosses a network (a node-local agent or key mirror); a name that only starts so does.
    for (const jwksUri of ['http://127.0.0.1:8081/jwks', 'http://127.9.9.9/keys', 'http://[::1]:8081/jwks', 'http://localhost:8081/jwks', 'http://LOCALHOST/jwks']) {
      expect(parseConfig(withIssuer({ issuer: 'https://idp.example/l', jwksUri })).inbound!.issuers[1]!.jwksUri, jwksUri).toBe(jwksUri);
    }
    for (const jwksUri of ['http://127.0.0.1.evil.example/jwks', 'http://localhost.evil.example/jwks', 'http://10.0.0.1/jwks', 'http://[::2]/jwks', 'http://0.0.0.0/jwks']) {
      expect(issuesOf(() => parseConfig(withIssuer({ issuer: 'https://idp.example/l', jwksUri })))[0], jwksUri).toMatch(/^inbound\.issuers\.1\.jwksUri: must be an https URL/);
    }
    expect(issuesOf(() => parseConfig(withIssuer({ issuer: 'HTTPS://idp.example', jwksUri: 'HTTP://idp.example/certs' })))[0]).toMatch(/^inbound\.issuers\.1\.jwksUri: must be an https URL/);
    expect(parseConfig(withIssuer({ issuer: 'https://idp.example/b', jwksUri: 'https://keys.example/b' })).inbound!.issuers[1]!.jwksUri).toBe('https://keys.example/b');
    // A plain-http issuer (dev, in-cluster) may name either; https is never a downgrade.
    expect(parseConfig(withIssuer({ issuer: 'http://dev-issuer:9000', jwksUri: 'http://dev-issuer:9000/jwks' })).inbound!.issuers).toHaveLength(2);
    expect(parseConfig(withIssuer({ issuer: 'http://dev-issuer:9000', jwksUri: 'https://keys.example/jwks' })).inbound!.issuers).toHaveLength(2);
  });

  it('refuses two listeners on one port (run would stop with EADDRINUSE), a wildcard host clashing with any host and hosts compared as the addresses they bind; port 0 never clashes', () => {
    const config = (inbound: string, outbound: string, admin: string) => ({
      ...minimalInbound,
      inbound: { ...minimalInbound.inbound, listen: inbound },
      outbound: { listen: outbound, tokenSource: { type: 'env', variable: 'T' } },
      admin: { listen: admin },
    });
    expect(issuesOf(() => parseConfig(config('0.0.0.0:15006', '127.0.0.1:15006', '127.0.0.1:15020')))).toEqual(['outbound.listen: port 15006 is already taken by inbound.listen; each listener needs its own port']);
    expect(issuesOf(() => parseConfig(config('127.0.0.1:1', '127.0.0.1:2', ':2')))).toEqual(['admin.listen: port 2 is already taken by outbound.listen; each listener needs its own port']);
    expect(issuesOf(() => parseConfig(config('[::]:1', '127.0.0.1:3', '[::1]:1')))).toEqual(['admin.listen: port 1 is already taken by inbound.listen; each listener needs its own port']);
    expect(parseConfig(config('127.0.0.1:0', '127.0.0.1:0', '127.0.0.1:0')).admin.listen).toBe('127.0.0.1:0');
    expect(parseConfig(config('127.0.0.1:5', '127.0.0.2:5', '[::1]:5')).admin.listen).toBe('[::1]:5');
    // Hosts are compared as the addresses they bind, however they are spelt.
    const clash = (side: string, port: number, by: string) => [`${side}.listen: port ${port} is already taken by ${by}.listen; each listener needs its own port`];
    expect(issuesOf(() => parseConfig(config('localhost:15099', '127.0.0.1:15099', ':15020')))).toEqual(clash('outbound', 15099, 'inbound'));
    expect(issuesOf(() => parseConfig(config('[::1]:6', 'LOCALHOST.:6', ':15020')))).toEqual(clash('outbound', 6, 'inbound'));
    expect(issuesOf(() => parseConfig(config('127.1:7', '0x7f.0.0.1:7', ':15020')))).toEqual(clash('outbound', 7, 'inbound'));
    expect(issuesOf(() => parseConfig(config('[0:0:0:0:0:0:0:1]:8', '127.0.0.1:9', '[::1]:8')))).toEqual(clash('admin', 8, 'inbound'));
    expect(issuesOf(() => parseConfig(config('0:10', '10.0.0.1:10', ':15020')))).toEqual(clash('outbound', 10, 'inbound'));
    expect(issuesOf(() => parseConfig(config('[0::]:11', '127.0.0.1:12', '10.0.0.1:11')))).toEqual(clash('admin', 11, 'inbound'));
    expect(parseConfig(config('localhost:13', '127.0.0.2:13', 'sidecar.internal:13')).admin.listen).toBe('sidecar.internal:13');
  });

  it('gives a listen address of the wrong form one message, and refuses a bracketed host that is no IPv6 address (run failed with ENOTFOUND)', () => {
    const listen = (admin: string) => issuesOf(() => parseConfig({ ...minimalInbound, admin: { listen: admin } }));
    expect(listen('127.0.0.1:abc')).toEqual(['admin.listen: must be "host:port", e.g. "0.0.0.0:15006"']);
    expect(listen('[1.2.3.4]:0')).toEqual(['admin.listen: "[1.2.3.4]" is not an IPv6 address; write an IPv4 address or host name without brackets']);
    expect(listen('[:::]:99999')).toEqual(['admin.listen: "[:::]" is not an IPv6 address; write an IPv4 address or host name without brackets', 'admin.listen: port must be 0-65535']);
    for (const ok of ['[::1]:0', '[::ffff:127.0.0.1]:0', '127.1:0', ':0', 'localhost:0']) expect(parseConfig({ ...minimalInbound, admin: { listen: ok } }).admin.listen).toBe(ok);
  });

  it('caps inbound.cache.maxEntries at a million: the cache sets aside room for all of them at start (1e8 took 2.8 GB, 2^32 stopped run with "Invalid array length")', () => {
    const cache = (maxEntries: number) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, cache: { maxEntries } } });
    expect(parseConfig(cache(1_000_000)).inbound!.cache.maxEntries).toBe(1_000_000);
    expect(issuesOf(() => parseConfig(cache(2 ** 32)))).toEqual(['inbound.cache.maxEntries: must be at most 1000000: the cache sets aside room for every entry when it starts (about 16 MB for a million)']);
  });

  it('weighs the cache in bytes too: 32 MiB by default, at least 64 KiB', () => {
    const cache = (c: Record<string, unknown>) => ({ ...minimalInbound, inbound: { ...minimalInbound.inbound, cache: c } });
    expect(parseConfig(cache({})).inbound!.cache).toEqual({ maxEntries: 10_000, maxBytes: 32 * 1024 * 1024 });
    expect(parseConfig(cache({ maxBytes: 65_536 })).inbound!.cache.maxBytes).toBe(65_536);
    expect(issuesOf(() => parseConfig(cache({ maxBytes: 1000 })))).toEqual(['inbound.cache.maxBytes: must be at least 65536 (64 KiB): a budget smaller than a few identities caches nothing']);
    expect(issuesOf(() => parseConfig(cache({ maxBytes: 1.5e6 + 0.5 })))).toHaveLength(1);
  });

  it('needs inbound or outbound', () => {
    expect(issuesOf(() => parseConfig({ service: 'a' }))).toEqual(['inbound: configure `inbound`, `outbound` or both']);
  });

  it('never throws anything but a ConfigError for arbitrary documents', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (doc) => {
        try {
          parseConfig(doc);
        } catch (err) {
          expect(err).toBeInstanceOf(ConfigError);
          for (const i of (err as ConfigError).issues) expect(typeof i.message).toBe('string');
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('loading files', () => {
  it('a config path that is a directory or missing is one plain-words reason, as for every file the config names', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-dir-'));
    expect(() => loadConfig([dir], {})).toThrow(new UsageError(`cannot read config file ${dir}: is a directory`));
    expect(() => loadConfig([join(dir, 'none.yaml')], {})).toThrow(new UsageError(`cannot read config file ${join(dir, 'none.yaml')}: no such file`));
    symlinkSync('loop-b', join(dir, 'loop-a'));
    symlinkSync('loop-a', join(dir, 'loop-b'));
    expect(() => loadConfig([join(dir, 'loop-a')], {})).toThrow(new UsageError(`cannot read config file ${join(dir, 'loop-a')}: too many symbolic links (a symlink loop?)`));
    const file = tmpFile('f.yaml', 'service: a\n');
    expect(() => loadConfig([join(file, 'x.yaml')], {})).toThrow(new UsageError(`cannot read config file ${join(file, 'x.yaml')}: a part of the path is not a directory`));
    // Any other system error: its words and its code, not the bare code.
    const long = join(dir, 'x'.repeat(300));
    expect(() => loadConfig([long], {})).toThrow(new UsageError(`cannot read config file ${long}: name too long (ENAMETOOLONG)`));
  });

  it('interpolates ${VAR} and ${VAR:-default} after parsing, so values cannot inject YAML', () => {
    const p = tmpFile(
      'c.yaml',
      'service: ${SVC}\ninbound:\n  target: "http://127.0.0.1:${PORT:-8080}"\n  audience: ${AUD}\n  issuers: [{ issuer: "https://idp" }]\n',
    );
    const c = loadConfig([p], { SVC: 'orders', AUD: 'x\ninbound: evil' });
    expect(c.service).toBe('orders');
    expect(c.inbound!.target).toBe('http://127.0.0.1:8080');
    expect(c.inbound!.audience).toBe('x\ninbound: evil');
  });

  it('refuses limits.maxConnections at or under maxTunnels: tunnels alone would take every connection', () => {
    const withLimits = (limits: Record<string, unknown>) => ({ ...minimalInbound, limits });
    expect(issuesOf(() => parseConfig(withLimits({ maxConnections: 1024 })))).toEqual([
      'limits.maxConnections: must be more than limits.maxTunnels: each tunnel holds one of these connections, and tunnels alone would take them all',
    ]);
    expect(parseConfig(withLimits({ maxConnections: 10, maxTunnels: 9 })).limits.maxConnections).toBe(10);
    expect(parseConfig(withLimits({})).limits.maxConnections).toBeUndefined();
  });

  it('a whole-value placeholder fills a number or a boolean where the schema wants one, and stays text where it wants text', () => {
    const p = tmpFile(
      'typed.yaml',
      [
        'service: ${SVC}',
        'inbound:',
        '  target: http://127.0.0.1:8080',
        '  audience: ${AUD}',
        '  issuers: [{ issuer: "https://idp" }]',
        '  clockSkewSeconds: ${SKEW:-30}',
        '  forward: { keepToken: "${KEEP:-false}" }',
        '  rules: [{ match: { path: /** }, allow: [{ claims: { level: "${LEVEL}" } }] }]',
        'lifecycle:',
        '  drainTimeoutSeconds: ${DRAIN}',
        '',
      ].join('\n'),
    );
    const c = loadConfig([p], { SVC: '12345', AUD: '42', SKEW: '10', KEEP: 'true', LEVEL: '3', DRAIN: '2.5' });
    expect(c.inbound!.clockSkewSeconds).toBe(10);
    expect(c.inbound!.forward.keepToken).toBe(true);
    expect(c.lifecycle.drainTimeoutSeconds).toBe(2.5);
    // Where text is wanted (a name, an audience, a claim value that may be either), the digits stay text.
    expect(c.service).toBe('12345');
    expect(c.inbound!.audience).toBe('42');
    expect(c.inbound!.rules![0]!.allow![0]!.claims).toEqual({ level: '3' });
    // Defaults are read alike; text that is no number, or a placeholder inside other text, is still refused.
    expect(loadConfig([p], { SVC: 's', AUD: 'a', LEVEL: 'x', DRAIN: '20' }).inbound!.clockSkewSeconds).toBe(30);
    expect(issuesOf(() => loadConfig([p], { SVC: 's', AUD: 'a', LEVEL: 'x', DRAIN: '0x14', KEEP: 'yes' }))).toEqual([
      'inbound.forward.keepToken: Invalid input: expected boolean, received string (line 7)',
      'lifecycle.drainTimeoutSeconds: Invalid input: expected number, received string (line 10)',
    ]);
    const inText = tmpFile('in-text.yaml', 'service: s\ninbound:\n  target: http://127.0.0.1:8080\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n  clockSkewSeconds: "1${SKEW}"\n');
    expect(issuesOf(() => loadConfig([inText], { SKEW: '0' }))).toEqual(['inbound.clockSkewSeconds: Invalid input: expected number, received string (line 6)']);
    // Beside another variable's problem, typed values are not reported as text.
    expect(issuesOf(() => loadConfig([p], { SVC: 's', LEVEL: 'x', DRAIN: '20', SKEW: '10', KEEP: 'true' }))).toEqual([
      'inbound.audience: environment variable AUD is not set (use ${AUD:-default} for a default) (line 4)',
    ]);
    // A later layer that sets the key itself decides: its quoted text is not read as a number.
    const over = tmpFile('over.yaml', 'inbound:\n  clockSkewSeconds: "15"\n');
    expect(issuesOf(() => loadConfig([p, over], { SVC: 's', AUD: 'a', LEVEL: 'x', DRAIN: '20', SKEW: '10' }))[0]).toMatch(/^inbound\.clockSkewSeconds: Invalid input: expected number, received string/);
  });

  it('drops line breaks at the end of a variable, as from a secret file (`abc\\n` was sent as the client secret), and only there', () => {
    const p = tmpFile('nl.yaml', 'service: "${SVC}"\noutbound:\n  tokenSource: { type: client_credentials, tokenEndpoint: "https://idp/t", clientId: a, clientSecret: "${SEC}" }\n  routes: []\n');
    const c = loadConfig([p], { SVC: 'orders\r\n', SEC: 'ab\nc\n\n' });
    expect(c.service).toBe('orders');
    expect((c.outbound!.tokenSource as { clientSecret: string }).clientSecret).toBe('ab\nc');
    expect(issuesOf(() => loadConfig([p], { SVC: 'orders', SEC: '\n' }))[0]).toMatch(/^outbound\.tokenSource\.clientSecret: environment variable SEC is set but empty/);
  });

  it('reports an unset variable with its key path, and keeps $${VAR} literal', () => {
    const p = tmpFile('c.yaml', 'service: "$${LITERAL}"\ninbound:\n  target: ${MISSING}\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n');
    expect(issuesOf(() => loadConfig([p], {}))).toEqual(['inbound.target: environment variable MISSING is not set (use ${MISSING:-default} for a default) (line 3)']);
    expect(issuesOf(() => loadConfig([p], { MISSING: '' }))).toEqual(['inbound.target: environment variable MISSING is set but empty, which counts as unset (use ${MISSING:-default} for a default) (line 3)']);
  });

  it('names every problem at once: the rest of the config beside an unset variable, and a YAML error in each of two files', () => {
    const p = tmpFile(
      'mixed.yaml',
      'service: ${NOPE}\nsevrice: typo\ninbound:\n  target: http://127.0.0.1:1\n  audience: ${ALSO_NOPE}\n  issuers: [{ issuer: "https://idp" }]\n  clockSkewSeconds: "30"\n',
    );
    const issues = issuesOf(() => loadConfig([p], {}));
    expect(issues).toEqual([
      'service: environment variable NOPE is not set (use ${NOPE:-default} for a default) (line 1)',
      'inbound.audience: environment variable ALSO_NOPE is not set (use ${ALSO_NOPE:-default} for a default) (line 5)',
      expect.stringMatching(/^inbound\.clockSkewSeconds: .* \(line 7\)$/),
      expect.stringMatching(/^sevrice: unknown key \(did you mean service\?\) \(line 2\)$/),
    ]);
    // The keys whose variables are unset are not reported a second time as a missing or wrong value.
    expect(issues.filter((i) => i.startsWith('service:') || i.startsWith('inbound.audience:'))).toHaveLength(2);
    // Nor as a missing value of a check across keys: the issuer is set, by a variable that is not.
    const source = tmpFile('source.yaml', 'service: a\noutbound:\n  tokenSource: { type: client_credentials, issuer: "${ISSUER}", clientId: a, clientSecret: s }\n  routes: []\n');
    expect(issuesOf(() => loadConfig([source], {}))).toEqual(['outbound.tokenSource.issuer: environment variable ISSUER is not set (use ${ISSUER:-default} for a default) (line 3)']);
    const broken = tmpFile('broken.yaml', 'service: [unclosed\n');
    const duplicate = tmpFile('dup.yaml', 'service: a\nservice: b\n');
    const both = issuesOf(() => loadConfig([broken, duplicate], {}));
    expect(both).toHaveLength(2);
    expect(both[0]).toContain('broken.yaml');
    expect(both[1]).toContain('dup.yaml');
  });

  it('refuses a placeholder inside a default rather than leave it behind as literal text, whether or not the variable is set', () => {
    const p = tmpFile('nested.yaml', 'service: "${SVC:-${FALLBACK_SVC}}"\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n');
    const message = 'service: the default of ${SVC:-…} holds another placeholder; a default is literal text (write $${ for a literal ${) (line 1)';
    expect(issuesOf(() => loadConfig([p], { FALLBACK_SVC: 'orders' }))).toEqual([message]);
    expect(issuesOf(() => loadConfig([p], { SVC: 'orders', FALLBACK_SVC: 'orders' }))).toEqual([message]);
  });

  it('keeps a literal NUL next to ${VAR} and $${VAR} (no placeholder character stands in for the escape)', () => {
    const p = tmpFile('nul.json', JSON.stringify({ ...minimalInbound, service: 'a\u0000b-${SVC}-$${LIT}-\u0000' }));
    expect(loadConfig([p], { SVC: 'orders' }).service).toBe('a\u0000b-orders-${LIT}-\u0000');
    const q = tmpFile('esc.json', JSON.stringify({ ...minimalInbound, service: '$$${SVC}|$${X:-y}|${UNSET:-$${Z}}|$${' }));
    expect(loadConfig([q], { SVC: 'orders' }).service).toBe('$${SVC}|${X:-y}|${Z}|${');
  });

  it('deep-merges overlays in order; arrays replace; null removes', () => {
    const base = tmpFile('base.yaml', 'service: orders\ninbound:\n  target: http://127.0.0.1:1\n  audience: [a, b]\n  issuers: [{ issuer: "https://one" }]\n  clockSkewSeconds: 10\noutbound:\n  tokenSource: { type: env, variable: T }\n');
    const overlay = tmpFile('ns.json', JSON.stringify({ inbound: { audience: ['c'], clockSkewSeconds: 5 }, outbound: null }));
    const c = loadConfig([base, overlay], {});
    expect(c.inbound!.audience).toEqual(['c']);
    expect(c.inbound!.clockSkewSeconds).toBe(5);
    expect(c.inbound!.target).toBe('http://127.0.0.1:1');
    expect(c.outbound).toBeUndefined();
    expect(deepMerge([{ a: { b: 1, c: [1, 2] } }, { a: { c: [3] } }])).toEqual({ a: { b: 1, c: [3] } });
    // Inside a section no earlier layer has, null removes too: the default applies (it used to reach the schema as null).
    const nulls = tmpFile('nulls.yaml', 'log: { level: ~ }\ninbound:\n  jwks: { timeoutSeconds: null }\n');
    const d = loadConfig([base, nulls], {});
    expect([d.log.level, d.inbound!.jwks.timeoutSeconds]).toEqual([DEFAULTS.log.level, DEFAULTS.inbound.jwks.timeoutSeconds]);
    expect(deepMerge([{ a: 1 }, { b: { c: null, d: { e: null, f: 2 } } }])).toEqual({ a: 1, b: { d: { f: 2 } } });
  });

  it('gives a clear error for missing files, YAML syntax errors, duplicate keys and non-mapping documents', () => {
    expect(() => loadConfig(['/nonexistent/x.yaml'])).toThrow(new UsageError('cannot read config file /nonexistent/x.yaml: no such file'));
    const bad = tmpFile('bad.yaml', 'service: [unclosed\n');
    expect(issuesOf(() => loadConfig([bad]))[0]).toMatch(/bad\.yaml: .*line/);
    const dup = tmpFile('dup.yaml', 'service: a\nservice: b\n');
    expect(issuesOf(() => loadConfig([dup]))[0]).toMatch(/dup\.yaml: .*(unique|duplicate)/i);
    // In every map, block or flow, each with its line, compared as the config reads keys: as text, through aliases.
    const nested = tmpFile('nested.yaml', "service: a\nlog: {level: info, level: warn}\nservice: b\nlabels: {1: a, '1': b}\nx: {&t team: core, *t : ops}\n");
    expect(issuesOf(() => loadConfig([nested]))).toEqual([2, 3, 4, 5].map((line) => `${nested}: Map keys must be unique (line ${line})`));
    const list = tmpFile('list.yaml', '- a\n- b\n');
    expect(issuesOf(() => loadConfig([list]))).toEqual([`${list}: the top level must be a mapping of keys`]);
  });

  it('never quotes the file\'s text in a YAML error, so a secret written inline is not printed (or logged on a reload)', () => {
    const secret = 'S3cr3tXYZ';
    // `!`: to YAML a tag, whichever way it fails (unknown, no suffix, a verbatim `!<...>`).
    // `&`: an anchor on what follows, or on nothing (the secret became "rest", or null, and validated).
    for (const value of [`*${secret}`, `|2- ${secret}`, `>${secret}`, `{a: b}}${secret}`, `"\\U${secret}"`, `!${secret}`, `!a!${secret}`, `!${secret}!`, `!<${secret}>`, `&${secret} rest`, `&${secret}`]) {
      const p = tmpFile('s.yaml', `service: a\noutbound:\n  tokenSource:\n    clientSecret: ${value}\n`);
      const issues = issuesOf(() => loadConfig([p], {}));
      expect(issues.length).toBeGreaterThan(0);
      for (const issue of issues) {
        expect(issue).not.toContain(secret.slice(0, 4));
        expect(issue).toMatch(/\(line 4\)(:|$)/);
      }
    }
    expect(issuesOf(() => loadConfig([tmpFile('alias.yaml', `service: *${secret}\n`)], {}))[0]).toMatch(/names no anchor .*\(line 1\)$/);
    const anchor = tmpFile('anchor.yaml', `service: a\noutbound:\n  tokenSource: {clientSecret: &${secret} rest}\n`);
    expect(issuesOf(() => loadConfig([anchor], {}))).toEqual([`${anchor}: an anchor (&name) that no alias (*name) uses (line 3): quote a value that starts with &`]);
    // An anchor an alias uses is YAML's way to share a block, and fine.
    expect(loadConfig([tmpFile('shared.yaml', 'service: &name orders\nlog: {level: info}\nadmin: {listen: "127.0.0.1:0"}\ninbound: {target: "http://127.0.0.1:1", audience: *name, issuers: [{issuer: "https://i"}]}\n')], {}).inbound!.audience).toBe('orders');
  });

  it('says a document nested thousands of levels deep is that, not "Maximum call stack size exceeded"', () => {
    const p = tmpFile('deep.yaml', `service: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`);
    expect(issuesOf(() => loadConfig([p], {}))).toEqual([`${p}: nested too deeply (thousands of levels of [ or {) (line 1)`]);
  });

  it('takes only UTF-8: a Latin-1 byte or UTF-16 is refused with its line, not read as U+FFFD; a UTF-8 byte order mark is fine', () => {
    const bytesFile = (name: string, bytes: number[] | Buffer) => {
      const p = tmpFile(name, '');
      writeFileSync(p, Buffer.from(bytes));
      return p;
    };
    const latin1 = bytesFile('latin1.yaml', Buffer.concat([Buffer.from('service: a\noutbound:\n  routes: []\ninbound:\n  audience: caf'), Buffer.from([0xe9]), Buffer.from('\n')]));
    expect(issuesOf(() => loadConfig([latin1], {}))).toEqual([`${latin1}: not UTF-8 text (line 5); save it as UTF-8`]);
    const utf16 = bytesFile('utf16.yaml', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('service: a\n', 'utf16le')]));
    expect(issuesOf(() => loadConfig([utf16], {}))).toEqual([`${utf16}: UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8`]);
    const bom = bytesFile('bom.yaml', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('service: caf\u00e9\noutbound:\n  routes: []\n')]));
    expect(loadConfig([bom], {}).service).toBe('caf\u00e9');
  });

  it('refuses a YAML tag it does not know rather than take the text after it (`!env NAME` would make NAME the secret)', () => {
    const p = tmpFile('tags.yaml', 'service: !!js/function f\noutbound:\n  tokenSource: { type: client_credentials, tokenEndpoint: "http://idp/t", clientId: a, clientSecret: !env SECRET }\n');
    expect(issuesOf(() => loadConfig([p], {}))).toEqual([
      `${p}: a value that starts with ! is a YAML tag, which a config cannot use (line 1): quote the value, or use \${VAR} for the environment`,
      `${p}: a value that starts with ! is a YAML tag, which a config cannot use (line 3): quote the value, or use \${VAR} for the environment`,
    ]);
    // The standard tags still work.
    const std = tmpFile('std.yaml', 'service: !!str a\noutbound: !!map { tokenSource: { type: env, variable: T }, routes: !!seq [] }\n');
    expect(loadConfig([std], {}).service).toBe('a');
  });

  it("refuses YAML 1.1's !!omap, !!set, !!pairs, !!binary and !!timestamp, which became a Map or a Set the schema read as a section with no keys", () => {
    // A claimHeaders written as an ordered map validated as {} and forwarded no header; a lifecycle one fell back to
    // every default.
    const head = 'service: a\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n';
    const tag = (line: number) => `a value that starts with ! is a YAML tag, which a config cannot use (line ${line}): quote the value, or use \${VAR} for the environment`;
    for (const [tail, line] of [
      ['  forward:\n    claimHeaders: !!omap\n      - x-peer-client: client_id\n', 7],
      ['lifecycle: !!omap\n  - watchConfig: false\n', 6],
      ['  forward:\n    claimHeaders: !!set\n      ? x-peer-client\n', 7],
      ['lifecycle: !!pairs\n  - watchConfig: false\n', 6],
      ['  typ: !!binary YXQrand0\n', 6],
      ['log: { level: !!timestamp 2001-12-14 }\n', 6],
    ] as const) {
      const p = tmpFile('tagged.yaml', head + tail);
      expect(issuesOf(() => loadConfig([p], {})), tail).toEqual([`${p}: ${tag(line)}`]);
    }
    // `%YAML 1.1` would bring them back as YAML 1.1's own types (and yes/no as booleans): the directive is refused.
    const v11 = tmpFile('v11.yaml', `%YAML 1.1\n---\n${head}  forward:\n    claimHeaders: !!omap\n      - x-peer-client: client_id\n`);
    expect(issuesOf(() => loadConfig([v11], {}))).toEqual([`${v11}: a %YAML 1.1 directive: a config is read as YAML 1.2 (its only schema here); remove the directive`]);
    expect(loadConfig([tmpFile('v12.yaml', `%YAML 1.2\n---\n${head}`)], {}).service).toBe('a');
  });

  it('refuses a key that is a list, a map or empty, with its line: no config key is one (a list key printed a warning of Node on stderr)', () => {
    const cases: [string, string][] = [
      ['service: a\n? [a]\n: b\n', 'a key that is a list or a map, which no config key is (line 2)'],
      ['service: a\nlog: { ? { x: 1 } : 1 }\n', 'a key that is a list or a map, which no config key is (line 2)'],
      ['service: a\n"": 1\n', 'an empty key, which no config key is (line 2)'],
      ['service: a\nlog:\n  ? ~\n  : 1\n', 'an empty key, which no config key is (line 3)'],
    ];
    for (const [text, issue] of cases) {
      const p = tmpFile('keys.yaml', text);
      expect(issuesOf(() => loadConfig([p], {})), text).toEqual([`${p}: ${issue}`]);
    }
  });

  it('says a placeholder in a flow collection must be quoted, after the parser\'s own messages about its braces', () => {
    const p = tmpFile('flow.yaml', 'service: a\noutbound:\n  routes: []\nlog: { level: ${LEVEL:-info} }\n');
    const issues = issuesOf(() => loadConfig([p], {}));
    expect(issues[0]).toBe(`${p}: a \${VAR} inside { } or [ ] must be quoted ("\${VAR}"), or its braces are read as YAML (line 4)`);
    const quoted = tmpFile('quoted.yaml', 'service: a\noutbound: { routes: [], tokenSource: { type: env, variable: T } }\nlog: { level: "${LEVEL:-debug}" }\n');
    expect(loadConfig([quoted], {}).log.level).toBe('debug');
    expect(issuesOf(() => loadConfig([tmpFile('plain.yaml', 'service: [a\n')], {})).join()).not.toContain('${VAR}');
  });

  it('takes config paths from flags, else OIDC_SIDECAR_CONFIG, else fails clearly', () => {
    expect(resolveConfigPaths(['a.yaml', 'b.yaml'], { OIDC_SIDECAR_CONFIG: 'x' })).toEqual(['a.yaml', 'b.yaml']);
    expect(resolveConfigPaths(undefined, { OIDC_SIDECAR_CONFIG: 'a.yaml, b.yaml' })).toEqual(['a.yaml', 'b.yaml']);
    expect(() => resolveConfigPaths([], {})).toThrow(UsageError);
    // A flag's value is one path, commas and all: the error says how to give several.
    const [a, b] = [tmpFile('a.yaml', 'service: a\n'), tmpFile('b.yaml', 'service: b\n')];
    expect(() => loadConfig(resolveConfigPaths([`${a},${b}`], {}), {})).toThrow(
      new UsageError(`cannot read config file ${a},${b}: no such file (give each file its own --config; only OIDC_SIDECAR_CONFIG is a comma-separated list)`),
    );
  });
});

describe('redaction', () => {
  it('replaces client secrets wherever they are and leaves the rest', () => {
    const c = parseConfig({
      service: 'a',
      outbound: {
        tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp/token', clientId: 'a', clientSecret: 's3cr3t' },
        routes: [{ host: 'b', audience: 'b', tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp/token', clientId: 'b', clientSecret: 'other' } }],
      },
    });
    const text = JSON.stringify(redactConfig(c));
    expect(text).not.toContain('s3cr3t');
    expect(text).not.toContain('other');
    expect(text).toContain('"clientId":"a"');
    expect(text.match(/\[redacted\]/g)).toHaveLength(2);
  });

  it('also redacts secret-looking params and the password and secret-looking query values of any URL', () => {
    const c = parseConfig({
      service: 'a',
      outbound: {
        tokenSource: {
          type: 'client_credentials',
          tokenEndpoint: 'https://idp.example.com/token?api_key=QUERYSECRET4&tenant=t1',
          clientId: 'a',
          clientSecret: 'SUPERSECRET1',
          // A configured URL may hold no password (schema.ts), but a free-form param may be a URL that does.
          params: {
            client_secret: 'PARAMSECRET2',
            api_key: 'PARAMSECRET2',
            'subscription-key': 'PARAMSECRET2',
            'Ocp-Apim-Subscription-Key': 'PARAMSECRET2',
            passphrase: 'PARAMSECRET2',
            code: 'PARAMSECRET2',
            resource: 'https://api.example',
            upstream: 'https://client:URLSECRET3@up.example/x',
            callback: 'https://app.example/cb?x-functions-key=QUERYSECRET4#access_token=FRAGSECRET5&state=s1',
            // No secrets: printed as written, or validate's output would not load again.
            public_key: 'pk1',
            idempotency_key: 'ik1',
            monkey: 'm1',
            portal: 'https://app.example/#tenant',
          },
        },
        routes: [{ host: 'b', audience: 'b' }],
      },
    });
    const printed = redactConfig(c);
    const text = JSON.stringify(printed);
    for (const secret of ['SUPERSECRET1', 'PARAMSECRET2', 'URLSECRET3', 'QUERYSECRET4', 'FRAGSECRET5']) expect(text).not.toContain(secret);
    const source = printed.outbound!.tokenSource as Record<string, unknown>;
    expect(source.tokenEndpoint).toBe('https://idp.example.com/token?api_key=[redacted]&tenant=t1');
    expect(source.params).toEqual({
      client_secret: '[redacted]',
      api_key: '[redacted]',
      'subscription-key': '[redacted]',
      'Ocp-Apim-Subscription-Key': '[redacted]',
      passphrase: '[redacted]',
      code: '[redacted]',
      resource: 'https://api.example',
      upstream: 'https://client:[redacted]@up.example/x',
      callback: 'https://app.example/cb?x-functions-key=[redacted]#access_token=[redacted]&state=s1',
      public_key: 'pk1',
      idempotency_key: 'ik1',
      monkey: 'm1',
      portal: 'https://app.example/#tenant',
    });
  });

  it('redacts params and query values named for an Authorization header or a signature (they were printed as given)', () => {
    const c = parseConfig({
      service: 'a',
      outbound: {
        tokenSource: {
          type: 'client_credentials',
          tokenEndpoint: 'https://idp.example.com/token?sig=QUERYSIG1&sv=2024',
          clientId: 'a',
          clientSecret: 's',
          params: { authorization: 'Basic UEFSQU1BVVRI', auth: 'PARAMAUTH2', signature: 'PARAMSIG3', audience: 'b' },
        },
        routes: [{ host: 'b', audience: 'b' }],
      },
    });
    const source = redactConfig(c).outbound!.tokenSource as Record<string, unknown>;
    expect(source.tokenEndpoint).toBe('https://idp.example.com/token?sig=[redacted]&sv=2024');
    expect(source.params).toEqual({ authorization: '[redacted]', auth: '[redacted]', signature: '[redacted]', audience: 'b' });
  });
});

describe('validate output fed back as a config', () => {
  it('is refused where it holds [redacted], naming each place, rather than sending the IdP the word as a secret', () => {
    const c = parseConfig({
      service: 'a',
      outbound: {
        tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example.com/token?sig=QUERYSIG', clientId: 'a', clientSecret: 's3cr3t' },
        routes: [{ host: 'b', audience: 'b' }],
      },
    });
    const printed = JSON.parse(JSON.stringify(redactConfig(c)));
    expect(issuesOf(() => parseConfig(printed))).toEqual([
      'outbound.tokenSource.tokenEndpoint: holds [redacted], which validate prints in place of a secret: put the secret itself here, or a ${VARIABLE} placeholder',
      'outbound.tokenSource.clientSecret: holds [redacted], which validate prints in place of a secret: put the secret itself here, or a ${VARIABLE} placeholder',
    ]);
    // With the secrets put back, the same document is a config again.
    printed.outbound.tokenSource.clientSecret = 's3cr3t';
    printed.outbound.tokenSource.tokenEndpoint = 'https://idp.example.com/token?sig=QUERYSIG';
    expect(parseConfig(printed).outbound!.tokenSource).toMatchObject({ clientSecret: 's3cr3t' });
  });
});

describe('what a layer may say', () => {
  it('refuses a ${ that starts no placeholder (shell syntax, typos) and placeholders in keys, rather than keep them as text', () => {
    const bad = tmpFile('p.yaml', 'service: "${1X}|${X-y}|${X:=y}|${X"\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n  rules: [{ match: { path: /** }, allow: [{ claims: { "${CLAIMKEY}": v } }] }]\n');
    const issues = issuesOf(() => loadConfig([bad], { CLAIMKEY: 'team', X: 'x' }));
    expect(issues.filter((i) => i.startsWith('service: a ${ that starts no placeholder'))).toHaveLength(4);
    expect(issues).toContain('inbound.rules.0.allow.0.claims.${CLAIMKEY}: placeholders fill values only, not keys (line 6)');
  });

  it('with several layers, names the file and line that set each key a problem is at (the last that did); one file alone is not named', () => {
    const base = tmpFile('base.yaml', 'service: payments\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  clockSkewSeconds: -1\n  issuers: [{ issuer: "https://idp" }]\n');
    const overlay = tmpFile('ns.yaml', 'inbound:\n  rulez: []\n  issuers: [{ issuer: "https://idp", algorithms: [HS256] }]\noutbound:\n  routes: [{ host: b }]\n');
    const issues = issuesOf(() => loadConfig([base, overlay], {}));
    expect(issues).toHaveLength(4);
    expect(issues[0]).toMatch(/^inbound\.issuers\.0\.algorithms\.0: /);
    expect(issues[0]!.endsWith(` (in ${overlay}, line 3)`)).toBe(true);
    expect(issues[1]).toBe(`inbound.clockSkewSeconds: Too small: expected number to be >=0 (in ${base}, line 5)`);
    expect(issues[2]).toBe(`inbound.rulez: unknown key (did you mean rules?) (in ${overlay}, line 2)`);
    // A key no layer set: the route that lacks it, in the file whose list won.
    expect(issues[3]).toBe(`outbound.routes.0.audience: required (in ${overlay}, line 5)`);
    expect(issuesOf(() => loadConfig([overlay], {})).some((i) => i.includes(overlay))).toBe(false);
  });

  it('names the overlay whose list replaced the base\'s, not the base line of a key the replaced list had', () => {
    const base = tmpFile('base.yaml', 'service: orders\noutbound:\n  tokenSource: { type: env, variable: TOK }\n  routes:\n    - host: payments\n      audience: payments\n');
    const overlay = tmpFile('ns.yaml', 'outbound:\n  routes:\n    - host: billing\n');
    // The base's routes.0.audience (line 6) is gone with its list: the route that lacks one is the overlay's.
    expect(issuesOf(() => loadConfig([base, overlay], {}))).toEqual([`outbound.routes.0.audience: required (in ${overlay}, line 3)`]);
  });

  it('says on which line of the file each problem is: the key itself, or the block that lacks a required one', () => {
    const p = tmpFile(
      'lines.yaml',
      [
        'service: payments',
        'inbound:',
        '  target: http://127.0.0.1:1',
        '  audience: a',
        '  issuers:',
        '    - issuer: "https://idp"',
        '      algorithms: [HS256]',
        '  rules:',
        '    - match: { path: /admin/** }',
        '      allow:',
        '        - claims:',
        '            "https://example.com/groups": [admins]',
        '            team: { nested: map }',
        'outbound:',
        '  listen: 127.0.0.1:15001',
        '  tokenSource: { type: client_credentials, tokenEndpoint: "https://idp/token", clientId: c, clientSecret: s }',
        '  routes:',
        '    - host: orders',
        '      audience: orders',
        '    - host: payments',
        '      timeoutz: 3',
        '',
      ].join('\n'),
    );
    expect(issuesOf(() => loadConfig([p], {}))).toEqual([
      expect.stringMatching(/^inbound\.issuers\.0\.algorithms\.0: .* \(line 7\)$/),
      expect.stringMatching(/^inbound\.rules\.0\.allow\.0\.claims\.team: .* \(line 13\)$/),
      'outbound.routes.1.audience: required (line 20)',
      'outbound.routes.1.timeoutz: unknown key (line 21)',
    ]);
    // A claim name with dots in it is found as one key; JSON has lines too.
    const jsonText = JSON.stringify({ ...minimalInbound, inbound: { ...minimalInbound.inbound, rules: [{ match: { path: '/x' }, allow: [{ claims: { 'a.b': { x: 1 } } }] }] } }, null, 2);
    const claimLine = jsonText.split('\n').findIndex((l) => l.includes('"a.b"')) + 1;
    expect(issuesOf(() => loadConfig([tmpFile('lines.json', jsonText)], {}))).toEqual([
      `inbound.rules.0.allow.0.claims.a.b: expected a string, number or boolean, or a non-empty list of them, got a map (line ${claimLine})`,
    ]);
    // Nothing of the path is in the file: no line to give.
    expect(issuesOf(() => loadConfig([tmpFile('empty.yaml', 'inbound: { target: http://127.0.0.1:1, audience: a, issuers: [{ issuer: "https://idp" }] }\n')], {}))).toContainEqual(
      "service: required (this workload's name, used in logs and metrics)",
    );
  });

  it('refuses an overlay that removes inbound.rules (a bare `rules:`), which would let every valid token in', () => {
    const base = tmpFile('base.yaml', 'service: payments\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n  rules: [{ match: { path: /healthz }, public: true }]\n');
    const overlay = tmpFile('ns.yaml', 'inbound:\n  rules:\n');
    expect(issuesOf(() => loadConfig([base, overlay], {}))).toEqual([
      `inbound.rules: removes the rules of an earlier layer (null, or a bare \`rules:\`), which would let every valid token in; give the whole new list instead (in ${overlay}, line 2)`,
    ]);
    // Replacing the list is how an overlay changes the rules.
    const replaced = tmpFile('ns2.yaml', 'inbound:\n  rules: [{ match: { path: /** }, allow: [{ sub: orders }] }]\n');
    expect(loadConfig([base, replaced], {}).inbound!.rules).toHaveLength(1);
  });

  it('refuses an overlay that removes TLS or a token check with a bare key (its lines commented out); an explicit null removes it', () => {
    const base = tmpFile(
      'base.yaml',
      'service: payments\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n' +
        '  tls: { certFile: /etc/tls/tls.crt, keyFile: /etc/tls/tls.key }\n  requiredClaims: [tenant]\n  typ: at+jwt\n  maxTokenLifetimeSeconds: 3600\n',
    );
    const bare = tmpFile('ns.yaml', 'inbound:\n  tls:\n    # certFile: /etc/tls/ns.crt\n  requiredClaims:\n  typ:\n  maxTokenLifetimeSeconds:\n');
    const issues = issuesOf(() => loadConfig([base, bare], {}));
    expect(issues).toHaveLength(4);
    expect(issues[0]).toBe(
      `inbound.tls: a bare \`tls:\` (no value: its lines commented out?) removes what an earlier layer set, and the inbound listener would serve plain HTTP; write \`tls: null\` to remove it on purpose (in ${bare}, line 2)`,
    );
    expect(issues.slice(1).map((i) => i.split(':')[0])).toEqual(['inbound.requiredClaims', 'inbound.typ', 'inbound.maxTokenLifetimeSeconds']);
    // The other ways YAML has of giving a key no value.
    for (const overlay of ['inbound: { tls }\n', 'inbound:\n  ? tls\n', 'inbound:\n  <<: { tls: }\n']) {
      expect(issuesOf(() => loadConfig([base, tmpFile('form.yaml', overlay)], {}))[0], overlay).toMatch(/^inbound\.tls: a bare `tls:`/);
    }
    // A key no earlier layer set removes nothing: a template's bare keys are fine.
    const noTls = tmpFile('plain.yaml', 'service: payments\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n');
    expect(loadConfig([noTls, tmpFile('template.yaml', 'inbound:\n  tls:\n    # certFile: /etc/tls/ns.crt\n  typ:\n')], {}).inbound!.tls).toBeUndefined();
    for (const explicit of ['null', '~', '!!null']) {
      const removed = loadConfig([base, tmpFile('ns2.yaml', `inbound:\n  tls: ${explicit}\n  requiredClaims: ${explicit}\n  typ: ${explicit}\n  maxTokenLifetimeSeconds: ${explicit}\n`)], {}).inbound!;
      expect([removed.tls, removed.requiredClaims, removed.typ, removed.maxTokenLifetimeSeconds], explicit).toEqual([undefined, undefined, undefined, undefined]);
    }
  });

  it("refuses a null in the first file with its line, saying how a key comes to be null, not zod's 'received null'", () => {
    const head = 'service: payments\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers: [{ issuer: "https://idp" }]\n';
    const noValue = 'has no value (null, or nothing after the colon): give it one, or leave the key out';
    const cases: [string, string][] = [
      ['  tls:\n    # certFile: /etc/tls/tls.crt\n', `inbound.tls: ${noValue} (line 6)`],
      ['  tls: ~\n', `inbound.tls: ${noValue} (line 6)`],
      ['log: null\n', `log: ${noValue} (line 6)`],
      ['  rules:\n', 'inbound.rules: has no value (null, or nothing after the colon): give the list of rules (with no rules at all, any valid token passes) (line 6)'],
    ];
    for (const [tail, issue] of cases) expect(issuesOf(() => loadConfig([tmpFile('first.yaml', head + tail)], {})), tail).toEqual([issue]);
    // A key the schema requires cannot be left out, and a list item has no key.
    const required = 'service:\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers:\n    - issuer: "https://idp"\n    -\n';
    expect(issuesOf(() => loadConfig([tmpFile('required.yaml', required)], {}))).toEqual([
      'service: has no value (null, or nothing after the colon): give it one (it is required) (line 1)',
      'inbound.issuers.1: a list item with no value (a lone "-", or null): give it one, or remove the item (line 7)',
    ]);
    const route = 'outbound:\n  routes:\n    - host: orders\n      audience: orders\n      target: http://127.0.0.1:2\n      tokenSource:\n';
    expect(issuesOf(() => loadConfig([tmpFile('route.yaml', head + route)], {}))).toEqual([`outbound.routes.0.tokenSource: ${noValue} (line 11)`]);
    // With an overlay after it, the file named is the one whose null is left.
    const base = tmpFile('base.yaml', `${head}limits:\n`);
    expect(issuesOf(() => loadConfig([base, tmpFile('ns.yaml', 'log: { level: debug }\n')], {}))).toEqual([`limits: ${noValue} (in ${base}, line 6)`]);
    // An overlay that gives the section a value replaces the first file's null.
    expect(loadConfig([base, tmpFile('ns.yaml', 'limits: { requestTimeoutSeconds: 70 }\n')], {}).limits.requestTimeoutSeconds).toBe(70);
  });

  it('takes YAML merge keys (<<: *anchor) to share a block', () => {
    const p = tmpFile('merge.yaml', 'service: a\ninbound:\n  target: http://127.0.0.1:1\n  audience: a\n  issuers:\n    - &idp { issuer: "https://one", algorithms: [ES256] }\n    - <<: *idp\n      issuer: "https://two"\n');
    const issuers = loadConfig([p], {}).inbound!.issuers;
    expect(issuers.map((i) => [i.issuer, i.algorithms])).toEqual([['https://one', ['ES256']], ['https://two', ['ES256']]]);
  });

  it('refuses a config file over 1 MiB before parsing it', () => {
    const p = tmpFile('big.yaml', `service: a\n# ${'x'.repeat(1024 * 1024)}\n`);
    expect(issuesOf(() => loadConfig([p], {}))).toEqual([`${p}: larger than 1 MiB, which no sidecar config needs`]);
  });

  it('caps what it reads of a config path that is no regular file: /dev/zero is refused at 1 MiB instead of filling memory', () => {
    expect(issuesOf(() => loadConfig(['/dev/zero'], {}))).toEqual(['/dev/zero: larger than 1 MiB, which no sidecar config needs']);
  });
});

describe('the JSON Schema', () => {
  it('uses only the formats JSON Schema defines: a validator refuses to compile an unknown one (ajv: unknown format "starts_with")', () => {
    // JSON Schema 2020-12 §7.3.
    const defined = new Set(['date-time', 'date', 'time', 'duration', 'email', 'idn-email', 'hostname', 'idn-hostname', 'ipv4', 'ipv6', 'uri', 'uri-reference', 'iri', 'iri-reference', 'uuid', 'uri-template', 'json-pointer', 'relative-json-pointer', 'regex']);
    const formats: string[] = [];
    JSON.stringify(configJsonSchema(), (key, value: unknown) => {
      if (key === 'format' && typeof value === 'string') formats.push(value);
      return value;
    });
    expect(formats.filter((f) => !defined.has(f))).toEqual([]);
    expect(issuesOf(() => parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, rules: [{ match: { path: 'x' }, public: true }] } }))).toEqual(['inbound.rules.0.match.path: must start with "/"']);
  });

  it('shows an editor the default of every scalar the loader fills in, as the loader fills it', () => {
    type Node = { properties?: Record<string, Node>; items?: Node; default?: unknown };
    const input = { ...minimalInbound, outbound: { tokenSource: { type: 'env', variable: 'T' }, routes: [{ host: 'b', audience: 'b' }] } };
    const config = parseConfig(input) as unknown as Record<string, unknown>;
    const missing: string[] = [];
    const compare = (value: unknown, given: unknown, schema: Node | undefined, path: string): void => {
      if (Array.isArray(value)) return value.forEach((item, i) => compare(item, (given as unknown[] | undefined)?.[i], schema?.items, `${path}${i}.`));
      if (typeof value !== 'object' || value === null || !schema?.properties) return;
      for (const [key, v] of Object.entries(value)) {
        const g = (given as Record<string, unknown> | undefined)?.[key];
        const node = schema.properties[key];
        if (g === undefined && (typeof v !== 'object' || v === null) && node?.default !== v) missing.push(`${path}${key}: ${String(node?.default)} against ${String(v)}`);
        compare(v, g, node, `${path}${key}.`);
      }
    };
    compare(config, input, configJsonSchema() as Node, '');
    expect(missing).toEqual([]);
  });
});

describe('URLs', () => {
  it('refuses user:password@ in any configured URL: undici would not send it, so the IdP or app would be asked without it', () => {
    const message = 'must not hold a user name or password (user:password@): the sidecar would not send them (a token source authenticates with clientSecret or privateKeyFile)';
    const config = (url: string) => ({
      service: 'a',
      inbound: { target: url, audience: 'a', issuers: [{ issuer: 'https://idp', jwksUri: url.replace('http:', 'https:') }, { issuer: url }] },
      outbound: {
        tokenSource: { type: 'client_credentials', tokenEndpoint: url, clientId: 'a', clientSecret: 's' },
        routes: [{ host: 'b', audience: 'b', target: url, tokenSource: { type: 'client_credentials', issuer: url, clientId: 'a', clientSecret: 's' } }],
      },
    });
    const at = ['inbound.target', 'inbound.issuers.0.jwksUri', 'inbound.issuers.1.issuer', 'outbound.tokenSource.tokenEndpoint', 'outbound.routes.0.target', 'outbound.routes.0.tokenSource.issuer'];
    expect(issuesOf(() => parseConfig(config('http://client:pw@127.0.0.1:8080/token')))).toEqual(at.map((p) => `${p}: ${message}`));
    expect(issuesOf(() => parseConfig(config('http://client@127.0.0.1:8080/token')))).toEqual(at.map((p) => `${p}: ${message}`));
    expect(parseConfig(config('http://127.0.0.1:8080/token')).service).toBe('a');
  });

  it('refuses an issuer the keys or the token endpoint cannot be discovered from (no http(s) URL), and one with spaces at its edges, which no iss equals', () => {
    const config = (issuer: string, sourceIssuer = 'https://idp.example') => ({
      service: 'a',
      inbound: { target: 'http://127.0.0.1:8080', audience: 'a', issuers: [{ issuer }] },
      outbound: { tokenSource: { type: 'client_credentials', issuer: sourceIssuer, clientId: 'a', clientSecret: 's' }, routes: [{ host: 'b', audience: 'b', target: 'http://127.0.0.1:9' }] },
    });
    const discovered = 'inbound.issuers.0.issuer: must be an absolute http(s) URL: the keys are discovered at {issuer}/.well-known/openid-configuration (an issuer that is no URL needs jwksUri)';
    expect(issuesOf(() => parseConfig(config('idp.example.com')))).toEqual([discovered]);
    expect(issuesOf(() => parseConfig(config('ftp://idp.example.com')))).toEqual([discovered]);
    for (const issuer of ['https://idp.example.com#frag', 'https://idp.example.com?tenant=a']) {
      expect(issuesOf(() => parseConfig(config(issuer)))).toEqual([
        'inbound.issuers.0.issuer: must not have a query or fragment: the keys are discovered at {issuer}/.well-known/openid-configuration (or give jwksUri)',
      ]);
    }
    expect(issuesOf(() => parseConfig(config('https://idp.example.com ')))).toEqual(["inbound.issuers.0.issuer: must not begin or end with whitespace: a token's iss is compared exactly"]);
    expect(issuesOf(() => parseConfig(config('https://idp.example', 'idp.example.com')))).toEqual(['outbound.tokenSource.issuer: must be an absolute http(s) URL']);
    expect(issuesOf(() => parseConfig(config('https://idp.example', ' https://idp.example')))).toEqual(['outbound.tokenSource.issuer: must not begin or end with whitespace']);
    // With jwksUri, any exact iss (a Kubernetes service account issuer may be no URL).
    const k8s = { ...config('https://idp.example'), inbound: { target: 'http://127.0.0.1:8080', audience: 'a', issuers: [{ issuer: 'kubernetes/serviceaccount', jwksUri: 'https://k8s.example/openid/v1/jwks' }] } };
    expect(parseConfig(k8s).inbound!.issuers[0]!.issuer).toBe('kubernetes/serviceaccount');
  });
});

describe('token header names', () => {
  it('refuse "_" and other punctuation on both sides, so no second spelling of the token header can slip past the drop list', () => {
    for (const tokenHeader of ['x_workload_token', 'x.token', 'x+token']) {
      const inbound = issuesOf(() => parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, tokenHeader } }));
      expect(inbound[0], tokenHeader).toMatch(/^inbound\.tokenHeader: must be letters, digits and "-" only/);
      const outbound = issuesOf(() => parseConfig({ service: 'a', outbound: { tokenHeader, tokenSource: { type: 'env', variable: 'T' } } }));
      expect(outbound[0], tokenHeader).toMatch(/^outbound\.tokenHeader: must be letters, digits and "-" only/);
    }
  });

  it('refuse, on both sides, a header that cannot carry the token between sidecars: Host would carry it into access logs, framing headers failed every call with 502', () => {
    const outbound = (tokenHeader: string) => parseConfig({ service: 'a', outbound: { tokenHeader, tokenSource: { type: 'env', variable: 'T' } } });
    const inbound = (tokenHeader: string) => parseConfig({ ...minimalInbound, inbound: { ...minimalInbound.inbound, tokenHeader } });
    // SECURITY.md's list: hop-by-hop and framing headers, proxy-*, host, cookie, and all three X-Forwarded-* the sidecar writes.
    for (const name of ['Host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'expect', 'proxy-authorization', 'proxy-token', 'cookie', 'x-forwarded-for', 'x-forwarded-proto', 'X-Forwarded-Host']) {
      const refused = (side: string) => [expect.stringMatching(new RegExp(`^${side}\\.tokenHeader: "${name.toLowerCase()}" cannot carry the token between sidecars`))];
      expect(issuesOf(() => outbound(name))).toEqual(refused('outbound'));
      expect(issuesOf(() => inbound(name))).toEqual(refused('inbound'));
    }
    for (const name of ['authorization', 'X-Workload-Token']) {
      expect(outbound(name).outbound!.tokenHeader).toBe(name.toLowerCase());
      expect(inbound(name).inbound!.tokenHeader).toBe(name.toLowerCase());
    }
  });
});
