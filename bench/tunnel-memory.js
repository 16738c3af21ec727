// What an open tunnel costs a sidecar: opens N CONNECT tunnels (default 1000) through an outbound sidecar to a TCP
// echo on loopback, sends a few bytes through each, and prints the sidecar's RSS before and after. The sidecar runs
// as the image starts it (bench/lib/image-runtime.js), with limits.maxTunnels raised to N. Usage:
//   npm run build && node bench/tunnel-memory.js [N]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { imageRuntime } from './lib/image-runtime.js';
import { memoryOf, startNode } from './lib/procs.js';

const here = dirname(fileURLToPath(import.meta.url));
const count = Number(process.argv[2] ?? 1000);
if (!Number.isInteger(count) || count < 1) throw new Error(`usage: node bench/tunnel-memory.js [number of tunnels], got ${process.argv[2]}`);

const echo = createServer((s) => {
  s.on('error', () => {});
  s.pipe(s);
});
await new Promise((r) => echo.listen(0, '127.0.0.1', r));
const echoPort = echo.address().port;

const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-tunnels-'));
const config = join(dir, 'sidecar.yaml');
writeFileSync(
  config,
  [
    'service: tunnel-memory',
    'admin: { listen: "127.0.0.1:0" }',
    'outbound:',
    '  listen: "127.0.0.1:0"',
    '  unknownHosts: passthrough',
    '  tokenSource: { type: env, variable: BENCH_UNUSED_TOKEN }',
    '  routes: []',
    `limits: { maxTunnels: ${count} }`,
    '',
  ].join('\n'),
);
const image = imageRuntime(resolve(here, '../Dockerfile'));
const running = await startNode([...image.nodeFlags, resolve(here, '../bin/oidc-sidecar.js'), 'run', '--config', config], {
  name: 'sidecar',
  env: { ...image.env, BENCH_UNUSED_TOKEN: 'unused' },
  ready: (l) => l.event === 'started',
});
const outbound = running.line.addresses.outbound;
const port = Number(outbound.slice(outbound.lastIndexOf(':') + 1));

const settle = () => new Promise((r) => setTimeout(r, 2000));
await settle();
const before = memoryOf(running.pid).rssMiB;
const sockets = [];
for (let i = 0; i < count; i++) {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => {});
  await new Promise((r, j) => {
    s.once('data', (d) => (d.toString('latin1').startsWith('HTTP/1.1 200 ') ? r() : j(new Error(`tunnel ${i + 1}: ${d.toString('latin1').split('\r\n')[0]}`))));
    s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
  });
  s.write('hello');
  sockets.push(s);
}
await settle();
const after = memoryOf(running.pid);
console.log(
  `${count} open tunnels: sidecar RSS ${before.toFixed(1)} → ${after.rssMiB.toFixed(1)} MiB ` +
    `(${(((after.rssMiB - before) * 1024) / count).toFixed(1)} KiB per tunnel; peak ${after.peakMiB.toFixed(1)} MiB; Node ${process.version})`,
);
for (const s of sockets) s.destroy();
await running.stop();
echo.close();
rmSync(dir, { recursive: true, force: true });

