// The tuned same-runtime baseline: a plain streaming reverse proxy hop built the way the sidecar forwards (undici
// Pool.dispatch() with a handler that writes each response chunk straight to the client, pausing undici while the
// client is full; request headers filtered from rawHeaders in one pass; the upstream request aborted when the
// client goes away). No auth, no rules, no metrics, no logs. It costs about half the CPU per request of
// baseline-proxy.js, the obvious way (request() + pipeline()), so the sidecar is held to the better of the two.
// Usage: node bench/apps/baseline-dispatch.js <target-origin>   (prints {"listening": port} on stdout)
import { createServer } from 'node:http';
import { Pool } from 'undici';

const target = process.argv[2];
const pool = new Pool(target, { connections: 128, pipelining: 1, keepAliveTimeout: 4_000 });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

class Relay {
  constructor(res) {
    this.res = res;
    this.controller = undefined;
    this.onDrain = () => this.controller?.resume();
    // The client gone before the answer ended: the upstream request is aborted, as the sidecar aborts it.
    res.on('close', () => {
      if (!res.writableFinished) this.controller?.abort(new Error('client went away'));
    });
  }
  onRequestStart(controller) {
    this.controller = controller;
  }
  onResponseStart(controller, status, headers) {
    const out = {};
    for (const k in headers) if (!HOP.has(k)) out[k] = headers[k];
    this.res.writeHead(status, out);
    this.res.on('drain', this.onDrain);
  }
  onResponseData(controller, chunk) {
    if (!this.res.write(chunk)) controller.pause();
  }
  onResponseEnd() {
    this.res.off('drain', this.onDrain);
    this.res.end();
  }
  onResponseError() {
    if (!this.res.headersSent) this.res.writeHead(502).end();
    else this.res.destroy();
  }
}

const server = createServer((req, res) => {
  const raw = req.rawHeaders;
  const headers = [];
  for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';
  pool.dispatch({ path: req.url, method: req.method, headers, body: hasBody ? req : null }, new Relay(res));
});
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
