// The benchmark's app: a fast node:http server that drains the request and answers a small JSON body.
// Usage: node bench/apps/upstream.js   (prints {"listening": port} on stdout)
import { createServer } from 'node:http';

const body = Buffer.from('{"ok":true,"app":"bench-upstream"}');
const server = createServer((req, res) => {
  // The benchmark learns the outbound sidecar's cached token here (to probe the inbound sidecar alone) instead of
  // asking the IdP for another one.
  if (req.url === '/echo-authorization') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    return void res.end(req.headers.authorization ?? '');
  }
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
