// The same-runtime baseline: a plain streaming reverse proxy hop written the obvious way with node:http and
// undici (keep-alive Pool, request() + pipeline, hop-by-hop headers removed). No auth, no metrics, no logs.
// Usage: node bench/apps/baseline-proxy.js <target-origin>   (prints {"listening": port} on stdout)
import { createServer } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';

const target = process.argv[2];
const pool = new Pool(target, { connections: 128, pipelining: 1, keepAliveTimeout: 4_000 });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

const server = createServer(async (req, res) => {
  const headers = {};
  for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v;
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';
  try {
    const up = await pool.request({ path: req.url, method: req.method, headers, body: hasBody ? req : null });
    const out = {};
    for (const [k, v] of Object.entries(up.headers)) if (!HOP.has(k)) out[k] = v;
    res.writeHead(up.statusCode, out);
    await pipeline(up.body, res);
  } catch {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  }
});
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
