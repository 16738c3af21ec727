import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import type { SeenIdentity } from './demo-apps.js';
import { DEPLOY_RULE, type DemoTopology } from './demo-topology.js';
import { generateSigningKey } from './keys.js';

/** One line of the demo's table. */
export interface ScenarioResult {
  title: string;
  expected: string;
  got: string;
  passed: boolean;
  why: string;
}

interface Response {
  status: number;
  reason: string | undefined;
  body: unknown;
}

interface Scenario {
  title: string;
  expect: { status: number; reason?: string };
  run(t: DemoTopology): Promise<{ res: Response; why: string; extraCheck?: boolean }>;
}

/** The demo's scenarios, in the order they run and print. */
const SCENARIOS: Scenario[] = [
  {
    title: 'orders → payments, both sidecars',
    expect: { status: 200 },
    async run(t) {
      const res = await call(`${t.urls.ordersInbound}/checkout`, { method: 'GET' });
      const seen = (res.body as { peer?: SeenIdentity } | undefined)?.peer;
      const ok = seen?.sub === 'orders' && seen.iss === t.issuer.issuer && seen.tokenReachedApp === false;
      return {
        res,
        extraCheck: ok,
        why: seen
          ? `payments app saw x-peer-sub=${seen.sub} x-peer-iss=${seen.iss}; the bearer token was ${seen.tokenReachedApp ? 'NOT removed' : 'removed before the app'}`
          : `no identity came back: ${JSON.stringify(res.body)}`,
      };
    },
  },
  {
    title: 'no token',
    expect: { status: 401, reason: 'missing_token' },
    run: (t) => rejected(t, 'payments', undefined, 'no Authorization header'),
  },
  {
    title: 'wrong audience',
    expect: { status: 401, reason: 'audience_mismatch' },
    async run(t) {
      return rejected(t, 'payments', await clientToken(t, 'orders', 'orders'), 'a real token of orders, but for aud=orders; payments accepts aud=payments only');
    },
  },
  {
    title: 'forged signature',
    expect: { status: 401, reason: 'bad_signature' },
    async run(t) {
      const real = t.issuer.signingKeys[0]!;
      const stranger = await generateSigningKey(real.alg);
      const forged = await sign(t, { sub: 'orders', aud: 'payments' }, { ...stranger, kid: real.kid });
      return rejected(t, 'payments', forged, `signed with an attacker's key under the issuer's kid ${real.kid.slice(0, 8)}…`);
    },
  },
  {
    title: 'expired token',
    expect: { status: 401, reason: 'expired' },
    async run(t) {
      const now = Math.floor(Date.now() / 1000);
      const expired = await sign(t, { sub: 'orders', aud: 'payments', iat: now - 600, exp: now - 300 }, t.issuer.signingKeys[0]!);
      return rejected(t, 'payments', expired, 'signed with the real issuer key, but exp was 5 min ago (allowed skew 30 s)');
    },
  },
  {
    title: 'subject the rule forbids',
    expect: { status: 403, reason: 'policy_denied' },
    async run(t) {
      const token = await clientToken(t, 'analytics', 'payments');
      return rejected(t, 'payments', token, 'valid token for payments, but sub=analytics; /payments/** allows sub=orders only');
    },
  },
  {
    title: 'deploy from feature branch',
    expect: { status: 403, reason: 'policy_denied' },
    async run(t) {
      const token = await githubToken(t, 'github-feature');
      return rejected(t, 'deployer', token, `CI token has ref=refs/heads/feature/login; POST /deploy needs ${ruleText()}`);
    },
  },
  {
    title: 'deploy from main, production',
    expect: { status: 200 },
    async run(t) {
      const token = await githubToken(t, 'github-main');
      const res = await call(`${t.urls.deployerInbound}/deploy`, { method: 'POST', token });
      const seen = res.body as SeenIdentity | undefined;
      return {
        res,
        extraCheck: seen?.sub === 'repo:acme/app:environment:production' && seen.claims?.ref === DEPLOY_RULE.ref,
        why: seen?.claims
          ? `CI token has ${ruleText()}; deployer saw x-peer-sub=${seen.sub}`
          : `unexpected answer: ${JSON.stringify(res.body)}`,
      };
    },
  },
];

/** Runs every scenario against a started topology; never throws (a failure becomes a failed row). */
export async function runScenarios(t: DemoTopology): Promise<ScenarioResult[]> {
  const results: ScenarioResult[] = [];
  for (const s of SCENARIOS) {
    const expected = describe(s.expect.status, s.expect.reason);
    try {
      const { res, why, extraCheck } = await s.run(t);
      const passed = res.status === s.expect.status && res.reason === s.expect.reason && extraCheck !== false;
      results.push({ title: s.title, expected, got: describe(res.status, res.reason), passed, why });
    } catch (err) {
      results.push({ title: s.title, expected, got: 'error', passed: false, why: (err as Error).message });
    }
  }
  return results;
}

/** A request that must be refused by `target`'s sidecar before its app sees it. */
async function rejected(t: DemoTopology, target: 'payments' | 'deployer', token: string | undefined, story: string) {
  const app = t.apps[target];
  const before = app.requests;
  const path = target === 'payments' ? '/payments/charge' : '/deploy';
  const inbound = target === 'payments' ? t.urls.paymentsInbound : t.urls.deployerInbound;
  const res = await call(`${inbound}${path}`, { method: 'POST', token });
  const reached = app.requests !== before;
  return { res, extraCheck: !reached, why: `${story}${reached ? '; BUT THE APP WAS CALLED' : '; the app never saw it'}` };
}

async function call(url: string, opts: { method: string; token?: string | undefined }): Promise<Response> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(url, { method: opts.method, headers, ...(opts.method === 'POST' ? { body: '{"demo":true}' } : {}) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  const reason = res.status >= 400 ? (body as { reason?: string } | undefined)?.reason : undefined;
  return { status: res.status, reason, body };
}

/** A client credentials token from the dev issuer (RFC 6749 §4.4), audience via `audience=`. */
async function clientToken(t: DemoTopology, client: string, audience: string): Promise<string> {
  const res = await fetch(t.issuer.tokenEndpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`${client}:${client}-secret`).toString('base64')}` },
    body: new URLSearchParams({ grant_type: 'client_credentials', audience }),
  });
  const body = (await res.json()) as { access_token?: string; error?: string };
  if (!body.access_token) throw new Error(`the dev issuer refused a token for ${client}: ${body.error ?? res.status}`);
  return body.access_token;
}

/** A GitHub-Actions-style token, requested the way a workflow step does (ACTIONS_ID_TOKEN_REQUEST_URL). */
async function githubToken(t: DemoTopology, client: string): Promise<string> {
  const res = await fetch(`${t.issuer.issuer}/github-actions/token?client=${client}&audience=deployer`, { headers: { authorization: `bearer ${client}-secret` } });
  const body = (await res.json()) as { value?: string };
  if (!body.value) throw new Error(`the dev issuer refused a CI token for ${client}: HTTP ${res.status}`);
  return body.value;
}

async function sign(t: DemoTopology, claims: Record<string, unknown>, key: { alg: string; kid: string; privateKey: Parameters<SignJWT['sign']>[0] }): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iat: now, exp: now + 300, jti: randomUUID(), ...claims, iss: t.issuer.issuer })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt' })
    .sign(key.privateKey);
}

function describe(status: number, reason: string | undefined): string {
  return reason ? `${status} ${reason}` : String(status);
}

function ruleText(): string {
  return `repository=${DEPLOY_RULE.repository}, ref=${DEPLOY_RULE.ref}, environment=${DEPLOY_RULE.environment}`;
}
