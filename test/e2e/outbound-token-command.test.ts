import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, writeConfig } from '../support/sidecar.js';
import { verifyWithIdp } from './outbound-support.js';

const dir = mkdtempSync(join(tmpdir(), 'outbound-token-cmd-'));
const key = generateKeyPairSync('rsa', { modulusLength: 2048 });
let idp: TestIdp;
let configPath: string;

beforeAll(async () => {
  idp = await startIdp({
    clients: [
      { clientId: 'orders', clientSecret: 'orders-secret' },
      { clientId: 'ci-job', privateKey: { key: key.privateKey, alg: 'RS256' } },
    ],
  });
  const keyFile = join(dir, 'ci-job.pem');
  writeFileSync(keyFile, key.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  configPath = writeConfig(
    {
      service: 'orders',
      outbound: {
        tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecretFile: writeSecret('orders-secret\n') },
        routes: [
          { host: 'payments', audience: 'payments', scopes: ['pay'] },
          { host: 'deployer', audience: 'deployer', tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'ci-job', privateKeyFile: keyFile } },
        ],
      },
    },
    dir,
  );
});
afterAll(() => idp.close());

function writeSecret(text: string): string {
  const p = join(dir, 'secret');
  writeFileSync(p, text);
  return p;
}

describe('oidc-sidecar token', () => {
  it("prints only the token (for $(...) in CI), with the route's source and scopes", async () => {
    const r = await runCli(['token', '--config', configPath, '--audience', 'payments']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
    expect(await verifyWithIdp(idp, r.stdout.trim(), 'payments')).toMatchObject({ sub: 'orders', scope: 'pay' });
  });

  it("uses the route's own source (private_key_jwt) and --scope overrides the route scopes", async () => {
    const r = await runCli(['token', '-c', configPath, '-a', 'deployer', '--scope', 'deploy', '--scope', 'audit']);
    expect(r.code).toBe(0);
    expect(await verifyWithIdp(idp, r.stdout.trim(), 'deployer')).toMatchObject({ sub: 'ci-job', scope: 'audit deploy' });
  });

  it('falls back to the default tokenSource for an audience no route names', async () => {
    const r = await runCli(['token', '--config', configPath, '--audience', 'https://reports.example']);
    expect(r.code).toBe(0);
    expect((await verifyWithIdp(idp, r.stdout.trim(), 'https://reports.example')).sub).toBe('orders');
  });

  it('fails with one line on stderr, nothing on stdout and exit 1 when the IdP refuses', async () => {
    writeSecret('not-the-secret');
    try {
      const r = await runCli(['token', '--config', configPath, '--audience', 'payments']);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^oidc-sidecar: token endpoint refused the request \(HTTP 401\): invalid_client[^\n]*\n$/);
      expect(r.stderr).not.toContain('not-the-secret');
    } finally {
      writeSecret('orders-secret\n');
    }
  });

  it('explains usage errors: no --audience, no outbound section, unreadable key file', async () => {
    const noAudience = await runCli(['token', '--config', configPath]);
    expect(noAudience.code).toBe(1);
    expect(noAudience.stderr).toMatch(/Missing required argument: audience/);
    expect(noAudience.stdout).toBe('');
    const inboundOnly = writeConfig({ service: 's', inbound: { target: 'http://127.0.0.1:1', audience: 'a', issuers: [{ issuer: 'http://127.0.0.1:2' }] } }, mkdtempSync(join(tmpdir(), 'x-')));
    const r2 = await runCli(['token', '--config', inboundOnly, '--audience', 'a']);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/the config has no outbound section/);
    const badKey = writeConfig(
      { service: 's', outbound: { tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'x', privateKeyFile: join(dir, 'nope.pem') } } },
      mkdtempSync(join(tmpdir(), 'x-')),
    );
    const r3 = await runCli(['token', '--config', badKey, '--audience', 'a']);
    expect(r3.code).toBe(1);
    expect(r3.stderr).toMatch(/outbound\.tokenSource\.privateKeyFile: cannot read .*nope\.pem: no such file/);
    expect(r3.stdout).toBe('');
  });

  it('refuses --audience given twice rather than print a token for both joined ("payments,deployer")', async () => {
    const r = await runCli(['token', '--config', configPath, '--audience', 'payments', '-a', 'deployer']);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toBe('oidc-sidecar: --audience is given more than once: a token is for one audience (run the command once per audience)\n');
  });

  it('reads a file source only under {audience} filled with one file name: --audience ../x is refused, not the token of another file', async () => {
    const tokens = mkdtempSync(join(tmpdir(), 'tokens-'));
    const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const jwt = `${part({ alg: 'RS256' })}.${part({ aud: 'ledger-admin', exp: Math.floor(Date.now() / 1000) + 600 })}.c2ln`;
    writeFileSync(join(tokens, 'ledger-admin'), jwt);
    mkdirSync(join(tokens, 'mesh'));
    const fileConfig = writeConfig({ service: 's', outbound: { tokenSource: { type: 'file', path: join(tokens, 'mesh', '{audience}') } } }, mkdtempSync(join(tmpdir(), 'x-')));
    const r = await runCli(['token', '--config', fileConfig, '--audience', '../ledger-admin']);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toMatch(/^oidc-sidecar: the audience "\.\.\/ledger-admin" cannot fill \{audience\} in .*: it must be one file name/);
    expect(r.stderr).not.toContain(jwt);
  });

  it('refuses an empty --scope rather than request `scope=` (or a list with a blank entry)', async () => {
    for (const scopes of [[''], ['pay', ' ']]) {
      const r = await runCli(['token', '--config', configPath, '--audience', 'payments', ...scopes.flatMap((s) => ['--scope', s])]);
      expect(r).toMatchObject({ code: 1, stdout: '' });
      expect(r.stderr).toBe('oidc-sidecar: --scope needs a scope name; an empty one is not a scope (RFC 6749 §3.3)\n');
    }
    // A bare --scope at the end of the line: it used to fall back to the route's scopes, exit 0.
    const bare = await runCli(['token', '--config', configPath, '--audience', 'payments', '--scope']);
    expect(bare).toMatchObject({ code: 1, stdout: '', stderr: 'oidc-sidecar: Not enough arguments following: scope (see "oidc-sidecar token --help")\n' });
  });

  it("reads only the files of the source it uses: another route's missing secret, key or CA file does not stop it", async () => {
    // As in a CI job handed the pod's config: the other routes' sources name files that exist only in the pod.
    const podOnly = (name: string) => join(dir, `pod-only-${name}`);
    const config = writeConfig(
      {
        service: 'orders',
        outbound: {
          tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecretFile: writeSecret('orders-secret\n') },
          routes: [
            { host: 'ledger', audience: 'ledger', tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'ledger', clientSecretFile: podOnly('ledger-secret') } },
            { host: 'payments', audience: 'payments', scopes: ['pay'] },
            { host: 'deployer', audience: 'deployer', tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'ci-job', privateKeyFile: podOnly('ci-job.pem') } },
            { host: 'audit', audience: 'audit', tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'orders', clientSecret: 'orders-secret', caFile: podOnly('ca.crt') } },
          ],
        },
      },
      mkdtempSync(join(tmpdir(), 'x-')),
    );
    const r = await runCli(['token', '--config', config, '--audience', 'payments']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(await verifyWithIdp(idp, r.stdout.trim(), 'payments')).toMatchObject({ sub: 'orders', scope: 'pay' });

    // The source it uses must have its files, and the error names the one that is missing, and its line (as YAML,
    // the config above has each key on a line of its own).
    for (const [audience, key, file, line] of [
      ['ledger', 'outbound.routes.0.tokenSource.clientSecretFile', podOnly('ledger-secret'), 15],
      ['deployer', 'outbound.routes.2.tokenSource.privateKeyFile', podOnly('ci-job.pem'), 26],
      ['audit', 'outbound.routes.3.tokenSource.caFile', podOnly('ca.crt'), 34],
    ] as const) {
      const own = await runCli(['token', '--config', config, '--audience', audience]);
      expect([own.code, own.stdout], audience).toEqual([1, '']);
      expect(own.stderr, audience).toBe(`oidc-sidecar: invalid config: ${key}: cannot read ${file}: no such file (line ${line})\n`);
    }
  });

  it('names every missing file of the source it uses at once, as run does: its CA bundle and its secret', async () => {
    const missing = (name: string) => join(dir, `missing-${name}`);
    const config = writeConfig(
      {
        service: 'orders',
        outbound: {
          tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'orders', clientSecretFile: missing('secret'), caFile: missing('ca.crt') },
          routes: [{ host: 'payments', audience: 'payments' }],
        },
      },
      mkdtempSync(join(tmpdir(), 'x-')),
    );
    const r = await runCli(['token', '--config', config, '--audience', 'payments']);
    expect([r.code, r.stdout]).toEqual([1, '']);
    expect(r.stderr).toContain(`outbound.tokenSource.caFile: cannot read ${missing('ca.crt')}: no such file`);
    expect(r.stderr).toContain(`outbound.tokenSource.clientSecretFile: cannot read ${missing('secret')}: no such file`);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  });

  it("reads only the token sources' CA bundles: an issuer's or a route target's caFile that exists only in the pod does not stop it", async () => {
    const podOnly = join(dir, 'pod-only-ca.crt');
    const config = (sourceCaFile?: string) =>
      writeConfig(
        {
          service: 'orders',
          inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://kubernetes.default.svc', caFile: podOnly }] },
          outbound: {
            tokenSource: { type: 'client_credentials', tokenEndpoint: idp.tokenEndpoint, clientId: 'orders', clientSecret: 'orders-secret', ...(sourceCaFile ? { caFile: sourceCaFile } : {}) },
            routes: [{ host: 'ledger', target: 'https://ledger.internal', caFile: podOnly, audience: 'ledger' }],
          },
        },
        mkdtempSync(join(tmpdir(), 'x-')),
      );
    const r = await runCli(['token', '--config', config(), '--audience', 'ledger']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect((await verifyWithIdp(idp, r.stdout.trim(), 'ledger')).sub).toBe('orders');

    // The bundle of the source it uses is still read and checked.
    const own = await runCli(['token', '--config', config(podOnly), '--audience', 'ledger']);
    expect([own.code, own.stdout]).toEqual([1, '']);
    expect(own.stderr).toMatch(/^oidc-sidecar: invalid config: outbound\.tokenSource\.caFile: cannot read \S+: no such file \(line \d+\)\n$/);
    expect(own.stderr).toContain(`cannot read ${podOnly}: no such file`);
  });
});
