// What the verified-token cache costs a sidecar at its peak: an inbound sidecar, started as the image starts it
// (bench/lib/image-runtime.js), takes N requests (default 10,000: the cache's default maxEntries) with one token,
// then N more with N distinct tokens (each verified, then cached), then 10 s of load at 32 connections; a second
// sidecar does the same with the one token throughout. Both print their RSS and peak (VmHWM). `npm run bench` uses
// one token, so its cache holds one entry. Usage:
//   npm run build && node bench/cache-memory.js [N]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Pool } from 'undici';
import { benchChildEnv, imageRuntime } from './lib/image-runtime.js';
import { memoryOf, startNode } from './lib/procs.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const count = Number(process.argv[2] ?? 10_000);
if (!Number.isInteger(count) || count < 1) throw new Error(`usage: node bench/cache-memory.js [number of tokens], got ${process.argv[2]}`);
const image = imageRuntime(resolve(here, '../Dockerfile'));
const mallocEnv = Object.entries(image.env).filter(([k]) => k.startsWith('MALLOC_')).map(([k, v]) => `${k}=${v}`).join(' ');
const { env } = benchChildEnv({ image, hostEnv: process.env, nodeOptions: image.env.NODE_OPTIONS ?? '', mallocEnv });

const { publicKey, privateKey } = await generateKeyPair('ES256');
const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] };
const idp = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks)));
await new Promise((r) => idp.listen(0, '127.0.0.1', r));
const issuer = `http://127.0.0.1:${idp.address().port}`;
const app = createServer((req, res) => {
  req.resume();
  req.on('end', () => res.writeHead(200, { 'content-length': 2 }).end('ok'));
});
await new Promise((r) => app.listen(0, '127.0.0.1', r));

const now = Math.floor(Date.now() / 1000);
const mint = (jti) =>
  new SignJWT({ client_id: 'bench-client', scope: 'read' })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt' })
    .setIssuer(issuer).setSubject('bench-client').setAudience('bench-app').setIssuedAt(now).setExpirationTime(now + 3600).setJti(jti)
    .sign(privateKey);
const one = await mint('one');
const distinct = [];
for (let i = 0; i < count; i++) distinct.push(await mint(`t${i}`));

const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-cache-'));
/** One sidecar through the whole sequence; `tokens` for the second pass. */
async function measure(name, tokens) {
  const config = join(dir, `${name}.json`);
  writeFileSync(config, JSON.stringify({
    service: 'bench-app', log: { level: 'info' }, lifecycle: { watchConfig: false }, admin: { listen: '127.0.0.1:0' },
    inbound: { listen: '127.0.0.1:0', target: `http://127.0.0.1:${app.address().port}`, audience: 'bench-app', issuers: [{ issuer, jwksUri: `${issuer}/jwks`, algorithms: ['ES256'] }], rules: [{ match: { path: '/**' }, allow: [{ sub: 'bench-client' }] }] },
  }));
  const p = await startNode([...image.nodeFlags, resolve(here, '../bin/oidc-sidecar.js'), 'run', '--config', config], { name, env, ready: (l) => l.event === 'started' });
  const address = p.line.addresses.inbound;
  const origin = `http://127.0.0.1:${address.slice(address.lastIndexOf(':') + 1)}`;
  const pool = new Pool(origin, { connections: 16 });
  let failed = 0;
  const drive = async (list) => {
    let next = 0;
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < list.length) {
        const res = await pool.request({ path: '/bench', method: 'GET', headers: { host: 'app', authorization: `Bearer ${list[next++]}` } });
        await res.body.dump();
        if (res.statusCode !== 200) failed++;
      }
    }));
  };
  await drive(Array.from({ length: count }, () => one));
  await drive(tokens);
  const load = await autocannon({ url: `${origin}/bench`, connections: 32, duration: 10, headers: { host: 'app', authorization: `Bearer ${one}` } });
  const m = memoryOf(p.pid);
  await pool.close();
  await p.stop();
  return { name, failed: failed + load.non2xx, rssMiB: m.rssMiB, peakMiB: m.peakMiB };
}

try {
  const rows = [await measure('one token', Array.from({ length: count }, () => one)), await measure(`${count} distinct tokens`, distinct)];
  process.stdout.write(`Node ${process.version}; a token is ${one.length} characters\n`);
  for (const r of rows) {
    process.stdout.write(`${r.name.padEnd(24)} RSS at end ${r.rssMiB.toFixed(1)} MiB, peak ${r.peakMiB.toFixed(1)} MiB (${((r.peakMiB * 2 ** 20) / 1e6).toFixed(1)} MB)${r.failed ? `, ${r.failed} requests not 200` : ''}\n`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
  idp.close();
  app.close();
}
