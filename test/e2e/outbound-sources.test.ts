import { createServer, type Server } from 'node:http';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { epochSeconds } from '../support/tokens.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { bearerOf, send, verifyWithIdp } from './outbound-support.js';

const dir = mkdtempSync(join(tmpdir(), 'outbound-sources-e2e-'));
let idp: TestIdp;
let app: UpstreamApp;
const running: SidecarProcess[] = [];

beforeAll(async () => {
  idp = await startIdp({
    clients: [
      { clientId: 'orders', clientSecret: 'orders-secret', subject: 'repo:acme/orders:ref:refs/heads/main', extraClaims: { repository: 'acme/orders' } },
    ],
  });
  app = await startUpstream();
});
afterAll(async () => {
  await app.close();
  await idp.close();
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
  app.seen.length = 0;
});

async function sidecarWith(tokenSource: Record<string, unknown>, opts: Parameters<typeof startSidecar>[1] = {}): Promise<SidecarProcess> {
  const s = await startSidecar(
    { service: 'orders', outbound: { tokenSource, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] } },
    opts,
  );
  running.push(s);
  return s;
}

const call = (s: SidecarProcess, path = '/x') => send(s.outbound!, { target: `http://payments${path}`, host: 'payments' });
const lastToken = () => bearerOf(app.seen.at(-1)!.headers.authorization)!;

/**
 * A stand-in RFC 8693 security token service at the network edge (the dev
 * issuer implements client_credentials only): it authenticates the client with
 * Basic, verifies the subject token against the real IdP's JWKS, and answers
 * with a token the IdP signs for the requested audience.
 */
