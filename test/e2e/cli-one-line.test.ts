import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli, writeConfig } from '../support/sidecar.js';

// SPEC: a bad flag, a missing file or an invalid config is a one-line error and a non-zero exit. One line, so a log
// collector keeps it as one record and `grep` or `tail -1` shows all of it.
const dir = mkdtempSync(join(tmpdir(), 'cli-one-line-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const valid = {
  service: 'orders',
  inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example' }] },
  outbound: {
    tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', clientSecret: 's3cret' },
    routes: [{ host: 'payments', audience: 'payments' }],
  },
};
// Several in each side's section: `token` and `verify` read their own section alone.
const severalIssues = writeConfig({ service: 'x', inbound: { target: 'nope', audience: 'a', issuers: [], clockSkew: 5 }, outbound: { routes: [], retryMinSecond: 1, unknownHosts: 'maybe' }, bogus: 1 });
const yamlSyntax = join(dir, 'broken.yaml');
writeFileSync(yamlSyntax, 'service: orders\ninbound:\n  issuers: [\n  target: x\n');
const missing = join(dir, 'missing.yaml');
// A config value that reaches a message and holds line breaks: a CA bundle's path, on both sides (`verify` reads the
// issuers' bundles, `token` its token source's, `run` and `validate` both).
const brokenPath = join(dir, 'ca\nINJECTED: line\r\n.pem');
const lineBreakInValue = writeConfig({
  ...valid,
  inbound: { ...valid.inbound, issuers: [{ issuer: 'https://idp.example', caFile: brokenPath }] },
  outbound: { ...valid.outbound, tokenSource: { ...valid.outbound.tokenSource, caFile: brokenPath } },
});

/** What each command needs besides --config to get as far as reading it. */
const commands: Record<string, string[]> = { run: [], validate: [], token: ['--audience', 'payments'], verify: ['--token', 'x.y.z'] };

const failures: Array<[string, (cmd: string) => string[], RegExp | ((cmd: string) => RegExp)]> = [
  ['several config issues', (cmd) => [cmd, '--config', severalIssues], /^oidc-sidecar: invalid config \(\d+ problems\): [^;]+: [^;]+(; [^;]+: [^;]+)+$/],
  ['a YAML syntax error', (cmd) => [cmd, '--config', yamlSyntax], /^oidc-sidecar: invalid config: .*broken\.yaml: .* \(line \d+\)$/],
  ['a missing config file', (cmd) => [cmd, '--config', missing], /^oidc-sidecar: cannot read config file .*missing\.yaml: no such file$/],
  ['a line break in a config value', (cmd) => [cmd, '--config', lineBreakInValue], /^oidc-sidecar: invalid config( \(2 problems\))?: [a-zA-Z.0-9]+\.caFile: cannot read .*ca\\nINJECTED: line\\r\\n\.pem: no such file( \(line \d+\))?(; |$)/],
  // Each points at its own command's help, which lists its options.
  ['an unknown flag', (cmd) => [cmd, '--config', writeConfig(valid), '--bogus'], (cmd) => new RegExp(`^oidc-sidecar: Unknown argument: bogus \\(see "oidc-sidecar ${cmd} --help"\\)$`)],
  // yargs' dot notation made `--config` an object, which reached the handler as its path list.
  ['a dotted flag', (cmd) => [cmd, '--config.x', writeConfig(valid)], (cmd) => new RegExp(`^oidc-sidecar: Unknown argument: config\\.x \\(see "oidc-sidecar ${cmd} --help"\\)$`)],
  ['an unknown command', (cmd) => [`${cmd}x`, '--config', writeConfig(valid)], /^oidc-sidecar: unknown command "[a-z-]+x" \(commands: run, validate, [a-z, -]+; see --help\)$/],
  ['a flag without its value', (cmd) => [cmd, '--config'], (cmd) => new RegExp(`^oidc-sidecar: Not enough arguments following: config \\(see "oidc-sidecar ${cmd} --help"\\)$`)],
];

describe('every failure is exactly one line on stderr and a non-zero exit', () => {
  for (const [cmd, extra] of Object.entries(commands)) {
    it.concurrent(`oidc-sidecar ${cmd}`, async () => {
      const results = await Promise.all(failures.map(([, args]) => runCli([...args(cmd), ...extra], { env: { OIDC_SIDECAR_CONFIG: '' } })));
      results.forEach((r, i) => {
        const [what, , line] = failures[i]!;
        expect(r.code, `${cmd}: ${what}`).not.toBe(0);
        expect(r.stderr, `${cmd}: ${what}`).toMatch(/^[^\n]*\n$/);
        expect(r.stderr.trimEnd(), `${cmd}: ${what}`).toMatch(typeof line === 'function' ? line(cmd) : line);
        expect(r.stdout, `${cmd}: ${what}`).not.toContain('"event":"started"');
      });
    });
  }

  it('no command, or an unknown one, says so once and lists the commands (exit 1)', async () => {
    const list = '(commands: run, validate, schema, dev-issuer, demo, token, verify; see --help)';
    const none = await runCli([]);
    expect([none.code, none.stdout, none.stderr]).toEqual([1, '', `oidc-sidecar: name a command ${list}\n`]);
    const flagsOnly = await runCli(['--bogus']);
    expect([flagsOnly.code, flagsOnly.stderr]).toEqual([1, `oidc-sidecar: name a command ${list}\n`]);
    for (const argv of [['bogus'], ['bogus', '--config', 'x.yaml'], ['--config', 'x.yaml', 'bogus'], ['validatex']]) {
      const r = await runCli(argv);
      const name = argv.find((a) => /^(bogus|validatex)$/.test(a));
      expect([r.code, r.stdout, r.stderr], argv.join(' ')).toEqual([1, '', `oidc-sidecar: unknown command "${name}" ${list}\n`]);
    }
    // A known command keeps yargs' own message for what is wrong with it.
    const flag = await runCli(['validate', '--config', writeConfig(valid), '--bogus']);
    // Pointing at the command's own help, which lists its options (the top-level one lists only the commands).
    expect(flag.stderr).toBe('oidc-sidecar: Unknown argument: bogus (see "oidc-sidecar validate --help")\n');
  });

  it('a single config issue reads `invalid config: path.to.key: message (line N)`', async () => {
    const config = ['service: orders', 'inbound:', '  target: http://127.0.0.1:8080', '  audience: orders', '  issuers:', '    - issuer: https://idp.example', '  clockSkew: 5', ''];
    const r = await runCli(['validate', '--config', writeConfig(config.join('\n'))]);
    expect([r.code, r.stdout, r.stderr]).toEqual([1, '', 'oidc-sidecar: invalid config: inbound.clockSkew: unknown key (did you mean clockSkewSeconds?) (line 7)\n']);
  });

  it('several config issues are counted and joined with "; "', async () => {
    // As YAML: service, inbound and its four keys (issuers on two lines), clockSkew on 7, rulez on 8, outbound on 9-17, bogus on 18.
    const r = await runCli(['validate', '--config', writeConfig({ ...valid, inbound: { ...valid.inbound, clockSkew: 5, rulez: [] }, bogus: 1 })]);
    expect([r.code, r.stdout, r.stderr]).toEqual([1, '', 'oidc-sidecar: invalid config (3 problems): inbound.clockSkew: unknown key (did you mean clockSkewSeconds?) (line 7); inbound.rulez: unknown key (did you mean rules?) (line 8); bogus: unknown key (line 18)\n']);
  });

  it('a yargs message laid out over several lines (an invalid choice) is joined into one', async () => {
    const r = await runCli(['dev-issuer', '--alg', 'HS256']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('oidc-sidecar: Invalid values: Argument: alg, Given: "HS256", Choices: "RS256", "PS256", "ES256", "EdDSA" (see "oidc-sidecar dev-issuer --help")\n');
  });

  it('--help is still the full usage text, on stdout', async () => {
    const r = await runCli(['validate', '--help']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.stdout.split('\n').length).toBeGreaterThan(5);
  });
});
