// Runs bench/verify-micro.js with the libuv threadpool at 1 and 4 threads and merges the results.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('../verify-micro.js', import.meta.url));

function once(threads, env) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [script], { env: { ...process.env, ...env, UV_THREADPOOL_SIZE: String(threads) } }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${err.message}\n${stderr}`));
      resolve(JSON.parse(stdout.trim().split('\n').pop()));
    });
  });
}

/**
 * Rows per algorithm: one-at-a-time costs from the default pool (4), plus parallel cost with 1 and 4 threads.
 * `env` is added to each child's environment: the benchmark passes the runtime settings every process of the run
 * gets (the image's NODE_OPTIONS and allocator settings), so the verify path is measured as a sidecar runs it.
 */
export async function runVerifyMicro(env = {}) {
  const one = await once(1, env);
  const four = await once(4, env);
  return {
    rows: four.rows.map((r, i) => ({ ...r, parallel1: one.rows[i].parallel, parallel4: r.parallel })),
  };
}
