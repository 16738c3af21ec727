// Verify micro-benchmark: what one inbound token check costs per algorithm, cold (signature verified) and as a
// verified-token cache hit, and the refusal of an expired token, through the sidecar's real inbound decision code (dist/), plus the raw signature
// primitives (node:crypto vs WebCrypto) and a parallel run that shows the libuv threadpool's effect.
// Usage: UV_THREADPOOL_SIZE=4 node bench/verify-micro.js   → one JSON line on stdout.
import { createPublicKey, verify as nodeVerify, constants, KeyObject, webcrypto } from 'node:crypto';
import { createServer } from 'node:http';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createMetrics } from '../dist/admin/metrics.js';
import { systemClock } from '../dist/clock.js';
import { configSchema } from '../dist/config/schema.js';
import { createInboundParts } from '../dist/inbound/index.js';
import { createLogger } from '../dist/log.js';
import { tuneRuntimeForProxy } from '../dist/proxy/runtime.js';

// V8's JavaScript tiers as in a sidecar's process, set before any measured code runs (the heap settings apply from
// the next full GC, where a sidecar's apply before its modules load; the measurements here allocate little).
tuneRuntimeForProxy();

const ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA'];
const ONE_AT_A_TIME = Number(process.env.VERIFY_ITERATIONS ?? 2000);
const PARALLEL = 64;

const WEBCRYPTO = {
  RS256: { name: 'RSASSA-PKCS1-v1_5' },
  PS256: { name: 'RSA-PSS', saltLength: 32 },
  ES256: { name: 'ECDSA', hash: 'SHA-256' },
  EdDSA: { name: 'Ed25519' },
};
const NODE = {
  RS256: (data, key, sig) => nodeVerify('sha256', data, key, sig),
  PS256: (data, key, sig) => nodeVerify('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig),
  ES256: (data, key, sig) => nodeVerify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig),
  EdDSA: (data, key, sig) => nodeVerify(null, data, key, sig),
};

async function timeSequential(n, fn) {
  for (let i = 0; i < Math.min(200, n); i++) await fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t0) / 1000 / n;
}

async function timeParallel(batches, fn) {
  await Promise.all(Array.from({ length: PARALLEL }, fn));
  const t0 = process.hrtime.bigint();
  for (let b = 0; b < batches; b++) await Promise.all(Array.from({ length: PARALLEL }, fn));
  return Number(process.hrtime.bigint() - t0) / 1000 / (batches * PARALLEL);
}

async function main() {
  const keys = {};
  const jwks = { keys: [] };
  for (const alg of ALGS) {
    const pair = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
    keys[alg] = pair;
    jwks.keys.push({ ...(await exportJWK(pair.publicKey)), kid: `k-${alg}`, alg, use: 'sig' });
  }
  const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks)));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const parts = (maxEntries) => {
    const config = configSchema.parse({
      service: 'bench',
      inbound: {
        target: 'http://127.0.0.1:1',
        audience: 'bench-app',
        issuers: [{ issuer, jwksUri: `${issuer}/jwks`, algorithms: ALGS }],
        cache: { maxEntries },
        rules: [{ match: { path: '/**' }, allow: [{ sub: 'bench-client' }] }],
      },
    }).inbound;
    return createInboundParts(config, {
      logger: createLogger({ level: 'silent' }),
      metrics: createMetrics({ processMetrics: false }),
      clock: systemClock,
      service: 'bench',
    });
  };
  const cold = parts(0);
  const cached = parts(10_000);
  await Promise.all([cold.keyStore.start(), cached.keyStore.start()]);

  const cases = [];
  for (const alg of ALGS) {
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ client_id: 'bench-client', scope: 'read' })
      .setProtectedHeader({ alg, kid: `k-${alg}`, typ: 'at+jwt' })
      .setIssuer(issuer)
      .setSubject('bench-client')
      .setAudience('bench-app')
      .setIssuedAt(now)
      .setExpirationTime(now + 3600)
      .setJti(`${alg}-jti`)
      .sign(keys[alg].privateKey);
    // The same caller's token an hour after it expired, properly signed: what a client that stopped renewing costs.
    const expiredToken = await new SignJWT({ client_id: 'bench-client', scope: 'read' })
      .setProtectedHeader({ alg, kid: `k-${alg}`, typ: 'at+jwt' })
      .setIssuer(issuer)
      .setSubject('bench-client')
      .setAudience('bench-app')
      .setIssuedAt(now - 7200)
      .setExpirationTime(now - 3600)
      .setJti(`${alg}-expired-jti`)
      .sign(keys[alg].privateKey);
    const requestWith = (t) => ({ method: 'GET', url: '/bench', rawHeaders: ['host', 'app', 'authorization', `Bearer ${t}`], peer: '127.0.0.1' });
    const request = requestWith(token);
    const expiredRequest = requestWith(expiredToken);
    const check = async (p) => {
      const d = await p.authorizer.authorize(request);
      if (!d.allowed) throw new Error(`${alg}: refused (${d.error.code})`);
    };
    const refuseExpired = async () => {
      const d = await cold.authorizer.authorize(expiredRequest);
      if (d.allowed || d.error.code !== 'expired') throw new Error(`${alg}: expired token not refused as expired`);
    };
    await check(cold);
    await refuseExpired();
    const [h, pl, s] = token.split('.');
    const data = Buffer.from(`${h}.${pl}`);
    const sig = Buffer.from(s, 'base64url');
    const keyObject = KeyObject.from(keys[alg].publicKey);
    const pub = createPublicKey(keyObject.export({ format: 'pem', type: 'spki' }));
    if (!NODE[alg](data, pub, sig)) throw new Error(`${alg}: node:crypto says the signature is bad`);
    cases.push({
      alg,
      nodeCrypto: async () => NODE[alg](data, pub, sig),
      webCrypto: () => webcrypto.subtle.verify(WEBCRYPTO[alg], keys[alg].publicKey, sig, data),
      cold: () => check(cold),
      hit: () => check(cached),
      expired: refuseExpired,
    });
  }
  // One pass over everything first, so the first algorithm measured does not pay for JIT warm-up.
  for (const c of cases) for (const fn of [c.nodeCrypto, c.webCrypto, c.cold, c.hit, c.expired]) for (let i = 0; i < 300; i++) await fn();
  const rows = [];
  for (const c of cases) {
    rows.push({
      alg: c.alg,
      nodeCrypto: await timeSequential(ONE_AT_A_TIME, c.nodeCrypto),
      webCrypto: await timeSequential(ONE_AT_A_TIME, c.webCrypto),
      jose: await timeSequential(ONE_AT_A_TIME, c.cold),
      cacheHit: await timeSequential(ONE_AT_A_TIME * 20, c.hit),
      parallel: await timeParallel(Math.ceil(ONE_AT_A_TIME / PARALLEL), c.cold),
      expired: await timeSequential(ONE_AT_A_TIME, c.expired),
    });
  }
  await Promise.all([cold.keyStore.close(), cached.keyStore.close()]);
  server.close();
  process.stdout.write(`${JSON.stringify({ threadpool: Number(process.env.UV_THREADPOOL_SIZE ?? 4), rows })}\n`);
}

main().catch((err) => {
  process.stderr.write(`verify-micro failed: ${err.stack ?? err}\n`);
  process.exit(1);
});
