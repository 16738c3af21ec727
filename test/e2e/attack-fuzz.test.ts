import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  applyMutation,
  contractTarget,
  credentialValueArb,
  flushLogs,
  headerNameArb,
  isPublicPath,
  latin1String,
  mutationArb,
  rawExchange,
  requestTargetArb,
  startRecordingApp,
  tallyFuzzCases,
  tokenLeaks,
  type RecordingApp,
} from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';

/**
 * The fuzzing of test/unit/fuzz-inbound-*.test.ts, end to end: random and
 * mutated requests as raw bytes into a sidecar started through the CLI, in
 * front of a recording app. For every request: no 5xx, the app sees it if
 * and only if the answer is 2xx, and a 2xx only ever goes to a public path
 * or to a token the IdP really signed whose subject the rules allow. At the
 * end the process is still up and no token reached its output.
 * `FUZZ_E2E_RUNS` sets the number of requests (default 200; test:hard more).
 */

const RUNS = Math.max(1, Number(process.env.FUZZ_E2E_RUNS ?? 200));
const rules = [
  { match: { path: '/public/**' }, public: true },
  { match: { path: '/admin/**' }, allow: [{ sub: 'deployer' }] },
  { match: { path: '/api/**' }, allow: [{ sub: ['orders', 'deployer'] }] },
];

let idp: TestIdp;
let app: RecordingApp;
let sidecar: SidecarProcess;
const seeds: { token: string; sub: string }[] = [];

beforeAll(async () => {
  idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 's1' }, { clientId: 'deployer', clientSecret: 's2' }] });
  app = await startRecordingApp();
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], rules },
  });
  for (const sub of ['orders', 'deployer']) seeds.push({ token: await idp.getToken(sub, 'orders'), sub });
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), idp?.close()]);
});

/** CR and LF would start a new header line or request; other bytes are left as the fuzzer made them. */
const oneLine = (s: string) => s.replace(/[\r\n]/g, '');

const caseArb = fc.record({
  method: fc.constantFrom('GET', 'POST', 'DELETE', 'HEAD', 'OPTIONS', 'PUT'),
  target: fc.oneof(requestTargetArb, fc.constantFrom('/api/x', '/admin/x', '/public/x', '/public/../admin/x')),
  credential: fc.oneof(
    { weight: 3, arbitrary: fc.record({ seed: fc.nat(1), mutations: fc.array(mutationArb, { maxLength: 3 }) }) },
    { weight: 1, arbitrary: credentialValueArb.map((raw) => ({ raw })) },
    { weight: 1, arbitrary: fc.constant(null) },
  ),
  extra: fc.array(fc.tuple(headerNameArb, latin1String(24)), { maxLength: 4 }),
});

type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

