import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';

export const BIN = resolve(import.meta.dirname, '../../bin/oidc-sidecar.js');

export interface LogLine {
  level: string;
  msg: string;
  event?: string;
  [key: string]: unknown;
}

export interface SidecarProcess {
  /** `http://127.0.0.1:PORT` of each listener (ports picked by the OS). */
  inbound?: string;
  outbound?: string;
  admin: string;
  configPath: string;
  child: ChildProcess;
  /** Every JSON log line so far (parsed). */
  logs: LogLine[];
  /** Raw stdout+stderr text, for "never logged the token" assertions. */
  output(): string;
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Polls /readyz until 200. */
  waitReady(timeoutMs?: number): Promise<void>;
  /** Rewrites the config file (same path) with a new object or raw text. */
  rewriteConfig(config: unknown): void;
  signal(sig: NodeJS.Signals): void;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

/** Writes a config file the way a user would (YAML) and returns its path. */
export function writeConfig(config: unknown, dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-test-'))): string {
  const path = join(dir, 'sidecar.yaml');
  writeFileSync(path, typeof config === 'string' ? config : stringify(config));
  return path;
}

/** Listen on port 0 everywhere unless the test said otherwise. */
function withEphemeralPorts(config: Record<string, any>): Record<string, any> {
  const c = structuredClone(config);
  if (c.inbound && !c.inbound.listen) c.inbound.listen = '127.0.0.1:0';
  if (c.outbound && !c.outbound.listen) c.outbound.listen = '127.0.0.1:0';
  c.admin = { listen: '127.0.0.1:0', ...(c.admin ?? {}) };
  return c;
}

/**
 * Starts `oidc-sidecar run --config FILE` as a user would (the built CLI in a
 * child process) and resolves once it has logged its bound addresses.
 */
export async function startSidecar(
  config: Record<string, any>,
  opts: { env?: NodeJS.ProcessEnv; extraArgs?: string[]; waitReady?: boolean; timeoutMs?: number; openFileLimit?: number } = {},
): Promise<SidecarProcess> {
  const configPath = writeConfig(withEphemeralPorts(config));
  const args = [BIN, 'run', '--config', configPath, ...(opts.extraArgs ?? [])];
  // Linux: util-linux's prlimit sets the open-file limit and then runs the sidecar in its own place (same pid).
  const [command, commandArgs] = opts.openFileLimit === undefined ? [process.execPath, args] : ['prlimit', [`--nofile=${opts.openFileLimit}:${opts.openFileLimit}`, '--', process.execPath, ...args]];
  const child = spawn(command, commandArgs, {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let text = '';
  const waiters = new Set<() => void>();
  let buffer = '';
  const onData = (chunk: Buffer) => {
    const s = chunk.toString('utf8');
    text += s;
    buffer += s;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      try {
        logs.push(JSON.parse(line));
      } catch {
        /* not a JSON log line (e.g. a startup warning on stderr) */
      }
    }
    for (const w of waiters) w();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
    for (const w of waiters) w();
  });

  const waitForLog = (pred: (l: LogLine) => boolean, timeoutMs = 10_000) =>
    new Promise<LogLine>((res, rej) => {
      const check = () => {
        const found = logs.find(pred);
        if (found) {
          cleanup();
          res(found);
        } else if (hasExited) {
          cleanup();
          rej(new Error(`sidecar exited before the expected log line. Output:\n${text}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        rej(new Error(`timed out waiting for a log line. Output:\n${text}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  const started = await waitForLog((l) => l.event === 'started', opts.timeoutMs ?? 15_000).catch((err: unknown) => {
    child.kill('SIGKILL'); // never started: nothing to drain
    throw err;
  });
  const addrs = started.addresses as Record<string, string>;
  const url = (a: string | undefined) => (a ? `http://${a.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}` : undefined);
  const proc: SidecarProcess = {
    inbound: url(addrs.inbound),
    outbound: url(addrs.outbound),
    admin: url(addrs.admin)!,
    configPath,
    child,
    logs,
    output: () => text,
    waitForLog,
    async waitReady(timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = await fetch(`${proc.admin}/readyz`).catch(() => undefined);
        if (r?.status === 200) return;
        if (Date.now() > deadline) throw new Error(`sidecar not ready after ${timeoutMs} ms. Output:\n${text}`);
        await new Promise((r2) => setTimeout(r2, 50));
      }
    },
    rewriteConfig(next) {
      writeFileSync(configPath, typeof next === 'string' ? next : stringify(withEphemeralPorts(next as Record<string, any>)));
    },
    signal: (sig) => void child.kill(sig),
    exited,
    async stop() {
      if (!hasExited) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  if (opts.waitReady !== false) {
    // A sidecar that never got ready is the test's failure, not a process left running after the run.
    await proc.waitReady(opts.timeoutMs).catch(async (err: unknown) => {
      await proc.stop();
      throw err;
    });
  }
  return proc;
}

interface CliOptions {
  env?: NodeJS.ProcessEnv;
  input?: string;
  timeoutMs?: number;
  cwd?: string;
}
type CliResult = { code: number | null; stdout: string; stderr: string };

/** Runs a one-shot CLI command through the launcher (bin/oidc-sidecar.js) and collects its output. */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return runNode([BIN, ...args], args, opts);
}

/**
 * Runs the CLI as `main(args)` of another module than the launcher's (say tsc's unbundled `./dist/cli.js`, or the
 * bundle's full CLI), resolved from `opts.cwd`, and collects its output.
 */
export function runCliMain(module: string, args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const code = `const { main } = await import(${JSON.stringify(module)}); process.exitCode = await main(${JSON.stringify(args)});`;
  return runNode(['--input-type=module', '-e', code], args, opts);
}

function runNode(nodeArgs: string[], args: string[], opts: CliOptions): Promise<CliResult> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, nodeArgs, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      rej(new Error(`oidc-sidecar ${args.join(' ')} timed out. stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    // 'close', not 'exit': at 'exit' the child's stdio pipes may still be open (Node's docs), with its last output
    // not read yet, and a command that printed its result would read as one that printed nothing.
    child.once('close', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** A port on 127.0.0.1 the OS just handed out and took back: free for a listener a config names (a reload's move). */
export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as AddressInfo).port;
  await new Promise((r) => probe.close(r));
  return port;
}
