import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import { BIN, runCli } from '../support/sidecar.js';
import { clientAssertion } from '../support/idp.js';
import { DEFAULT_DEV_CLIENTS } from '../../src/dev/clients-file.js';

interface DevIssuerProcess {
  issuer: string;
  /** Where it listens (differs from the issuer URL when --issuer is given). */
  local: string;
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  stop(): Promise<number | null>;
}

const running: DevIssuerProcess[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((p) => p.stop()));
});

/** Starts `oidc-sidecar dev-issuer ARGS` and resolves once it logged its `started` event. */
function startDevIssuerCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<DevIssuerProcess> {
  const child = spawn(process.execPath, [BIN, 'dev-issuer', ...(args.includes('--port') ? [] : ['--port', '0']), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let done = false;
  void exited.then(() => (done = true));
  const proc = (issuer: string, port: number): DevIssuerProcess => ({
    issuer,
    local: `http://127.0.0.1:${port}`,
    child,
    stdout: () => out,
    stderr: () => err,
    async stop() {
      if (!done) child.kill('SIGTERM');
      return exited;
    },
  });
  return new Promise((resolve, reject) => {
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      for (const line of out.split('\n')) {
        if (!line.includes('"event":"started"')) continue;
        const started = JSON.parse(line) as { issuer: string; port: number };
        const p = proc(started.issuer, started.port);
        running.push(p);
        return resolve(p);
      }
    });
    void exited.then((code) => reject(new Error(`dev-issuer exited with ${code} before starting.\nstdout:\n${out}\nstderr:\n${err}`)));
  });
}

async function token(issuer: string, form: Record<string, string>, basic?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(basic ? { authorization: `Basic ${Buffer.from(basic).toString('base64')}` } : {}) },
    body: new URLSearchParams(form),
  });
  return { status: res.status, body: await res.json() };
}

async function verify(issuer: string, jwt: string, audience: string) {
  const jwks = (await (await fetch(`${issuer}/jwks`)).json()) as JSONWebKeySet;
  return jwtVerify(jwt, createLocalJWKSet(jwks), { issuer, audience });
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'dev-issuer-test-'));
}