async function startSts(): Promise<{ url: string; forms: URLSearchParams[]; close(): Promise<void> }> {
  const forms: URLSearchParams[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      forms.push(form);
      const answer = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      if (req.headers.authorization !== `Basic ${Buffer.from('exchanger:exchanger-secret').toString('base64')}`) return answer(401, { error: 'invalid_client' });
      if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:token-exchange') return answer(400, { error: 'unsupported_grant_type' });
      try {
        const jwks = (await (await fetch(idp.jwksUri)).json()) as JSONWebKeySet;
        const { payload } = await jwtVerify(form.get('subject_token') ?? '', createLocalJWKSet(jwks), { issuer: idp.issuer, audience: 'sts' });
        const token = await idp.mint({ aud: form.get('resource')!, sub: payload.sub, act: { sub: 'exchanger' }, exp: epochSeconds() + 300 });
        answer(200, { access_token: token, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: 300 });
      } catch {
        answer(400, { error: 'invalid_grant', error_description: 'subject token did not verify' });
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`,
    forms,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

describe('token sources through the outbound sidecar', () => {
  it('token_exchange: trades the projected service-account token (re-read each time) for one bound to the peer', async () => {
    const sts = await startSts();
    try {
      const subjectFile = join(dir, 'sa-token');
      writeFileSync(subjectFile, `${await idp.mint({ aud: 'sts', sub: 'system:serviceaccount:shop:orders' })}\n`);
      const s = await sidecarWith({
        type: 'token_exchange',
        tokenEndpoint: sts.url,
        clientId: 'exchanger',
        clientSecret: 'exchanger-secret',
        subjectTokenFile: subjectFile,
      });
      expect((await call(s)).status).toBe(200);
      const claims = await verifyWithIdp(idp, lastToken(), 'payments');
      expect(claims).toMatchObject({ sub: 'system:serviceaccount:shop:orders', act: { sub: 'exchanger' } });
      expect(sts.forms[0]!.get('subject_token_type')).toBe('urn:ietf:params:oauth:token-type:jwt');
      expect(sts.forms[0]!.get('resource')).toBe('payments');
      // A subject token that no longer verifies: the STS refuses and the OAuth error reaches the logs and metrics.
      writeFileSync(subjectFile, await idp.mint({ aud: 'someone-else', sub: 'x' }));
      const out = await startSidecar(
        { service: 'orders', outbound: { tokenSource: { type: 'token_exchange', tokenEndpoint: sts.url, clientId: 'exchanger', clientSecret: 'exchanger-secret', subjectTokenFile: subjectFile }, routes: [{ host: 'payments', target: app.url, audience: 'payments' }] } },
        { waitReady: false },
      );
      running.push(out);
      expect(await out.waitForLog((l) => l.event === 'token_fetch_failed')).toMatchObject({ oauthError: 'invalid_grant', source: 'token_exchange' });
      expect(sts.forms.at(-1)!.get('subject_token')).not.toBe(sts.forms[0]!.get('subject_token'));
      expect((await call(out)).json()).toMatchObject({ reason: 'token_unavailable', oauth_error: 'invalid_grant' });
    } finally {
      await sts.close();
    }
  });

  it('file: follows rotation, and keeps the last good token while the file is missing', async () => {
    const path = join(dir, 'token-payments');
    const short = await idp.mint({ aud: 'payments', sub: 'orders', exp: epochSeconds() + 8, jti: 'file-1' });
    writeFileSync(path, short);
    const s = await sidecarWith({ type: 'file', path: join(dir, 'token-{audience}') });
    expect((await call(s)).status).toBe(200);
    expect(lastToken()).toBe(short);
    rmSync(path);
    // Renewal at 50-80% of the 8 s lifetime finds no file: an error, but the last good token keeps working.
    expect(await s.waitForLog((l) => l.event === 'token_fetch_failed')).toMatchObject({ source: 'file', keepingToken: true });
    expect((await call(s)).status).toBe(200);
    expect(lastToken()).toBe(short);
    const rotated = await idp.mint({ aud: 'payments', sub: 'orders', jti: 'file-2' });
    writeFileSync(path, rotated);
    await s.waitForLog((l) => l.event === 'token_issued' && l.jti === 'file-2');
    expect((await call(s)).status).toBe(200);
    expect(lastToken()).toBe(rotated);
    expect(s.output()).not.toContain(rotated);
  });

  it('file: a file replaced atomically (write + rename) is picked up within about a second, long before the minute recheck', async () => {
    const path = join(dir, 'swapped-payments');
    const first = await idp.mint({ aud: 'payments', sub: 'orders', exp: epochSeconds() + 3600, jti: 'swap-1' });
    writeFileSync(path, first);
    const s = await sidecarWith({ type: 'file', path: join(dir, 'swapped-{audience}') });
    expect((await call(s)).status).toBe(200);
    expect(lastToken()).toBe(first);
    const second = await idp.mint({ aud: 'payments', sub: 'orders', exp: epochSeconds() + 3600, jti: 'swap-2' });
    writeFileSync(join(dir, 'swapped.tmp'), second);
    renameSync(join(dir, 'swapped.tmp'), path);
    // Calls every 100 ms until one carries the new token: 50 polls is 5 s, far below the 60 s recheck.
    let polls = 0;
    for (; polls < 50; polls++) {
      expect((await call(s)).status).toBe(200);
      if (lastToken() === second) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(lastToken()).toBe(second);
    for (let i = 0; i < 3; i++) {
      expect((await call(s)).status).toBe(200);
      expect(lastToken()).toBe(second);
    }
    // Each token is announced once; the stat polls in between read nothing and log nothing.
    expect(s.logs.filter((l) => l.event === 'token_issued').map((l) => l.jti)).toEqual(['swap-1', 'swap-2']);
    expect(s.logs.filter((l) => l.event === 'token_fetch_failed')).toEqual([]);
    expect(s.output()).not.toContain(first);
    expect(s.output()).not.toContain(second);
  });

  it('github_actions: asks the Actions token endpoint (dev issuer emulation) with &audience= and the request token', async () => {
    const s = await sidecarWith(
      { type: 'github_actions' },
      { env: { ACTIONS_ID_TOKEN_REQUEST_URL: `${idp.issuer}/github-actions/token?client=orders`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'orders-secret' } },
    );
    expect((await call(s)).status).toBe(200);
    expect(await verifyWithIdp(idp, lastToken(), 'payments')).toMatchObject({ sub: 'repo:acme/orders:ref:refs/heads/main', repository: 'acme/orders' });
    expect(s.output()).not.toContain('orders-secret');
  });

  it('env: takes the token from the variable named after the audience', async () => {
    const token = await idp.mint({ aud: 'payments', sub: 'gitlab-job' });
    const s = await sidecarWith({ type: 'env', variable: 'ID_TOKEN_{audience}' }, { env: { ID_TOKEN_payments: token } });
    expect((await call(s)).status).toBe(200);
    expect(lastToken()).toBe(token);
  });

  it('env: an unset variable leaves the sidecar not ready and answers 503 naming the variable', async () => {
    const s = await sidecarWith({ type: 'env', variable: 'ID_TOKEN_{audience}' }, { waitReady: false });
    await s.waitForLog((l) => l.event === 'token_fetch_failed');
    expect((await fetch(`${s.admin}/readyz`)).status).toBe(503);
    const r = await call(s);
    expect(r.status).toBe(503);
    expect(r.json()).toMatchObject({ reason: 'token_unavailable', error: 'environment variable ID_TOKEN_payments is not set or empty' });
  });
});
