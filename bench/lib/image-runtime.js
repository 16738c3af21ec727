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

/**
 * The environment every process of the benchmark gets on top of the host's, so that Node runs as in the image:
 * the image's ENV (its config path aside: the benchmark passes --config), with `nodeOptions` and `mallocEnv` (the
 * knobs, by default the image's) in place of its NODE_OPTIONS and MALLOC_* settings, and with the host's own Node
 * settings (NODE_*, UV_*) that the image does not set left out. A host's NODE_EXTRA_CA_CERTS, for one, makes Node
 * parse every certificate of that bundle at startup: ~1 MiB more per process for the 144 of bench/README.md's
 * machine. Returns the overrides (a left-out variable is `undefined`, which spawn() skips) and what was left out.
 */
export function benchChildEnv({ image, hostEnv, nodeOptions, mallocEnv, keepHostNodeEnv = false }) {
  const leftOut = keepHostNodeEnv ? [] : Object.keys(hostEnv).filter((k) => /^(NODE_|UV_)/.test(k) && !(k in image.env));
  const imageEnv = Object.entries(image.env).filter(([k]) => k !== 'NODE_OPTIONS' && !k.startsWith('MALLOC_') && !k.startsWith('OIDC_SIDECAR_'));
  const pairs = (s) => s.split(' ').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]);
  const env = {
    ...Object.fromEntries(leftOut.map((k) => [k, undefined])),
    ...Object.fromEntries(imageEnv),
    NODE_OPTIONS: nodeOptions,
    ...Object.fromEntries(pairs(mallocEnv)),
  };
  return { env, leftOut, imageEnv: imageEnv.map(([k, v]) => `${k}=${v}`).join(' ') };
}