describe('oidc-sidecar dev-issuer', () => {
  it('--help names the built-in clients from their table, as the README does, and describes every option', async () => {
    const r = await runCli(['dev-issuer', '--help']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const ids = DEFAULT_DEV_CLIENTS.map((c) => c.clientId);
    expect(r.stdout.replace(/\s+/g, ' ')).toContain(`default: built-in demo clients ${ids.join(', ')} [string]`);
    // The README's table of built-in clients: the first column of each row.
    const readme = readFileSync(join(import.meta.dirname, '../../README.md'), 'utf8');
    const table = readme.split('**Built-in clients**')[1]!.split('\n\n')[1]!;
    const documented = table.split('\n').slice(2).flatMap((row) => [...row.split('|')[1]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!));
    expect(documented).toEqual(ids);
    // An option line without a description goes straight from its name to its [type].
    const options = r.stdout.split('\n').filter((l) => /^\s+(-\w, )?--[\w-]+/.test(l));
    expect(options.length).toBeGreaterThanOrEqual(9);
    for (const line of options) expect(line, line).toMatch(/^\s+(-\w, )?--[\w-]+\s+[^\s[]/);
  });

  it('warns loudly, serves discovery, and issues at+jwt tokens to the built-in clients; exits 0 on SIGTERM', async () => {
    const p = await startDevIssuerCli([]);
    expect(p.stderr()).toContain('DEVELOPMENT ONLY - never use in production');
    expect(p.stderr()).toContain(`issuer:         ${p.issuer}`);
    const meta = (await (await fetch(`${p.issuer}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    expect(meta).toMatchObject({ issuer: p.issuer, token_endpoint: `${p.issuer}/token`, jwks_uri: `${p.issuer}/jwks` });

    const viaAudience = await token(p.issuer, { grant_type: 'client_credentials', audience: 'payments' }, 'orders:orders-secret');
    expect(viaAudience.status).toBe(200);
    const { payload, protectedHeader } = await verify(p.issuer, viaAudience.body.access_token, 'payments');
    expect(protectedHeader.typ).toBe('at+jwt');
    expect(payload).toMatchObject({ sub: 'orders', aud: 'payments', iss: p.issuer });
    expect(payload.exp! - payload.iat!).toBe(300);

    const ci = await token(p.issuer, { grant_type: 'client_credentials', resource: 'deployer' }, 'github-main:github-main-secret');
    expect((await verify(p.issuer, ci.body.access_token, 'deployer')).payload).toMatchObject({
      sub: 'repo:acme/app:environment:production',
      repository: 'acme/app',
      ref: 'refs/heads/main',
      environment: 'production',
    });

    // The start-up lines: a banner whose box is square, and a curl line that works as pasted into a shell.
    const banner = p.stderr().split('\n').filter((l) => l.startsWith('!!'));
    expect(banner.length).toBeGreaterThan(2);
    expect(new Set(banner.map((l) => l.length)).size).toBe(1);
    const tryCurl = /^ {2}try: (curl .*)$/m.exec(p.stderr())![1]!;
    // The shell's reading of the line, with printf standing in for curl: its words, or its complaint.
    const words = spawnSync('bash', ['-c', tryCurl.replace(/^curl /, "printf '%s\\n' ")], { encoding: 'utf8' });
    expect([words.status, words.stderr]).toEqual([0, '']);
    const argv = words.stdout.trimEnd().split('\n');
    expect(argv.at(-1)).toBe(`${p.issuer}/token`);
    const form = Object.fromEntries(argv.flatMap((w, i) => (argv[i - 1] === '-d' ? [w.split('=') as [string, string]] : [])));
    const pasted = await token(p.issuer, form, argv[argv.indexOf('-u') + 1]);
    expect(pasted.status).toBe(200);

    expect(await p.stop()).toBe(0);
    // Issuance is logged, but never the token or the secret (the built-in secrets are public: the curl line above
    // names one on stderr, but no log line does).
    expect(p.stdout()).toContain('"event":"dev_token_issued"');
    for (const secret of [viaAudience.body.access_token, ci.body.access_token, pasted.body.access_token]) {
      expect(p.stdout() + p.stderr()).not.toContain(secret);
    }
    for (const secret of ['orders-secret', 'github-main-secret']) expect(p.stdout()).not.toContain(secret);
  });

  it('loads clients from a YAML file: ${ENV} secrets, private_key_jwt with a PEM public key, CI claims, ttl', async () => {
    const dir = tempDir();
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'signer.pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(
      join(dir, 'clients.yaml'),
      [
        'accessTokenTtlSeconds: 90',
        'alg: ES256',
        'clients:',
        '  - clientId: web',
        '    clientSecret: ${WEB_SECRET}',
        '    authMethod: client_secret_post',
        '  - clientId: signer',
        '    publicKeyFile: signer.pub.pem',
        '  - clientId: ci',
        '    clientSecret: ci-secret',
        '    subject: repo:acme/app:ref:refs/heads/main',
        '    claims: { repository: acme/app, ref: refs/heads/main, environment: staging }',
      ].join('\n'),
    );
    const p = await startDevIssuerCli(['--clients', join(dir, 'clients.yaml')], { WEB_SECRET: 'from-env' });

    const web = await token(p.issuer, { grant_type: 'client_credentials', audience: 'orders', client_id: 'web', client_secret: 'from-env' });
    expect(web.status).toBe(200);
    expect(decodeProtectedHeader(web.body.access_token).alg).toBe('ES256');
    const { payload } = await verify(p.issuer, web.body.access_token, 'orders');
    expect(payload.exp! - payload.iat!).toBe(90);

    const assertion = await clientAssertion('signer', `${p.issuer}/token`, { key: privateKey, alg: 'ES256' });
    const signed = await token(p.issuer, {
      grant_type: 'client_credentials',
      resource: 'payments',
      client_id: 'signer',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    });
    expect(signed.status).toBe(200);
    expect((await verify(p.issuer, signed.body.access_token, 'payments')).payload.sub).toBe('signer');

    const ci = await token(p.issuer, { grant_type: 'client_credentials', audience: 'deployer' }, 'ci:ci-secret');
    expect((await verify(p.issuer, ci.body.access_token, 'deployer')).payload).toMatchObject({ sub: 'repo:acme/app:ref:refs/heads/main', environment: 'staging' });
  });

  it('starts with the clients file example in the README, and its clients work as documented', async () => {
    const doc = readFileSync(join(import.meta.dirname, '../../README.md'), 'utf8');
    const example = /<!-- dev-clients-example -->\n```yaml\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(example).toBeDefined();
    const dir = tempDir();
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'signer.pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(join(dir, 'clients.yaml'), example!);
    const p = await startDevIssuerCli(['--clients', join(dir, 'clients.yaml')]);
    expect(p.stderr()).toContain('clients:        orders, batch, signer, pod, ci');
    const ci = await token(p.issuer, { grant_type: 'client_credentials' }, 'ci:ci-secret');
    expect(decodeProtectedHeader(ci.body.access_token).alg).toBe('ES256');
    const { payload } = await verify(p.issuer, ci.body.access_token, 'deployer');
    expect(payload).toMatchObject({ sub: 'repo:acme/app:ref:refs/heads/main', environment: 'staging' });
    expect(payload.exp! - payload.iat!).toBe(600);
    const orders = await token(p.issuer, { grant_type: 'client_credentials', audience: 'payments' }, 'orders:orders-secret');
    expect(orders.status).toBe(200);
  });

  it('keeps its signing key in --key-file (created 0600 if missing), so tokens verify across restarts', async () => {
    const keyFile = join(tempDir(), 'keys', 'dev-issuer.jwks.json');
    const first = await startDevIssuerCli(['--key-file', keyFile]);
    expect(existsSync(keyFile)).toBe(true);
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const issued = await token(first.issuer, { grant_type: 'client_credentials', audience: 'payments' }, 'orders:orders-secret');
    const port = new URL(first.issuer).port;
    expect(await first.stop()).toBe(0);

    const second = await startDevIssuerCli(['--key-file', keyFile, '--port', port]);
    expect(second.issuer).toBe(first.issuer);
    expect((await verify(second.issuer, issued.body.access_token, 'payments')).payload.sub).toBe('orders');
    expect(JSON.parse(readFileSync(keyFile, 'utf8')).keys).toHaveLength(1);
    expect(await second.stop()).toBe(0);

    // The key held signs: another algorithm asked for is refused, where it was ignored and tokens came out RS256.
    const es = await runCli(['dev-issuer', '--port', '0', '--key-file', keyFile, '--alg', 'ES256']);
    expect([es.code, es.stderr]).toEqual([1, `oidc-sidecar: --alg ES256: key file ${keyFile} already holds an RS256 key, which signs the tokens; remove the file for a new ES256 key, or ask for RS256\n`]);
  });

  it('an https --issuer is served behind a proxy that terminates TLS: discovery names https endpoints, as the sidecar requires', async () => {
    const p = await startDevIssuerCli(['--issuer', 'https://idp.test']);
    const viaProxy = await new Promise<Record<string, unknown>>((resolve, reject) => {
      httpGet(`${p.local}/.well-known/openid-configuration`, { headers: { host: 'idp.test', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'idp.test' } }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve(JSON.parse(body) as Record<string, unknown>));
      }).on('error', reject);
    });
    expect(viaProxy).toMatchObject({ issuer: 'https://idp.test', jwks_uri: 'https://idp.test/jwks', token_endpoint: 'https://idp.test/token' });
    // An http issuer trusts no forwarded header: a client cannot move the endpoints it names.
    const plain = await startDevIssuerCli([]);
    const direct = (await (await fetch(`${plain.local}/.well-known/openid-configuration`, { headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.test' } })).json()) as Record<string, unknown>;
    expect(direct.jwks_uri).toBe(`${plain.issuer}/jwks`);
  });

  it('uses --issuer as the identifier in discovery and tokens (for compose service names)', async () => {
    const p = await startDevIssuerCli(['--issuer', 'http://dev-issuer:9000']);
    expect(p.issuer).toBe('http://dev-issuer:9000');
    const meta = (await (await fetch(`${p.local}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    // The identifier is fixed; endpoint URLs follow the Host the client used (oidc-provider), so they stay reachable.
    expect(meta).toMatchObject({ issuer: 'http://dev-issuer:9000', token_endpoint: `${p.local}/token`, jwks_uri: `${p.local}/jwks` });
    const issued = await token(p.local, { grant_type: 'client_credentials', audience: 'payments' }, 'orders:orders-secret');
    expect(decodeJwt(issued.body.access_token).iss).toBe('http://dev-issuer:9000');
  });

  it('serves an --issuer with a path under that path, where discovery is looked up (its URLs all answered 404)', async () => {
    const p = await startDevIssuerCli(['--issuer', 'http://dev-issuer:9000/realms/dev']);
    expect(p.issuer).toBe('http://dev-issuer:9000/realms/dev');
    const base = `${p.local}/realms/dev`;
    const discovery = await fetch(`${base}/.well-known/openid-configuration`);
    expect(discovery.status).toBe(200);
    expect(await discovery.json()).toMatchObject({ issuer: 'http://dev-issuer:9000/realms/dev', token_endpoint: `${base}/token`, jwks_uri: `${base}/jwks` });
    expect((await fetch(`${base}/jwks`)).status).toBe(200);
    const issued = await token(base, { grant_type: 'client_credentials', audience: 'payments' }, 'orders:orders-secret');
    expect(decodeJwt(issued.body.access_token)).toMatchObject({ iss: 'http://dev-issuer:9000/realms/dev', sub: 'orders' });
    const ci = await fetch(`${base}/github-actions/token?client=github-main&audience=deployer`, { headers: { authorization: 'bearer github-main-secret' } });
    expect(ci.status).toBe(200);
    // Outside the path there is nothing: a client pointed at the bare origin is told where the issuer is.
    const outside = await fetch(`${p.local}/.well-known/openid-configuration`);
    expect([outside.status, await outside.json()]).toEqual([404, { error: 'invalid_request', error_description: 'this issuer is served under /realms/dev' }]);
  });

  it('emulates the GitHub Actions OIDC request endpoint for CI-shaped clients', async () => {
    const p = await startDevIssuerCli([]);
    const url = `${p.issuer}/github-actions/token?client=github-feature&audience=deployer`;
    const res = await fetch(url, { headers: { authorization: 'bearer github-feature-secret' } });
    expect(res.status).toBe(200);
    const { value } = (await res.json()) as { value: string };
    const { payload } = await verify(p.issuer, value, 'deployer');
    expect(payload).toMatchObject({ sub: 'repo:acme/app:ref:refs/heads/feature/login', ref: 'refs/heads/feature/login', repository: 'acme/app' });
    expect((await fetch(url, { headers: { authorization: 'bearer wrong' } })).status).toBe(401);
    expect((await fetch(url)).status).toBe(401);
    // The client secret pasted as the client by mistake: refused, and the log names no client it was not given one of.
    const swapped = `${p.issuer}/github-actions/token?client=github-feature-secret&audience=deployer`;
    expect((await fetch(swapped, { headers: { authorization: 'bearer github-feature' } })).status).toBe(401);
    const refusals = () => p.stdout().split('\n').filter((l) => l.includes('"dev_token_refused"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    // Its log is written asynchronously (pino): wait for the third line.
    await vi.waitFor(() => expect(refusals()).toHaveLength(3));
    expect(refusals().map(({ client, error }) => ({ client, error }))).toEqual([
      { client: 'github-feature', error: 'invalid_client' },
      { client: 'github-feature', error: 'invalid_client' },
      { client: undefined, error: 'unknown_client' },
    ]);
    expect(p.stdout()).not.toContain('github-feature-secret');
  });

  it('rejects an invalid clients file with every problem as a key path, and no stack trace', async () => {
    const dir = tempDir();
    const file = join(dir, 'clients.yaml');
    writeFileSync(
      file,
      ['clients:', '  - clientId: a', '  - clientId: b', '    clientSecret: s', '    scret: typo', '  - clientId: c', '    clientSecret: t', '    authMethod: private_key_jwt', 'alg: HS256'].join('\n'),
    );
    const r = await runCli(['dev-issuer', '--port', '0', '--clients', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^oidc-sidecar: invalid clients file [^\n]+ \(5 problems\): [^\n]+\n$/);
    expect(r.stderr).toContain(`invalid clients file ${file}`);
    // Inputs are checked before oidc-provider is even loaded.
    expect(r.stderr).not.toContain('oidc-provider');
    expect(r.stderr).toContain('clients.0.clientSecret: client_secret_basic needs a clientSecret');
    expect(r.stderr).toContain('clients.1.scret: unknown key');
    expect(r.stderr).toContain('clients.2.jwks: private_key_jwt needs exactly one of jwks, publicKeyFile, jwksUri');
    expect(r.stderr).toContain('clients.2.clientSecret: a private_key_jwt client takes no clientSecret');
    expect(r.stderr).toMatch(/; alg: Invalid option/);

    writeFileSync(file, ['clients:', '  - { clientId: a, clientSecret: x }', '  - { clientId: a, clientSecret: y }'].join('\n'));
    const dupes = await runCli(['dev-issuer', '--port', '0', '--clients', file]);
    expect([dupes.code, dupes.stderr]).toEqual([1, expect.stringContaining('clients.1.clientId: duplicate clientId "a"')]);
  });

  it('a YAML error in the clients file, which holds client secrets, names the line and never the text; /dev/zero is refused at 1 MiB', async () => {
    const file = join(tempDir(), 'clients.yaml');
    writeFileSync(file, ['clients:', '  - clientId: a', '    clientSecret: *Sup3rS3cret'].join('\n'));
    const alias = await runCli(['dev-issuer', '--port', '0', '--clients', file]);
    expect([alias.code, alias.stderr]).toEqual([1, `oidc-sidecar: invalid clients file ${file}: an alias (*name) names no anchor (&name) set before it; quote a value that starts with * (line 3)\n`]);
    writeFileSync(file, ['clients:', '  - clientId: a', '    clientSecret: >Sup3rS3cret'].join('\n'));
    const block = await runCli(['dev-issuer', '--port', '0', '--clients', file]);
    expect([block.code, block.stderr]).toEqual([1, expect.stringMatching(/^oidc-sidecar: invalid clients file .* \(line 3\)\n$/)]);
    expect(block.stderr).not.toContain('Sup3r');
    const zero = await runCli(['dev-issuer', '--port', '0', '--clients', '/dev/zero']);
    expect([zero.code, zero.stderr]).toEqual([1, 'oidc-sidecar: invalid clients file /dev/zero: larger than 1 MiB, which no clients file needs\n']);
  });

  it('refuses a key file whose key cannot sign with its alg: it started and then failed every token request with server_error', async () => {
    const dir = tempDir();
    const keyFile = (name: string, key: ReturnType<typeof generateKeyPairSync>['privateKey'], alg: string) => {
      const path = join(dir, `${name}.json`);
      writeFileSync(path, JSON.stringify({ keys: [{ ...key.export({ format: 'jwk' }), alg }] }));
      return path;
    };
    const cases: Array<[string, string]> = [
      [keyFile('rsa1024', generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey, 'RS256'), 'alg RS256 needs an RSA key of at least 2048 bits, got 1024'],
      [keyFile('p384', generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey, 'ES256'), 'alg ES256 needs a P-256 key (crv P-256), got P-384'],
      [keyFile('ed448', generateKeyPairSync('ed448').privateKey, 'EdDSA'), 'alg EdDSA needs an Ed25519 key (crv Ed25519), got Ed448'],
    ];
    for (const [path, message] of cases) {
      const r = await runCli(['dev-issuer', '--port', '0', '--key-file', path]);
      expect([r.code, r.stderr]).toEqual([1, `oidc-sidecar: key file ${path}: keys.0: ${message}\n`]);
    }
  });

  it('gives one clear line for a missing clients file, a broken key file, a bad port and a port in use', async () => {
    const dir = tempDir();
    const missing = await runCli(['dev-issuer', '--clients', join(dir, 'nope.yaml')]);
    expect([missing.code, missing.stderr]).toEqual([1, `oidc-sidecar: cannot read clients file ${join(dir, 'nope.yaml')}: no such file\n`]);

    writeFileSync(join(dir, 'nokey.yaml'), 'clients:\n  - { clientId: x, authMethod: private_key_jwt, publicKeyFile: gone.pem }\n');
    const noKey = await runCli(['dev-issuer', '--port', '0', '--clients', join(dir, 'nokey.yaml')]);
    expect([noKey.code, noKey.stderr]).toEqual([1, `oidc-sidecar: invalid clients file ${join(dir, 'nokey.yaml')}: clients.0.publicKeyFile: cannot read ${join(dir, 'gone.pem')}: no such file\n`]);

    writeFileSync(join(dir, 'bad.json'), '{"keys": [{"kty": "RSA", "alg": "RS256", "n": "x", "e": "AQAB"}]}');
    const badKey = await runCli(['dev-issuer', '--port', '0', '--key-file', join(dir, 'bad.json')]);
    expect(badKey.code).toBe(1);
    expect(badKey.stderr).toMatch(/^oidc-sidecar: key file .*: keys\.0: a private key is needed[^\n]*\n$/);

    // A directory that cannot be made is one line too (Node's recursive mkdir never returned under /proc).
    if (process.platform === 'linux') {
      const underProc = await runCli(['dev-issuer', '--port', '0', '--key-file', '/proc/oidc-sidecar-test/keys/key.json']);
      // The reason is the kernel's (ENOENT here; EPERM in some sandboxes): what matters is one line, and no hang.
      expect([underProc.code, underProc.stderr]).toEqual([1, expect.stringMatching(/^oidc-sidecar: cannot create key file \/proc\/oidc-sidecar-test\/keys\/key\.json: [^\n]+\n$/)]);
    }
    symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
    const dangling = await runCli(['dev-issuer', '--port', '0', '--key-file', join(dir, 'dangling', 'keys', 'key.json')]);
    expect([dangling.code, dangling.stderr]).toEqual([1, `oidc-sidecar: cannot create key file ${join(dir, 'dangling', 'keys', 'key.json')}: a part of the path is not a directory\n`]);
    // Missing directories are made as `mkdir -p` makes them, `.` and `..` included.
    const created = await startDevIssuerCli(['--key-file', `${dir}/a/b/../c/./key.json`]);
    await created.stop();
    expect(JSON.parse(readFileSync(join(dir, 'a', 'c', 'key.json'), 'utf8')).keys).toHaveLength(1);

    // Read bounded, as the clients file is: `--key-file /dev/zero` read until the heap ran out.
    const big = join(dir, 'big.json');
    writeFileSync(big, `{"keys": [${' '.repeat(2 * 1024 * 1024)}]}`);
    const bigKey = await runCli(['dev-issuer', '--port', '0', '--key-file', big]);
    expect([bigKey.code, bigKey.stderr]).toEqual([1, `oidc-sidecar: key file ${big}: larger than 1 MiB, which no key file needs\n`]);
    writeFileSync(join(dir, 'bigpub.yaml'), `clients:\n  - { clientId: x, publicKeyFile: ${big} }\n`);
    const bigPub = await runCli(['dev-issuer', '--port', '0', '--clients', join(dir, 'bigpub.yaml')]);
    expect([bigPub.code, bigPub.stderr]).toEqual([1, `oidc-sidecar: invalid clients file ${join(dir, 'bigpub.yaml')}: clients.0.publicKeyFile: ${big}: larger than 1 MiB, which no public key needs\n`]);

    writeFileSync(join(dir, 'badjwks.yaml'), 'clients:\n  - clientId: x\n    jwks: { keys: [ { kty: EC } ] }\n');
    const badJwks = await runCli(['dev-issuer', '--port', '0', '--clients', join(dir, 'badjwks.yaml')]);
    // The development-only banner comes once the issuer listens: a failed start is the one line alone.
    expect([badJwks.code, badJwks.stderr]).toEqual([1, expect.stringMatching(new RegExp(`^oidc-sidecar: invalid clients file ${join(dir, 'badjwks.yaml')}: clients\\.0\\.jwks\\.keys\\.0: not a usable public key \\([^\\n]+\\)\\n$`))]);
    // Checked at the start as a publicKeyFile's keys are: a broken one started and then refused every request as an
    // unexplained invalid_client; a private or symmetric one failed with no key path.
    const { privateKey: inlinePrivate } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    for (const [key, message] of [
      [{ kty: 'EC', crv: 'P-256', x: 'abc', y: 'def' }, /not a usable public key/],
      [inlinePrivate.export({ format: 'jwk' }), /^a private key \(it has "d"\): give only its public half here$/],
      [{ kty: 'oct', k: 'c2VjcmV0' }, /^a symmetric \(oct\) key is no public key/],
    ] as const) {
      writeFileSync(join(dir, 'inline.yaml'), `clients:\n  - clientId: x\n  - clientId: y\n    jwks: { keys: [ ${JSON.stringify(key)} ] }\n`.replace('- clientId: x\n', '- { clientId: x, clientSecret: s }\n'));
      const inline = await runCli(['dev-issuer', '--port', '0', '--clients', join(dir, 'inline.yaml')]);
      const prefix = `oidc-sidecar: invalid clients file ${join(dir, 'inline.yaml')}: clients.1.jwks.keys.0: `;
      expect(inline.code, JSON.stringify(key)).toBe(1);
      expect(inline.stderr.startsWith(prefix), inline.stderr).toBe(true);
      expect(inline.stderr.slice(prefix.length).trimEnd()).toMatch(message);
    }
    // --issuer with a trailing slash: tokens carried it without, and a config naming it as given refused them all.
    const slash = await runCli(['dev-issuer', '--port', '0', '--issuer', 'http://127.0.0.1:9000/']);
    expect([slash.code, slash.stderr]).toEqual([1, 'oidc-sidecar: --issuer must not end with "/": tokens carry the issuer exactly as given, and the endpoints are under it (got http://127.0.0.1:9000/)\n']);

    const badPort = await runCli(['dev-issuer', '--port', '70000']);
    expect([badPort.code, badPort.stderr]).toEqual([1, 'oidc-sidecar: --port must be 0-65535, got 70000\n']);
    const wordPort = await runCli(['dev-issuer', '--port', 'abc']);
    expect([wordPort.code, wordPort.stderr]).toEqual([1, 'oidc-sidecar: --port must be 0-65535, got abc\n']);
    // yargs reads an empty number as 0, which would have listened on a random port.
    const emptyPort = await runCli(['dev-issuer', '--port', '']);
    expect([emptyPort.code, emptyPort.stderr]).toEqual([1, 'oidc-sidecar: --port must be 0-65535, got an empty value\n']);
    // An empty value is a variable left unset: it fell back to every interface, the public built-in clients, keys in memory.
    for (const [flag, leftOut] of [
      ['--host', 'give an address to listen on (127.0.0.1, or 0.0.0.0 in a container)'],
      ['--clients', 'give a clients file, or leave the flag out for the built-in clients'],
      ['--key-file', 'give a path, or leave the flag out to keep the keys in memory'],
    ]) {
      const empty = await runCli(['dev-issuer', '--port', '0', '--issuer', 'http://dev-issuer:9000', flag!, '']);
      expect([empty.code, empty.stderr], flag).toEqual([1, `oidc-sidecar: ${flag} is empty (a variable left unset?): ${leftOut}\n`]);
    }
    writeFileSync(join(dir, 'null-key.json'), '{"keys":[null]}');
    const nullKey = await runCli(['dev-issuer', '--port', '0', '--key-file', join(dir, 'null-key.json')]);
    expect([nullKey.code, nullKey.stderr]).toEqual([1, `oidc-sidecar: key file ${join(dir, 'null-key.json')}: keys.0: expected a private JWK (a JSON object), got null\n`]);
    for (const ttl of ['1e300', '0', '31536001']) {
      const badTtl = await runCli(['dev-issuer', '--port', '0', '--ttl', ttl]);
      expect([badTtl.code, badTtl.stderr]).toEqual([1, `oidc-sidecar: --ttl must be a whole number of seconds from 1 to 31536000 (a year), got ${Number(ttl)}\n`]);
    }
    writeFileSync(join(dir, 'longttl.yaml'), 'accessTokenTtlSeconds: 1e300\nclients:\n  - { clientId: x, clientSecret: x-secret }\n');
    const longTtl = await runCli(['dev-issuer', '--port', '0', '--clients', join(dir, 'longttl.yaml')]);
    expect([longTtl.code, longTtl.stderr]).toEqual([1, `oidc-sidecar: invalid clients file ${join(dir, 'longttl.yaml')}: accessTokenTtlSeconds: must be a whole number of seconds from 1 to 31536000 (a year)\n`]);
    // A host name that does not resolve: one line that names the option, not getaddrinfo's.
    const noHost = await runCli(['dev-issuer', '--host', 'nonexist.invalid', '--port', '0']);
    expect([noHost.code, noHost.stderr]).toEqual([1, 'oidc-sidecar: cannot listen on nonexist.invalid:0: no such host name here (check --host)\n']);
    // An address this host does not have (TEST-NET-1, RFC 5737): the bind fails, nothing is sent.
    const notHere = await runCli(['dev-issuer', '--host', '192.0.2.1', '--port', '0']);
    expect([notHere.code, notHere.stderr]).toEqual([1, 'oidc-sidecar: cannot listen on 192.0.2.1:0: address not available on this host (check --host)\n']);

    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as { port: number }).port;
    const inUse = await runCli(['dev-issuer', '--port', String(port)]);
    blocker.close();
    expect(inUse.code).toBe(1);
    expect(inUse.stderr).toBe(`oidc-sidecar: cannot listen on 127.0.0.1:${port}: address already in use (try --port 0)\n`);
  });
});