describe('fuzz end to end: random and mutated requests through the CLI-started sidecar', () => {
  it(`${RUNS} requests: no 5xx, the app sees exactly the 2xx ones, and 2xx only for public paths or really signed allowed tokens`, async () => {
    const statuses = new Map<number, number>();
    const recent: string[] = [];
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        let token: string | undefined;
        let value: string | undefined;
        if (c.credential && 'seed' in c.credential) {
          token = c.credential.mutations.reduce(applyMutation, seeds[c.credential.seed]!.token);
          value = `Bearer ${token}`;
        } else if (c.credential) value = c.credential.raw;
        const headers: [string, string][] = [['Host', 'orders'], ...c.extra.filter(([n]) => !/^(host|content-length|transfer-encoding|connection)$/i.test(n))];
        if (value !== undefined) headers.push(['Authorization', value]);
        const target = oneLine(c.target) || '/';
        let bytes = `${c.method} ${target} HTTP/1.1\r\n`;
        for (const [n, v] of headers) bytes += `${n}: ${oneLine(v)}\r\n`;
        bytes += 'Connection: close\r\n\r\n';
        if (token) {
          recent.push(token);
          if (recent.length > 200) recent.shift();
        }

        const before = app.requests.length;
        const ex = await rawExchange(sidecar.inbound!, bytes);
        const status = ex.responses[0]?.status ?? 0;
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        const seen = app.requests.slice(before);
        expect(status, `no answer to ${JSON.stringify(bytes.slice(0, 200))}`).toBeGreaterThan(0);
        expect(status, bytes.slice(0, 200)).toBeLessThan(500);
        if (status < 200 || status >= 300) {
          expect(seen, `refused (${status}) but the app saw it`).toEqual([]);
          return;
        }
        expect(seen, 'allowed but the app saw a different number of requests').toHaveLength(1);
        // Which resource was asked for is judged from the target as sent, resolved by the README's path contract
        // (contractTarget), not from the URL the app received: a sidecar that matched and forwarded a raw
        // "/public/../admin/x" would hand the app a URL that looks public too. And the app must get that canonical path.
        // The request-target is what the request line holds up to its first space (RFC 9112 §3): `/public ` is sent
        // as "GET /public  HTTP/1.1", which names /public.
        const sent = target.split(' ', 1)[0]!;
        const want = contractTarget(sent);
        expect(want, `allowed ${JSON.stringify(sent)}, which the path contract refuses`).toBeDefined();
        const path = want!.path;
        expect(seen[0]!.url, `the app received another path than ${JSON.stringify(sent)} names`).toBe(path + want!.query);
        if (isPublicPath(path)) {
          expect(seen[0]!.headers['x-peer-sub']).toBeUndefined();
          return;
        }
        // Not public: must be a seed the IdP signed, exactly as issued (not even re-spelt through base64url's spare
        // bits), whose subject the rule allows. Spaces between the scheme and the token are allowed (RFC 9110 §11.4:
        // 1*SP), and whitespace at the end of a field value is not part of it (§5.5; Node's parser drops it): compare
        // what is between them.
        const seed = seeds.find((s) => token !== undefined && token.replace(/^[ \t]+|[ \t]+$/g, '') === s.token);
        expect(seed, `allowed an unsigned or altered credential on ${path}: ${value?.slice(0, 120)}`).toBeDefined();
        const allowed = path.startsWith('/admin') ? seed!.sub === 'deployer' : path.startsWith('/api') && ['orders', 'deployer'].includes(seed!.sub);
        expect(allowed, `${seed!.sub} allowed on ${path}`).toBe(true);
        expect(seen[0]!.headers['x-peer-sub']).toBe(seed!.sub);
      }),
      {
        numRuns: RUNS,
        // Always tried: a space after the token (the end of the field value, which HTTP does not count; an allow is
        // right) and one just before its end (inside the signature: refused). The first once failed a 20,000-run
        // pass as "altered" when the check above did not yet strip it.
        // And, whatever the seed, a climb out of the public tree with no token.
        examples: [
          ...[seeds[1]!.token.length, seeds[1]!.token.length - 1].map(
            (at): [Case] => [
              { method: 'GET', target: '/api/x', credential: { seed: 1, mutations: [{ op: 'insert', at, text: ' ' }] }, extra: [] },
            ],
          ),
          [{ method: 'GET', target: '/public/../admin/x', credential: null, extra: [] }],
        ],
      },
    );
    await tallyFuzzCases('e2e.requests', RUNS);

    expect(sidecar.child.exitCode).toBeNull();
    expect((await fetch(`${sidecar.admin}/healthz`)).status).toBe(200);
    await flushLogs(sidecar);
    expect(tokenLeaks(sidecar.output(), [...seeds.map((s) => s.token), ...recent])).toEqual([]);
    // Not hollow: refusals of several kinds and some passes happened.
    expect(statuses.get(200) ?? 0).toBeGreaterThan(0);
    expect([...statuses.keys()].filter((s) => s >= 400).length).toBeGreaterThanOrEqual(2);
  });
});
