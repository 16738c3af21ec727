import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeSync, cpSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { selfSignedCert } from '../support/certs.js';
import { BIN, runCli, runCliMain, writeConfig } from '../support/sidecar.js';
import { startUpstream } from '../support/upstream.js';

const valid = {
  service: 'orders',
  inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example' }] },
  outbound: {
    tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', clientSecret: 'hunter2-secret' },
    routes: [{ host: 'payments', audience: 'payments' }],
  },
};

describe('oidc-sidecar CLI', () => {
  it('validate prints the merged config with secrets redacted and exits 0', async () => {
    const base = writeConfig(valid);
    const overlay = writeConfig({ inbound: { clockSkewSeconds: 5 } });
    const r = await runCli(['validate', '--config', base, '--config', overlay]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('clockSkewSeconds: 5');
    expect(r.stdout).toContain('clientSecret: "[redacted]"');
    expect(r.stdout).not.toContain('hunter2-secret');
    expect(r.stderr).toBe('');
  });

  it('validate reads OIDC_SIDECAR_CONFIG when no --config is given, and prints JSON with --json', async () => {
    const r = await runCli(['validate', '--json'], { env: { OIDC_SIDECAR_CONFIG: writeConfig(valid) } });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).inbound.audience).toBe('orders');
  });

  it('validate warns on stderr about a rule an earlier rule hides, and still prints the config and exits 0', async () => {
    const rules = [
      { match: { path: '/**', methods: ['GET'] }, allow: [{ sub: 'reader' }] },
      { match: { path: '/admin/**', methods: ['POST'] }, allow: [{ sub: 'ops' }] },
      { match: { path: '/admin/users', methods: ['GET', 'POST'] }, allow: [{ sub: 'ops' }] },
    ];
    const r = await runCli(['validate', '--config', writeConfig({ ...valid, inbound: { ...valid.inbound, rules } })]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('/admin/users');
    expect(r.stderr).toBe(
      'oidc-sidecar: warning: inbound.rules.2 (/admin/users) is never used: rules 0 (/** for GET (and HEAD)) and 1 (/admin/** for POST) match every request it would match and come first (the first matching rule decides); move it before them, or remove it\n',
    );
  });

  it('validate lists every error as path: message and exits 1, without a stack trace', async () => {
    const bad = writeConfig({ service: 'x', inbound: { target: 'nope', audience: 'a', issuers: [{ issuer: 'https://i', algorithms: ['HS256'] }], rulez: [] } });
    const r = await runCli(['validate', '--config', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('inbound.target: must be an absolute http(s) URL');
    expect(r.stderr).toMatch(/inbound\.issuers\.0\.algorithms\.0: /);
    expect(r.stderr).toContain('inbound.rulez: unknown key');
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stdout).toBe('');
  });

  it('an option that takes one value, given twice, is one line naming it, not an internal error; list options may repeat', async () => {
    const config = writeConfig(valid);
    const cases: [string[], string][] = [
      [['verify', '--config', config, '--token', 'x', '--path', '/a', '--path', '/b'], '--path is given more than once: it takes one value'],
      [['verify', '--config', config, '--token', 'x', '--token', 'y'], '--token is given more than once: it takes one value'],
      [['verify', '--config', config, '--token', 'x', '--method', 'GET', '--method', 'POST'], '--method is given more than once: it takes one value'],
      [['dev-issuer', '--port', '0', '--log-level', 'info', '--log-level', 'warn'], '--log-level is given more than once: it takes one value'],
      [['token', '--config', config, '-a', 'payments', '--audience', 'ledger'], '--audience is given more than once: a token is for one audience (run the command once per audience)'],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args);
      expect([r.code, r.stderr], args.join(' ')).toEqual([1, `oidc-sidecar: ${message}\n`]);
    }
    const twice = await runCli(['validate', '--config', config, '-c', config]);
    expect(twice.code).toBe(0);
    // An option no command has is unknown, given once or twice.
    expect((await runCli(['validate', '--config', config, '--bogus', '1', '--bogus', '2'])).stderr).toMatch(/^oidc-sidecar: Unknown argument: bogus/);
  });

  it('verify and token fill in the ${VAR}s of the side they use only: a variable only the pod sets for the other side, or for the rest, does not stop them', async () => {
    const both = writeConfig({
      // What the pod sets for the keys neither command reads.
      service: '${CLI_TEST_UNSET_SERVICE}',
      admin: { listen: '${CLI_TEST_UNSET_ADMIN}' },
      log: { level: '${CLI_TEST_UNSET_LEVEL}' },
      inbound: { target: 'http://127.0.0.1:9', audience: 'orders', issuers: [{ issuer: '${CLI_TEST_UNSET_ISSUER}' }] },
      outbound: {
        tokenSource: { type: 'client_credentials', tokenEndpoint: 'http://127.0.0.1:9/token', clientId: 'orders', clientSecret: '${CLI_TEST_UNSET_SECRET}' },
        routes: [{ host: 'payments', target: 'http://127.0.0.1:9', audience: 'payments' }],
      },
    });
    const issuer = 'inbound.issuers.0.issuer: environment variable CLI_TEST_UNSET_ISSUER is not set';
    const secret = 'outbound.tokenSource.clientSecret: environment variable CLI_TEST_UNSET_SECRET is not set';
    const verify = await runCli(['verify', '--config', both, '--token', 'x']);
    // One problem each: its own side's variable, and none of the others.
    expect(verify.stderr).toMatch(new RegExp(`^oidc-sidecar: invalid config: ${issuer.replace(/[.$]/g, '\\$&')}[^;]*\n$`));
    const token = await runCli(['token', '--config', both, '--audience', 'payments']);
    expect(token.stderr).toMatch(new RegExp(`^oidc-sidecar: invalid config: ${secret.replace(/[.$]/g, '\\$&')}[^;]*\n$`));
    // With the side it uses filled in, each gets on with its work: the token judged, the token endpoint asked.
    const verified = await runCli(['verify', '--config', both, '--token', 'x'], { env: { CLI_TEST_UNSET_ISSUER: 'https://idp.example' } });
    expect([verified.code, verified.stdout]).toEqual([1, expect.stringContaining('malformed_token')]);
    const fetched = await runCli(['token', '--config', both, '--audience', 'payments'], { env: { CLI_TEST_UNSET_SECRET: 's3cret' } });
    expect([fetched.code, fetched.stderr]).toEqual([1, expect.not.stringContaining('invalid config')]);
    // validate and run need all of them.
    expect((await runCli(['validate', '--config', both])).stderr).toMatch(/5 problems.*CLI_TEST_UNSET_SERVICE.*CLI_TEST_UNSET_ISSUER.*CLI_TEST_UNSET_SECRET/);
    // A config whose layers, merged, lack the side (an overlay removed it) says that, not what the other side lacks.
    const noOutbound = writeConfig({ outbound: null });
    expect((await runCli(['token', '--config', both, '--config', noOutbound, '--audience', 'payments'])).stderr).toBe(
      'oidc-sidecar: the config has no outbound section, so it names no token source\n',
    );
  });

  it("validate's output, loaded as a config, holds what the config held: a literal ${ is printed escaped ($${), never filled in from the environment", async () => {
    const template = '${HOME} and a$$${b';
    const escaped = template.replaceAll('${', () => '$${'); // a function: in a replacement string $$ is one $
    const config = writeConfig({
      service: 'orders',
      inbound: { target: 'http://127.0.0.1:9', audience: 'orders', issuers: [{ issuer: 'https://idp.example' }], rules: [{ match: { path: '/x' }, allow: [{ claims: { template: escaped } }] }] },
    });
    const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-validate-'));
    for (const format of [[], ['--json']]) {
      const printed = await runCli(['validate', '--config', config, ...format], { env: { HOME: '/home/someone' } });
      expect(printed.code).toBe(0);
      const again = join(dir, `again${format.length ? '.json' : '.yaml'}`);
      writeFileSync(again, printed.stdout);
      const reloaded = await runCli(['validate', '--config', again, '--json'], { env: { HOME: '/home/someone' } });
      expect(reloaded.code, reloaded.stderr).toBe(0);
      expect(JSON.parse(reloaded.stdout).inbound.rules[0].allow[0].claims.template).toBe(escaped);
      expect(reloaded.stdout).not.toContain('/home/someone');
    }
  });

  it('run refuses an invalid config before listening', async () => {
    const r = await runCli(['run', '--config', writeConfig({ service: 'x' })]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('configure `inbound`, `outbound` or both');
  });

  it('run names the config key whose listen address is already in use', async () => {
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    const taken = `127.0.0.1:${(squatter.address() as AddressInfo).port}`;
    try {
      const outboundOnly = { tokenSource: { type: 'env', variable: 'NO_SUCH_TOKEN' }, routes: [{ host: 'payments', audience: 'payments' }] };
      const cases: Array<[string, Record<string, unknown>]> = [
        ['inbound.listen', { service: 'orders', admin: { listen: '127.0.0.1:0' }, inbound: { ...valid.inbound, issuers: [{ issuer: 'http://127.0.0.1:9' }], listen: taken } }],
        ['outbound.listen', { service: 'orders', admin: { listen: '127.0.0.1:0' }, outbound: { ...outboundOnly, listen: taken } }],
        ['admin.listen', { service: 'orders', admin: { listen: taken }, outbound: { ...outboundOnly, listen: '127.0.0.1:0' } }],
      ];
      const results = await Promise.all(cases.map(([, config]) => runCli(['run', '--config', writeConfig(config)])));
      results.forEach((r, i) => {
        expect([r.code, r.stderr]).toEqual([1, `oidc-sidecar: ${cases[i]![0]}: cannot listen on ${taken}: address already in use\n`]);
      });
    } finally {
      squatter.close();
    }
  });

  it('validate exits 1 and run does not start when jwks.maxStaleSeconds is shorter than a refresh can take (no periodic 503 with a healthy IdP)', async () => {
    const bad = writeConfig({ ...valid, inbound: { ...valid.inbound, jwks: { refreshIntervalSeconds: 20, maxStaleSeconds: 3 } } });
    const message = /^oidc-sidecar: invalid config: inbound\.jwks\.maxStaleSeconds: must be at least 41 \(refreshIntervalSeconds 20 \+ retryMinSeconds 1 \+ 4 × timeoutSeconds 5\): .* 503 keys_unavailable while the IdP is healthy \(line \d+\)\n$/;
    const v = await runCli(['validate', '--config', bad]);
    expect([v.code, v.stdout]).toEqual([1, '']);
    expect(v.stderr).toMatch(message);
    const r = await runCli(['run', '--config', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).not.toContain('"event":"started"');
    const ok = await runCli(['validate', '--config', writeConfig({ ...valid, inbound: { ...valid.inbound, jwks: { refreshIntervalSeconds: 20, maxStaleSeconds: 41 } } })]);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it("validate reads the token sources' secret files as run does, and --skip-file-checks leaves them alone", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-validate-'));
    try {
      const withSource = (source: Record<string, string>) =>
        writeConfig({ ...valid, outbound: { ...valid.outbound, tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', ...source } } });
      const keyFile = join(dir, 'key.pem');
      writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
      const notAKey = join(dir, 'not-a-key.pem');
      writeFileSync(notAKey, 'not a key\n');

      const good = await runCli(['validate', '--config', withSource({ privateKeyFile: keyFile })]);
      expect(good.stderr).toBe('');
      expect(good.code).toBe(0);
      expect(good.stdout).not.toContain('PRIVATE KEY');

      const missingSecret = await runCli(['validate', '--config', withSource({ clientSecretFile: join(dir, 'missing') })]);
      expect(missingSecret.code).toBe(1);
      expect(missingSecret.stderr).toContain(`outbound.tokenSource.clientSecretFile: cannot read ${join(dir, 'missing')}: no such file`);
      const badKey = await runCli(['validate', '--config', withSource({ privateKeyFile: notAKey })]);
      expect(badKey.code).toBe(1);
      expect(badKey.stderr).toContain('outbound.tokenSource.privateKeyFile: not a private key');
      // run refuses the same config with the same line.
      const run = await runCli(['run', '--config', withSource({ privateKeyFile: notAKey })]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('outbound.tokenSource.privateKeyFile: not a private key');

      const skipped = await runCli(['validate', '--skip-file-checks', '--config', withSource({ clientSecretFile: join(dir, 'missing') })]);
      expect(skipped.stderr).toBe('');
      expect(skipped.code).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a missing file, an unknown command and a bad flag each give one clear line and exit 1', async () => {
    const missing = await runCli(['validate', '--config', '/definitely/missing.yaml']);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim()).toBe('oidc-sidecar: cannot read config file /definitely/missing.yaml: no such file');
    const folder = mkdtempSync(join(tmpdir(), 'oidc-sidecar-folder-'));
    const directory = await runCli(['validate', '--config', folder]);
    rmSync(folder, { recursive: true, force: true });
    expect([directory.code, directory.stderr]).toEqual([1, `oidc-sidecar: cannot read config file ${folder}: is a directory\n`]);
    const unnamed = await runCli(['validate', '--config', writeConfig({ inbound: valid.inbound })]);
    expect([unnamed.code, unnamed.stderr]).toEqual([1, "oidc-sidecar: invalid config: service: required (this workload's name, used in logs and metrics)\n"]);

    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^oidc-sidecar: unknown command "frobnicate" \(commands: run, validate, .*; see --help\)\n$/);

    const flag = await runCli(['validate', '--config', writeConfig(valid), '--bogus-flag']);
    expect(flag.code).toBe(1);
    expect(flag.stderr).toMatch(/Unknown argument/);

    const none = await runCli(['validate'], { env: { OIDC_SIDECAR_CONFIG: '' } });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('no config given');
  });

  it('run with only config files starts without the full CLI, and fails exactly as the full CLI does', async () => {
    // The launcher takes a plain `run --config FILE` itself (src/main.ts); the full CLI is main() of the bundle's cli.js.
    const fullCli = (args: string[], env: NodeJS.ProcessEnv = {}) => runCliMain('./dist/bundle/cli.js', args, { cwd: resolve(import.meta.dirname, '../..'), env });
    const bad = writeConfig({ service: 'x', bogus: 1 });
    for (const [args, env] of [
      [['run', '--config', '/nonexistent/sidecar.yaml'], {}],
      [['run', '-c', bad], {}],
      [[`run`, `--config=${bad}`], {}],
      [['run'], { OIDC_SIDECAR_CONFIG: bad }],
      [['run'], { OIDC_SIDECAR_CONFIG: '' }],
    ] as const) {
      const [fast, full] = await Promise.all([runCli([...args], { env }), fullCli([...args], env)]);
      expect(fast.code, args.join(' ')).toBe(1);
      expect(fast.stderr, args.join(' ')).toMatch(/^oidc-sidecar: /);
      expect({ code: fast.code, stdout: fast.stdout, stderr: fast.stderr }, args.join(' ')).toEqual({ code: full.code, stdout: full.stdout, stderr: full.stderr });
    }
  });

  it('schema prints a JSON Schema that describes the config keys', async () => {
    const r = await runCli(['schema']);
    expect(r.code).toBe(0);
    const schema = JSON.parse(r.stdout);
    expect(schema.$schema).toMatch(/json-schema\.org/);
    expect(schema.required).toContain('service');
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties)).toEqual(expect.arrayContaining(['service', 'inbound', 'outbound', 'admin', 'log']));
    expect(schema.properties.inbound.properties.issuers.items.properties.algorithms.items.enum).not.toContain('HS256');
    // A number or boolean key also takes a whole-value ${VAR}, as the loader does; its own bounds stay in force.
    const skew = schema.properties.inbound.properties.clockSkewSeconds;
    expect(skew).toMatchObject({ default: 30, anyOf: [{ type: 'number', minimum: 0, maximum: 300 }, { type: 'string' }] });
    const placeholder = new RegExp(skew.anyOf[1].pattern);
    expect(['${SKEW}', '${SKEW:-30}'].filter((v) => placeholder.test(v))).toHaveLength(2);
    expect(['30', 'abc', '1${SKEW}', '${SKEW} ', '${1X}'].filter((v) => placeholder.test(v))).toEqual([]);
    expect(schema.properties.inbound.properties.forward.properties.keepToken.anyOf[0]).toEqual({ type: 'boolean' });
  });

  it('a reader that closes the pipe early (`| head -1`) ends the output, not with a stack trace: the command keeps its own exit code', async () => {
    /** The command with a stdout pipe whose reader is gone before the first write, as after `head -1` has its line. */
    const withClosedStdout = (args: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((done) => {
        const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        child.stdout.destroy();
        let stderr = '';
        child.stderr.on('data', (d) => (stderr += d));
        child.on('close', (code) => done({ code, stderr }));
      });
    expect(await withClosedStdout(['schema'])).toEqual({ code: 0, stderr: '' });
    expect(await withClosedStdout(['validate', '--config', writeConfig(valid)])).toEqual({ code: 0, stderr: '' });
    // A token refused is still exit 1, and a missing file still its one line.
    expect(await withClosedStdout(['verify', '--config', writeConfig(valid), '--token', 'x.y.z'])).toEqual({ code: 1, stderr: '' });
    expect(await withClosedStdout(['validate', '--config', '/nonexistent/sidecar.yaml'])).toEqual({ code: 1, stderr: 'oidc-sidecar: cannot read config file /nonexistent/sidecar.yaml: no such file\n' });
  });

  it.runIf(process.platform === 'linux')('an output that fails otherwise (ENOSPC: a full disk) is one line on stderr and exit 1, never a stack trace', async () => {
    /** The command with stdout on /dev/full: every write fails with ENOSPC. */
    const withFullStdout = (args: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((done) => {
        const full = openSync('/dev/full', 'w');
        const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', full, 'pipe'] });
        closeSync(full);
        let stderr = '';
        child.stderr!.on('data', (d) => (stderr += d));
        child.on('close', (code) => done({ code, stderr }));
      });
    for (const args of [['schema'], ['validate', '--config', writeConfig(valid)], ['--version'], ['--help']]) {
      expect(await withFullStdout(args), args.join(' ')).toEqual({ code: 1, stderr: 'oidc-sidecar: cannot write the output: no space left on device (ENOSPC)\n' });
    }
  });

  it('a token given without --token is never echoed to stderr: it would stay whole in a CI job\'s log', async () => {
    const token = 'eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjkiLCJzdWIiOiJvcmRlcnMifQ.c2lnbmF0dXJlLXNlY3JldA';
    const config = writeConfig(valid);
    // `--config` takes the word after it as a second config file; after the command, it is an unknown argument.
    for (const args of [['verify', '--config', config, token], ['verify', token, '--config', config]]) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).not.toContain('eyJ');
      expect(r.stderr, args.join(' ')).toContain('[a JWT, not shown; verify takes one with --token]');
    }
  });

  it("--version prints this package's version wherever it is run from, and --help is English whatever the locale", async () => {
    const { version } = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string };
    // A directory with a package.json of its own: the version must not come from the working directory.
    const elsewhere = mkdtempSync(join(tmpdir(), 'oidc-sidecar-cwd-'));
    writeFileSync(join(elsewhere, 'package.json'), JSON.stringify({ name: 'someone-else', version: '9.9.9' }));
    try {
      const r = await runCli(['--version'], { cwd: elsewhere });
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(version);
      const help = await runCli(['--help'], { cwd: elsewhere, env: { LC_ALL: 'de_DE.UTF-8', LANG: 'de_DE.UTF-8' } });
      expect(help.stdout).toContain('Show version number');
    } finally {
      rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it('every command has --help', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    for (const cmd of ['run', 'validate', 'schema']) {
      expect(top.stdout).toContain(`oidc-sidecar ${cmd}`);
      const r = await runCli([cmd, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`oidc-sidecar ${cmd}`);
    }
  });
});

describe('a launcher without its bundle', () => {
  // A checkout installed with --ignore-scripts (no build), a package that lost files, or a build under way.
  it.each([['--help'], ['run', '--config', 'sidecar.yaml']])('says in one line that the CLI is not built, and exits 1: %s', async (...args) => {
    const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-unbuilt-'));
    cpSync(resolve(BIN, '..'), join(dir, 'bin'), { recursive: true });
    cpSync(resolve(BIN, '../../package.json'), join(dir, 'package.json'));
    const r = await new Promise<{ code: number | null; stderr: string }>((res) => {
      const child = spawn(process.execPath, [join(dir, 'bin/oidc-sidecar.js'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c));
      child.on('close', (code) => res({ code, stderr }));
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^oidc-sidecar: the CLI is not built: Cannot find module '.*dist\/bundle\/runtime\.js' .*run `npm run build`.*\n$/);
    expect(r.stderr.split('\n')).toHaveLength(2);
  });
});

describe('required options stop the command before it runs', () => {
  it('a missing required option or a flag without its value is a usage error', async () => {
    const noAudience = await runCli(['token', '--config', writeConfig(valid)]);
    expect(noAudience.code).toBe(1);
    expect(noAudience.stderr).toContain('Missing required argument: audience');
    expect(noAudience.stderr).toContain('(see "oidc-sidecar token --help")');
    expect(noAudience.stdout).toBe('');

    const noValue = await runCli(['validate', '--config']);
    expect(noValue.code).toBe(1);
    expect(noValue.stderr).toMatch(/Not enough arguments following: config/);
  });
});

describe('validate reads the inbound TLS certificate and key as run does', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-tls-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const withTls = (tls: { certFile: string; keyFile: string }) => writeConfig({ ...valid, inbound: { ...valid.inbound, tls } });

  it('passes a usable pair, refuses a missing or mismatched one with the key path and exit 1, and --skip-file-checks leaves them alone', async () => {
    const a = selfSignedCert('cli-tls-a', dir);
    const b = selfSignedCert('cli-tls-b', dir);
    const good = await runCli(['validate', '--config', withTls({ certFile: a.cert, keyFile: a.key })]);
    expect([good.code, good.stderr]).toEqual([0, '']);
    expect(good.stdout).not.toContain('PRIVATE KEY');

    const missing = join(dir, 'missing.crt');
    const absent = await runCli(['validate', '--config', withTls({ certFile: missing, keyFile: a.key })]);
    expect([absent.code, absent.stdout]).toEqual([1, '']);
    expect(absent.stderr).toBe(`oidc-sidecar: invalid config: inbound.tls.certFile: cannot read ${missing}: no such file (line 8)\n`);

    const mismatched = await runCli(['validate', '--config', withTls({ certFile: a.cert, keyFile: b.key })]);
    expect(mismatched.code).toBe(1);
    expect(mismatched.stderr).toMatch(/^oidc-sidecar: invalid config: inbound\.tls: certFile and keyFile are not a usable pair/);
    expect(mismatched.stderr).not.toContain('PRIVATE KEY');

    const skipped = await runCli(['validate', '--skip-file-checks', '--config', withTls({ certFile: missing, keyFile: a.key })]);
    expect([skipped.code, skipped.stderr]).toEqual([0, '']);
  });
});

describe('validate and run read every file the config names in one pass, before anything else', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-files-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const at = (name: string) => join(dir, name);
  writeFileSync(at('not-a-key.pem'), 'not a key\n');

  it('lists every missing or bad file (CA bundles, secret, private key, TLS certificate and key) on one line, the same for validate and run', async () => {
    const config = writeConfig({
      ...valid,
      inbound: { ...valid.inbound, issuers: [{ issuer: 'https://idp.example', caFile: at('issuer-ca.pem') }], tls: { certFile: at('tls.crt'), keyFile: at('tls.key') } },
      outbound: {
        tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', clientSecretFile: at('secret'), caFile: at('idp-ca.pem') },
        routes: [
          { host: 'payments', audience: 'payments' },
          { host: 'ledger', audience: 'ledger', tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'ledger', privateKeyFile: at('not-a-key.pem') } },
        ],
      },
    });
    const line =
      'oidc-sidecar: invalid config (6 problems): ' +
      [
        `inbound.issuers.0.caFile: cannot read ${at('issuer-ca.pem')}: no such file (line 7)`,
        `inbound.tls.certFile: cannot read ${at('tls.crt')}: no such file (line 9)`,
        `inbound.tls.keyFile: cannot read ${at('tls.key')}: no such file (line 10)`,
        `outbound.tokenSource.caFile: cannot read ${at('idp-ca.pem')}: no such file (line 17)`,
        `outbound.tokenSource.clientSecretFile: cannot read ${at('secret')}: no such file (line 16)`,
        'outbound.routes.1.tokenSource.privateKeyFile: not a private key in PEM (PKCS#8, PKCS#1, SEC1) or JWK form (line 27)',
      ].join('; ') +
      '\n';
    const validate = await runCli(['validate', '--config', config]);
    expect([validate.code, validate.stdout, validate.stderr]).toEqual([1, '', line]);
    const run = await runCli(['run', '--config', config]);
    expect([run.code, run.stdout, run.stderr]).toEqual([1, '', line]);
  });

  it('run with a missing clientSecretFile fails with that one line before it listens or calls the IdP', async () => {
    const idp = await startUpstream();
    try {
      const config = writeConfig({
        service: 'orders',
        admin: { listen: '127.0.0.1:0' },
        inbound: { listen: '127.0.0.1:0', target: 'http://127.0.0.1:9', audience: 'orders', issuers: [{ issuer: idp.url }] },
        outbound: {
          listen: '127.0.0.1:0',
          tokenSource: { type: 'client_credentials', issuer: idp.url, clientId: 'orders', clientSecretFile: at('missing-secret') },
          routes: [{ host: 'payments', audience: 'payments' }],
        },
      });
      const r = await runCli(['run', '--config', config]);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`oidc-sidecar: invalid config: outbound.tokenSource.clientSecretFile: cannot read ${at('missing-secret')}: no such file (line 16)\n`);
      // No log line at all (no "listening", no jwks_fetch_failed) and not one request to the IdP.
      expect(r.stdout).toBe('');
      expect(idp.seen).toEqual([]);
    } finally {
      await idp.close();
    }
  });
});

describe('CA bundles named by caFile are read when the config loads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-ca-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const withRouteCa = (caFile: string) => ({
    ...valid,
    outbound: { ...valid.outbound, routes: [...valid.outbound.routes, { host: 'ledger', target: 'https://ledger.internal', audience: 'ledger', caFile }] },
  });

  it('validate prints a readable caFile as its path, and exits 1 on a missing one with its key path', async () => {
    const ca = selfSignedCert('cli-ca', dir).cert;
    const good = await runCli(['validate', '--config', writeConfig(withRouteCa(ca))]);
    expect(good.code).toBe(0);
    expect(good.stdout).toContain(`caFile: ${ca}`);
    expect(good.stdout).not.toContain('CERTIFICATE');

    const missing = join(dir, 'missing.pem');
    const bad = await runCli(['validate', '--config', writeConfig(withRouteCa(missing))]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe(`oidc-sidecar: invalid config: outbound.routes.1.caFile: cannot read ${missing}: no such file (line 19)\n`);
    expect(bad.stdout).toBe('');
  });

  it('validate --skip-file-checks checks the shape only: a missing caFile passes and nothing is said about files', async () => {
    const missing = join(dir, 'not-in-this-pod.pem');
    const config = writeConfig(withRouteCa(missing));
    const checked = await runCli(['validate', '--config', config]);
    expect(checked.code).toBe(1);
    expect(checked.stderr).toContain(`outbound.routes.1.caFile: cannot read ${missing}: no such file`);

    const shapeOnly = await runCli(['validate', '--skip-file-checks', '--config', config]);
    expect(shapeOnly.stderr).toBe('');
    expect(shapeOnly.code).toBe(0);
    expect(shapeOnly.stdout).toContain(`caFile: ${missing}`);
    expect(shapeOnly.stdout).not.toMatch(/cannot read|no such file|skipp/i);

    // The shape is still checked.
    const typo = await runCli(['validate', '--skip-file-checks', '--config', writeConfig({ ...valid, outbound: { ...valid.outbound, routez: [] } })]);
    expect([typo.code, typo.stderr]).toEqual([1, 'oidc-sidecar: invalid config: outbound.routez: unknown key (did you mean routes?) (line 16)\n']);
  });

  it('validate --help explains --skip-file-checks', async () => {
    const r = await runCli(['validate', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout.replace(/\s+/g, ' ')).toContain(
      "--skip-file-checks Check the config's shape only, not the files it names (e.g. in CI, where the pod's mounted files do not exist)",
    );
  });

  it('run refuses to start when an issuer caFile holds no certificate', async () => {
    const junk = join(dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    const config = {
      ...valid,
      inbound: { ...valid.inbound, listen: '127.0.0.1:0', issuers: [{ issuer: 'https://idp.example', caFile: junk }] },
      outbound: { ...valid.outbound, listen: '127.0.0.1:0' },
      admin: { listen: '127.0.0.1:0' },
    };
    const r = await runCli(['run', '--config', writeConfig(config)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`oidc-sidecar: invalid config: inbound.issuers.0.caFile: no PEM certificate found in ${junk} (line 7)\n`);
  });
});
