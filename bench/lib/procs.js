// Child processes for the benchmark: each component runs in its own process so RSS is per component.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Spawns `node <args>` and resolves once a stdout JSON line satisfies `ready` (returns that line). */
export function startNode(args, { env = {}, ready, name, timeoutMs = 20_000 }) {
  const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let buffer = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${name} did not start in time:\n${output}`)), timeoutMs);
    const fail = (err) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(err);
    };
    const onData = (chunk) => {
      const s = chunk.toString();
      output = (output + s).slice(-20_000);
      buffer += s;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        let parsed;
        try {
          parsed = JSON.parse(line);
        } catch {
          continue;
        }
        if (ready(parsed)) {
          clearTimeout(timer);
          resolve({ child, pid: child.pid, line: parsed, output: () => output, stop: () => stop(child) });
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c) => (output = (output + c).slice(-20_000)));
    child.once('exit', (code) => fail(new Error(`${name} exited with ${code}:\n${output}`)));
  });
}

function stop(child) {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 5_000).unref();
  });
}

/**
 * Peak (VmHWM) and current (VmRSS) resident set size of a process, in MiB (Linux /proc), and the current RSS split
 * into private memory (RssAnon: heap, malloc) and file-backed pages (RssFile: mostly the `node` binary, shared by
 * every process that maps it).
 */
export function memoryOf(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { peakMiB: kb('VmHWM') / 1024, rssMiB: kb('VmRSS') / 1024, anonMiB: kb('RssAnon') / 1024, fileMiB: kb('RssFile') / 1024 };
  } catch {
    return { peakMiB: NaN, rssMiB: NaN, anonMiB: NaN, fileMiB: NaN };
  }
}

/** CPU time (user + system) a process has used so far, in seconds (Linux /proc; clock ticks of 1/100 s). */
export function cpuSecondsOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}
