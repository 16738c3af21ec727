// How the container image runs Node, read from the Dockerfile so the benchmark measures the sidecar the way the
// image starts it: the runtime stage's ENV (NODE_OPTIONS, glibc's MALLOC_* settings) and the Node flags of its
// ENTRYPOINT (the ones Node refuses in NODE_OPTIONS).
import { readFileSync } from 'node:fs';

/** `{ env, nodeFlags }` of the Dockerfile's last stage. */
export function imageRuntime(dockerfilePath) {
  const lines = readFileSync(dockerfilePath, 'utf8').replace(/\\\n/g, ' ').split('\n');
  const lastStage = lines.slice(lines.findLastIndex((l) => /^FROM\s/.test(l)));
  const env = {};
  for (const line of lastStage.filter((l) => /^ENV\s/.test(l))) {
    for (const [, key, value] of line.slice(3).matchAll(/([A-Z_][A-Z0-9_]*)=(\S*)/g)) env[key] = value;
  }
  const entrypoint = lastStage.find((l) => /^ENTRYPOINT\s/.test(l));
  const argv = entrypoint ? JSON.parse(entrypoint.replace(/^ENTRYPOINT\s+/, '')) : [];
  if (argv[0] !== 'node') throw new Error(`${dockerfilePath}: expected ENTRYPOINT ["node", ...flags, script], got ${entrypoint}`);
  return { env, nodeFlags: argv.slice(1, -1) };
}
