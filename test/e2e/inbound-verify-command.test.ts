import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, startSidecar, writeConfig } from '../support/sidecar.js';
import { accessTokenClaims, corruptSignature, epochSeconds, signToken, testKeyPair } from '../support/tokens.js';
import { startUpstream } from '../support/upstream.js';
import { call } from './inbound-support.js';

/** `oidc-sidecar verify` as an operator runs it, against a real IdP. */
describe('oidc-sidecar verify', () => {
  let idp: TestIdp;
  let config: string;

  beforeAll(async () => {
    idp = await startIdp();
    config = writeConfig({
      service: 'orders',
      inbound: {
        target: 'http://127.0.0.1:8080',
        audience: 'orders',
        issuers: [{ issuer: idp.issuer }],
        rules: [
          { match: { path: '/healthz' }, public: true },
          { match: { path: '/payments/**', methods: ['POST'] }, allow: [{ sub: 'orders' }] },
        ],
      },
    });
  });
  afterAll(async () => {
    await idp?.close();
  });

  it('refuses a --timeout that is not a number, not above 0, or longer than a Node timer holds (it waited 1 ms after a TimeoutOverflowWarning)', async () => {
    for (const [given, shown] of [['abc', 'something that is not a number'], ['-5', '-5'], ['1e12', '1000000000000']]) {
      const r = await runCli(['verify', '--config', config, '--token', 'x', '--timeout', given!]);
      expect([r.code, r.stdout, r.stderr]).toEqual([1, '', `oidc-sidecar: --timeout must be a number of seconds above 0 and at most 2147482, got ${shown}\n`]);
    }
  });

  it('prints allow, the reason and the verified claims, exit 0', async () => {
    const token = await idp.getToken('orders', 'orders');
    const r = await runCli(['verify', '--config', config, '--token', token]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^decision: allow$/m);
    expect(r.stdout).toMatch(/^reason: +ok$/m);
    expect(r.stdout).toContain('claims (verified):');
    expect(r.stdout).toContain('"sub": "orders"');
    expect(r.stderr).toBe('');
  });

  it('takes a token copied with its scheme (Bearer eyJ…, any case), as the Authorization value a caller sends', async () => {
    const token = await idp.getToken('orders', 'orders');
    for (const value of [`Bearer ${token}`, `bearer  ${token}`]) {
      const r = await runCli(['verify', '--config', config, '--token', value, '--json']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ decision: 'allow', reason: 'ok', claims: { sub: 'orders' } });
    }
    const stdin = await runCli(['verify', '--config', config, '--json'], { input: `Bearer ${corruptSignature(token)}\n` });
    expect(stdin.code).toBe(1);
    expect(JSON.parse(stdin.stdout)).toMatchObject({ decision: 'reject', reason: 'bad_signature' });
  });

  it('reads the token from stdin and prints JSON with --json', async () => {
    const token = await idp.getToken('orders', 'orders');
    const r = await runCli(['verify', '--config', config, '--json'], { input: `${token}\n` });
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ decision: 'allow', reason: 'ok', issuer: idp.issuer, claims: { sub: 'orders', aud: 'orders' } });
  });

  it('rejects with the reason code and exit 1: expired, forged, wrong audience, empty', async () => {
    const cases: [string, string][] = [
      [await idp.mint({ aud: 'orders', iat: epochSeconds() - 7200, exp: epochSeconds() - 3600 }), 'expired'],
      [corruptSignature(await idp.getToken('orders', 'orders')), 'bad_signature'],
      [await idp.getToken('orders', 'payments'), 'audience_mismatch'],
      ['', 'missing_token'],
    ];
    for (const [token, reason] of cases) {
      const r = await runCli(['verify', '--config', config, '--json'], { input: token });
      expect(r.code, reason).toBe(1);
      expect(JSON.parse(r.stdout), reason).toMatchObject({ decision: 'reject', reason });
    }
  });

  it('a token refused on its issuer or audience shows its claims as sent (marked unverified) and what the config expected', async () => {
    const token = await idp.getToken('orders', 'payments');
    const wrongAudience = await runCli(['verify', '--config', config, '--json', '--token', token]);
    expect(JSON.parse(wrongAudience.stdout)).toMatchObject({
      reason: 'audience_mismatch',
      unverifiedClaims: { verified: false, iss: idp.issuer, aud: 'payments', sub: 'orders' },
      expected: { audience: ['orders'] },
    });
    // `localhost` for an IdP whose tokens say 127.0.0.1: the two values side by side.
    const localhost = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: idp.issuer.replace('127.0.0.1', 'localhost') }] } });
    const r = await runCli(['verify', '--config', localhost, '--token', await idp.getToken('orders', 'orders')]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`reason:   unknown_issuer\ndetail:   token issuer is not trusted\nexpected: issuers ${idp.issuer.replace('127.0.0.1', 'localhost')}\nclaims (as sent, NOT verified):\n`);
    expect(r.stdout).toContain(`"iss": "${idp.issuer}"`);
    // The expected audience is the issuer's own, found by the whole iss (the one shown is cut at 128 characters).
    const longIss = `https://idp.example.com/${'a'.repeat(140)}`;
    const own = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: longIss, jwksUri: idp.jwksUri, audience: ['special-aud'] }] } });
    const longOne = JSON.parse((await runCli(['verify', '--config', own, '--json', '--token', await idp.mint({ iss: longIss, aud: 'wrong-aud' })])).stdout);
    expect(longOne).toMatchObject({ reason: 'audience_mismatch', expected: { audience: ['special-aud'] } });
    expect(String(longOne.unverifiedClaims.iss)).toMatch(/…$/);
    // An allowed token's claims are the verified ones, and a malformed one has none to show.
    expect(JSON.parse((await runCli(['verify', '--config', config, '--json', '--token', await idp.getToken('orders', 'orders')])).stdout)).not.toHaveProperty('unverifiedClaims');
    expect(JSON.parse((await runCli(['verify', '--config', config, '--json', '--token', 'a.b.c'])).stdout)).not.toHaveProperty('unverifiedClaims');
  });

  it('no token at all says that none was given on stdin or --token, not that a header was missing (reason stays missing_token)', async () => {
    const piped = await runCli(['verify', '--config', config], { input: '' });
    expect([piped.code, piped.stderr]).toEqual([1, '']);
    expect(piped.stdout).toBe('decision: reject\nreason:   missing_token\ndetail:   no token given: stdin was empty (pipe a token in, or pass --token JWT)\n');
    const blank = await runCli(['verify', '--config', config, '--json'], { input: ' \n' });
    expect(JSON.parse(blank.stdout)).toEqual({ decision: 'reject', reason: 'missing_token', detail: 'no token given: stdin was empty (pipe a token in, or pass --token JWT)' });
    const flag = await runCli(['verify', '--config', config, '--token', '', '--json']);
    expect(flag.code).toBe(1);
    expect(JSON.parse(flag.stdout)).toEqual({ decision: 'reject', reason: 'missing_token', detail: 'no token given: --token is empty' });
    // With --path, a rule that needs a token says the same.
    const rule = await runCli(['verify', '--config', config, '--path', '/payments/1', '--method', 'POST', '--json'], { input: '' });
    expect(JSON.parse(rule.stdout)).toMatchObject({ reason: 'missing_token', detail: 'no token given: stdin was empty (pipe a token in, or pass --token JWT)', path: '/payments/1' });
  });

  it('applies the rules with --method and --path (normalised), printing the rule', async () => {
    const token = await idp.getToken('orders', 'orders');
    const allow = await runCli(['verify', '--config', config, '--token', token, '--method', 'post', '--path', '/payments/x/../1']);
    expect(allow.code).toBe(0);
    expect(allow.stdout).toMatch(/^request: +POST \/payments\/1$/m);
    expect(allow.stdout).toMatch(/^rule: +#1 POST \/payments\/\*\*$/m);
    const deny = await runCli(['verify', '--config', config, '--token', token, '--path', '/payments/1', '--json']);
    expect(deny.code).toBe(1);
    expect(JSON.parse(deny.stdout)).toMatchObject({ decision: 'deny', reason: 'policy_denied' });
    const pub = await runCli(['verify', '--config', config, '--path', '/healthz', '--json'], { input: '' });
    expect(pub.code).toBe(0);
    expect(JSON.parse(pub.stdout)).toMatchObject({ decision: 'allow', reason: 'public' });
  });

  it('reads the token as the configured inbound.tokenHeader carries it (x-workload-token)', async () => {
    const custom = writeConfig({
      service: 'orders',
      inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: idp.issuer }], tokenHeader: 'x-workload-token' },
    });
    const token = await idp.getToken('orders', 'orders');
    const ok = await runCli(['verify', '--config', custom, '--token', token, '--json']);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ decision: 'allow', reason: 'ok', claims: { sub: 'orders' } });
    const forged = await runCli(['verify', '--config', custom, '--json'], { input: corruptSignature(token) });
    expect(forged.code).toBe(1);
    expect(JSON.parse(forged.stdout)).toMatchObject({ decision: 'reject', reason: 'bad_signature' });
  });

  it('an https issuer whose jwksUri is plain http on loopback (a node-local key mirror): the keys load and its tokens verify', async () => {
    const key = await testKeyPair('RS256');
    const jwks: Server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [key.publicJwk] })));
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
    try {
      const jwksUri = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks`;
      const cfg = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example.com', jwksUri }] } });
      const token = await signToken(accessTokenClaims({ iss: 'https://idp.example.com', aud: 'orders' }), { key: key.privateKey, alg: 'RS256', kid: key.kid });
      const r = await runCli(['verify', '--config', cfg, '--token', token, '--json']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ decision: 'allow', reason: 'ok', claims: { iss: 'https://idp.example.com' } });
    } finally {
      await new Promise((r) => jwks.close(r));
    }
  });

  it('IdP unreachable: says at once that it retries, then one clear line, keys_unavailable, exit 1 for a token that needs its keys; a malformed one needs none', async () => {
    const dead: Server = createServer((_req, res) => res.writeHead(503).end());
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
    await new Promise((r) => dead.close(r));
    const cfg = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: url }] } });
    const key = await testKeyPair('RS256');
    const token = await signToken(accessTokenClaims({ iss: url, aud: 'orders' }), { key: key.privateKey, alg: 'RS256', kid: key.kid });
    const r = await runCli(['verify', '--config', cfg, '--token', token, '--timeout', '1']);
    expect(r.code).toBe(1);
    const [waiting, failed, ...more] = r.stderr.trim().split('\n');
    expect(more).toEqual([]);
    // Before the wait, not after it: the first fetch failed, and the key store retries for --timeout.
    expect(waiting).toMatch(/^oidc-sidecar: cannot load keys for http:\/\/127\.0\.0\.1:\d+ yet \(.*connection refused\); retrying for up to 1 s \(--timeout\)$/);
    expect(failed).toMatch(/^oidc-sidecar: keys_unavailable: cannot load keys for http:\/\/127\.0\.0\.1:\d+ \(.*connection refused\)/);
    // stdout says the decision as for every other result, for a script that reads it there.
    expect(r.stdout).toMatch(/^decision: error\nreason:   keys_unavailable\ndetail:   http:\/\/127\.0\.0\.1:\d+ \(.*connection refused\)\n$/);
    const malformed = await runCli(['verify', '--config', cfg, '--token', 'a.b.c', '--json']);
    expect([malformed.code, malformed.stderr]).toEqual([1, '']);
    expect(JSON.parse(malformed.stdout)).toMatchObject({ decision: 'reject', reason: 'malformed_token' });
    // With --json, stdout is the same document as for every other result, laid out alike.
    const json = await runCli(['verify', '--config', cfg, '--token', token, '--timeout', '1', '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ decision: 'error', reason: 'keys_unavailable', detail: expect.stringContaining(url) });
    expect(json.stdout).toBe(`${JSON.stringify(JSON.parse(json.stdout), null, 2)}\n`);
    // With --path, the request it was for, as every other result says it.
    const forPath = await runCli(['verify', '--config', cfg, '--token', token, '--timeout', '1', '--method', 'post', '--path', '/a/../b']);
    expect(forPath.stdout).toMatch(/^decision: error\nreason:   keys_unavailable\ndetail:   .*\nrequest:  POST \/b\n$/);
  });

  it('an IdP that fails the first key fetch and then serves: the retry line, then the decision on the keys the retry loaded', async () => {
    const key = await testKeyPair('RS256');
    let fetches = 0;
    const jwks: Server = createServer((_req, res) => {
      fetches++;
      if (fetches === 1) res.writeHead(503).end();
      else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [key.publicJwk] }));
    });
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
    try {
      const jwksUri = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks`;
      const cfg = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example.com', jwksUri }] } });
      const token = await signToken(accessTokenClaims({ iss: 'https://idp.example.com', aud: 'orders' }), { key: key.privateKey, alg: 'RS256', kid: key.kid });
      // The key store's first retry comes after inbound.jwks.retryMinSeconds (1 s by default).
      const r = await runCli(['verify', '--config', cfg, '--token', token, '--timeout', '30']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stderr).toMatch(/^oidc-sidecar: cannot load keys for https:\/\/idp\.example\.com yet \(.*HTTP 503\); retrying for up to 30 s \(--timeout\)\n$/);
      expect(r.stdout).toMatch(/^decision: allow\nreason:   ok\n/);
      expect(fetches).toBe(2);
    } finally {
      await new Promise((r) => jwks.close(r));
    }
  });

  it('refuses --method without --path: the rules, which the method is for, are evaluated only with a path', async () => {
    const cfg = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'http://127.0.0.1:9' }] } });
    const r = await runCli(['verify', '--config', cfg, '--token', 'a.b.c', '--method', 'POST']);
    expect([r.code, r.stdout, r.stderr]).toEqual([1, '', 'oidc-sidecar: --method applies to the rules, which are evaluated only with --path; add --path\n']);
    // With a path it is taken (a malformed token is refused before any rule).
    expect((await runCli(['verify', '--config', cfg, '--token', 'a.b.c', '--method', 'POST', '--path', '/x'])).stdout).toMatch(/^decision: reject$/m);
  });

  it('refuses a --method no request can arrive with (Node answers 400 before any rule), and takes any other, in any case', async () => {
    const cfg = writeConfig({ service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'http://127.0.0.1:9' }] } });
    const r = await runCli(['verify', '--config', cfg, '--token', 'a.b.c', '--method', 'FOO', '--path', '/x']);
    expect([r.code, r.stdout]).toEqual([1, '']);
    expect(r.stderr).toBe("oidc-sidecar: --method FOO: no request arrives with this method (Node's HTTP parser refuses it); use one such as GET, POST, PUT, PATCH or DELETE\n");
    const connect = await runCli(['verify', '--config', cfg, '--token', 'a.b.c', '--method', 'connect', '--path', '/x']);
    expect([connect.code, connect.stdout, connect.stderr]).toEqual([1, '', 'oidc-sidecar: --method CONNECT: the inbound listener answers every CONNECT 405 connect_not_supported before the rules\n']);
    // A method no rule can name still arrives (WebDAV's PROPFIND): the rules without methods apply to it.
    for (const method of ['propfind', 'DELETE']) {
      expect((await runCli(['verify', '--config', cfg, '--token', 'a.b.c', '--method', method, '--path', '/x'])).stdout).toMatch(/^decision: reject$/m);
    }
  });

  it('with one of two issuers down, decides every token as a running sidecar does: it waits only for the keys the token needs', async () => {
    const down = await startIdp();
    down.setDown('hang'); // accepts and never answers: anything that waited on it would end in keys_unavailable
    const app = await startUpstream();
    const config = {
      service: 'orders',
      lifecycle: { watchConfig: false },
      inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }, { issuer: down.issuer }], jwks: { timeoutSeconds: 1 } },
    };
    const expired = { iat: epochSeconds() - 7200, exp: epochSeconds() - 3600 };
    const cases: [string, string, number, string][] = [
      ['healthy issuer, valid', await idp.getToken('orders', 'orders'), 200, 'ok'],
      ['healthy issuer, expired', await idp.mint({ aud: 'orders', ...expired }), 401, 'expired'],
      ['down issuer, expired', await down.mint({ aud: 'orders', ...expired }), 401, 'expired'],
      ['down issuer, wrong audience', await down.mint({ aud: 'payments' }), 401, 'audience_mismatch'],
      ['unknown issuer', await signToken(accessTokenClaims({ iss: 'http://elsewhere.example', aud: 'orders' }), { key: (await testKeyPair()).privateKey, alg: 'RS256' }), 401, 'unknown_issuer'],
      ['malformed', 'a.b.c', 401, 'malformed_token'],
    ];
    const needsKeys = await down.mint({ aud: 'orders' }); // only the down issuer's keys can judge this one
    const cfg = writeConfig(config);
    try {
      for (const [name, token, status, reason] of cases) {
        const v = await runCli(['verify', '--config', cfg, '--token', token, '--json']);
        expect([v.code, v.stderr], name).toEqual([status === 200 ? 0 : 1, '']);
        expect(JSON.parse(v.stdout), name).toMatchObject({ decision: status === 200 ? 'allow' : 'reject', reason });
      }
      // None of them made verify contact the issuer that is down.
      expect(down.counts).toMatchObject({ discovery: 0, jwks: 0 });
      const v = await runCli(['verify', '--config', cfg, '--token', needsKeys, '--timeout', '1']);
      expect([v.code, v.stdout]).toEqual([1, `decision: error\nreason:   keys_unavailable\ndetail:   ${down.issuer} (${down.discoveryUrl}: timed out)\n`]);
      expect(v.stderr).toBe(
        `oidc-sidecar: cannot load keys for ${down.issuer} yet (${down.discoveryUrl}: timed out); retrying for up to 1 s (--timeout)\n` +
          `oidc-sidecar: keys_unavailable: cannot load keys for ${down.issuer} (${down.discoveryUrl}: timed out)\n`,
      );

      // The running sidecar, with the same config and the same issuer down, answers each token the same way.
      const sidecar = await startSidecar(config, { waitReady: false });
      try {
        await sidecar.waitForLog((l) => l.event === 'jwks_updated' && l.issuer === idp.issuer);
        for (const [name, token, status, reason] of cases) {
          const res = await call(sidecar.inbound!, '/x', { token });
          expect([res.status, res.status === 200 ? 'ok' : res.body.reason], name).toEqual([status, reason]);
        }
        const res = await call(sidecar.inbound!, '/x', { token: needsKeys });
        expect([res.status, res.body.reason]).toEqual([503, 'keys_unavailable']);
      } finally {
        await sidecar.stop();
      }
    } finally {
      await app.close();
      await down.close();
    }
  });

  it("reads only the issuers' CA bundles: an outbound caFile that exists only in the pod does not stop it", async () => {
    const podOnly = '/nonexistent/pod-only/ca.crt';
    const both = (issuerCaFile?: string) =>
      writeConfig({
        service: 'orders',
        inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: idp.issuer, ...(issuerCaFile ? { caFile: issuerCaFile } : {}) }] },
        outbound: {
          tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', clientSecret: 's', caFile: podOnly },
          routes: [{ host: 'ledger', target: 'https://ledger.internal', caFile: podOnly, audience: 'ledger' }],
        },
      });
    const token = await idp.getToken('orders', 'orders');
    const r = await runCli(['verify', '--config', both(), '--token', token]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^decision: allow$/m);

    // The issuer's own bundle is still read and checked.
    const own = await runCli(['verify', '--config', both(podOnly), '--token', token]);
    expect([own.code, own.stdout]).toEqual([1, '']);
    expect(own.stderr).toMatch(/^oidc-sidecar: invalid config: inbound\.issuers\.0\.caFile: cannot read \S+: no such file \(line \d+\)\n$/);
    expect(own.stderr).toContain(`cannot read ${podOnly}: no such file`);
  });

  it('usage errors are one line with exit 1: no inbound section, bad --path', async () => {
    const outboundOnly = writeConfig({ service: 'x', outbound: { routes: [] } });
    const a = await runCli(['verify', '--config', outboundOnly, '--token', 'a.b.c']);
    expect(a.code).toBe(1);
    expect(a.stderr).toBe('oidc-sidecar: the config has no inbound section to verify against\n');
    const b = await runCli(['verify', '--config', config, '--token', 'a.b.c', '--path', 'payments']);
    expect(b.code).toBe(1);
    expect(b.stderr).toBe('oidc-sidecar: --path must start with "/"\n');
  });

  it('has --help', async () => {
    const r = await runCli(['verify', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('--token');
    expect(r.stdout).toContain('--path');
  });
});
