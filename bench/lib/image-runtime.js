// How the container image runs Node, read from the Dockerfile so the benchmark measures the sidecar the way the
// image starts it: the runtime stage's ENV (NODE_OPTIONS, glibc's MALLOC_* settings) and the Node flags of its
// ENTRYPOINT (the ones Node refuses in NODE_OPTIONS).
import { readFileSync } from 'node:fs';

/** `{ env, nodeFlags }` of the Dockerfile's last stage. */
export function imageRuntime(dockerfilePath) {
  const instructions = readFileSync(dockerfilePath, 'utf8')
    .split(/\r?\n/)
    // Docker drops comment lines, also inside an instruction continued over several lines.
    .filter((l) => !/^\s*#/.test(l))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n');
  const lastStage = instructions.slice(instructions.findLastIndex((l) => /^FROM\s/i.test(l)));
  const env = {};
  for (const line of lastStage.filter((l) => /^ENV\s/i.test(l))) {
    for (const [, key, quoted, bare] of line.slice(3).matchAll(/([A-Za-z_][A-Za-z0-9_]*)=(?:"((?:[^"\\]|\\.)*)"|(\S*))/g)) {
      env[key] = quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : bare;
    }
  }
  const entrypoint = lastStage.findLast((l) => /^ENTRYPOINT\s/i.test(l))?.replace(/^ENTRYPOINT\s+/i, '').trim();
  let argv;
  try {
    argv = JSON.parse(entrypoint ?? '');
  } catch {
    argv = undefined;
  }
  if (!Array.isArray(argv) || argv[0] !== 'node' || argv.length < 2) {
    throw new Error(`${dockerfilePath}: expected ENTRYPOINT ["node", ...flags, "<script>"] in exec form, got ${entrypoint ?? 'none'}`);
  }
  return { env, nodeFlags: argv.slice(1, -1) };
}
