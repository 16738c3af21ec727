import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BIN, runCli } from '../support/sidecar.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const hasCurl = spawnSync('curl', ['--version'], { stdio: 'ignore' }).status === 0;

/** The demo's rows as the product contract describes them: scenario and outcome. */
const ROWS: Array<[string, string]> = [
  ['orders → payments, both sidecars', '200'],
  ['no token', '401 missing_token'],
  ['wrong audience', '401 audience_mismatch'],
  ['forged signature', '401 bad_signature'],
  ['expired token', '401 expired'],
  ['subject the rule forbids', '403 policy_denied'],
  ['deploy from feature branch', '403 policy_denied'],
  ['deploy from main, production', '200'],
];

describe('oidc-sidecar demo', () => {
  it('prints a table where every scenario got its expected outcome, and exits 0', async () => {
    const r = await runCli(['demo'], { timeoutMs: 60_000 });
    expect(r.code, `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`).toBe(0);
    const lines = r.stdout.split('\n');
    for (const [title, outcome] of ROWS) {
      const row = lines.find((l) => l.includes(`│ ${title} `));
      expect(row, `row "${title}"`).toBeDefined();
      const cells = row!.split('│').map((c) => c.trim());
      // │ # │ scenario │ expected │ got │ why │
      expect(cells.slice(2, 5)).toEqual([title, outcome, `✓ ${outcome}`]);
    }
    expect(r.stdout).toMatch(/payments app saw x-peer-sub=orders/);
    // The "why" column wraps; joined back it names the identity each app saw.
    const why = lines.filter((l) => l.startsWith('│')).map((l) => l.split('│').at(-2)!.trim()).join(' ');
    expect(why).toContain('deployer saw x-peer-sub=repo:acme/app:environment:production');
    expect(r.stdout).toContain(`All ${ROWS.length} outcomes were as expected. No token appeared in any of the`);
    expect(r.stdout + r.stderr).not.toMatch(/eyJ[A-Za-z0-9_-]+\.eyJ/);
  });

  it('--json gives the same outcomes, machine-readable', async () => {
    const r = await runCli(['demo', '--json'], { timeoutMs: 60_000 });
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { ok: boolean; results: Array<{ title: string; expected: string; got: string; passed: boolean }>; logLines: number; logLinesWithTokens: number };
    expect(report.ok).toBe(true);
    expect(report.results.map((x) => [x.title, x.got])).toEqual(ROWS);
    expect(report.results.every((x) => x.passed && x.expected === x.got)).toBe(true);
    expect(report.logLines).toBeGreaterThan(0);
    expect(report.logLinesWithTokens).toBe(0);
    expect((report.results[0] as unknown as { why: string }).why).toContain('the bearer token was removed before the app');
  });

  it('--keep leaves everything running with curl instructions, and Ctrl-C cleans up with exit 0', async () => {
    const child = spawn(process.execPath, [BIN, 'demo', '--keep'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('Press Ctrl-C to stop')) resolve();
      });
      void exited.then((code) => reject(new Error(`demo --keep exited early with ${code}:\n${out}`)));
    });
    const checkout = /curl -s (http:\/\/127\.0\.0\.1:\d+)\/checkout/.exec(out)![1]!;
    const payments = /curl -si -X POST (http:\/\/127\.0\.0\.1:\d+)\/payments\/charge/.exec(out)![1]!;

    const viaOrders = await fetch(`${checkout}/checkout`);
    expect(viaOrders.status).toBe(200);
    expect(((await viaOrders.json()) as { peer: { sub: string } }).peer.sub).toBe('orders');
    const noToken = await fetch(`${payments}/payments/charge`, { method: 'POST' });
    expect(noToken.status).toBe(401);
    if (hasCurl) {
      // Every printed command that names its status gets it, run as printed (with bash and curl, as a user would).
      const printed = out.slice(out.indexOf('Try it'), out.indexOf('Press Ctrl-C')).split('\n').map((l) => l.trim());
      const expected: string[] = [];
      const script = printed.flatMap((line) => {
        if (/^[A-Z]+=\$\(curl /.test(line)) return [line];
        const status = /^(curl .*?)\s+# (\d{3})\b/.exec(line);
        if (!status) return [];
        expected.push(status[2]!);
        return [`${status[1]} -o /dev/null -w '%{http_code}\\n'`];
      });
      expect(expected).toEqual(['401', '200', '401', '403', '200', '403']);
      const ran = spawnSync('bash', ['-c', script.join('\n')], { encoding: 'utf8' });
      expect(ran.stdout.trim().split('\n'), ran.stderr).toEqual(expected);
    }

    child.kill('SIGINT');
    expect(await exited).toBe(0);
    await expect(fetch(`${payments}/payments/charge`, { method: 'POST' })).rejects.toThrow();
  });

  it('--keep --json keeps stdout one JSON document (the curl how-to goes to stderr), and SIGTERM cleans up with exit 0, started as `npm run demo` starts it', async () => {
    // npm runs a script with `sh -c`, and sends its SIGTERM (CI cancelling a job, `timeout`) to that shell. Debian's sh
    // exits on it without passing it on, so unless the script execs node, the demo was left running, adopted by init,
    // with every port bound. The script's last command is run here as npm runs it, after the build it starts with.
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { demo: string } };
    const command = pkg.scripts.demo.split('&&').at(-1)!.trim();
    const child = spawn('sh', ['-c', `${command} --keep --json`], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let out = '';
    let err = '';
    try {
      await new Promise<void>((resolve, reject) => {
        const onData = () => (out + err).includes('Press Ctrl-C to stop') && resolve();
        child.stdout.on('data', (d) => {
          out += d;
          onData();
        });
        child.stderr.on('data', (d) => {
          err += d;
          onData();
        });
        void exited.then((code) => reject(new Error(`demo --keep --json exited early with ${code}:\n${out}\n${err}`)));
      });
      const report = JSON.parse(out) as { ok: boolean; urls: { paymentsInbound: string } };
      expect(report.ok).toBe(true);
      expect(err).toContain(`curl -si -X POST ${report.urls.paymentsInbound}/payments/charge`);
      const noToken = await fetch(`${report.urls.paymentsInbound}/payments/charge`, { method: 'POST' });
      expect(noToken.status).toBe(401);

      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      await expect(fetch(`${report.urls.paymentsInbound}/payments/charge`, { method: 'POST' })).rejects.toThrow();
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('is listed in --help', async () => {
    const r = await runCli(['--help']);
    expect(r.stdout).toMatch(/oidc-sidecar demo\s+Run the whole thing on this machine/);
  });
});
