// A tiny demo app (no dependencies). It listens on 127.0.0.1 only: the sidecar
// in the same network namespace is its only way in.
//  - every request: answers with the caller identity its sidecar verified
//    (x-peer-sub / x-peer-iss), and whether a bearer token reached the app;
//  - GET/POST /checkout with PEER_URL set: calls PEER_URL through the sidecar's
//    outbound listener (HTTP_PROXY, absolute-form request) and returns what the
//    peer answered;
//  - SIGTERM/SIGINT: stops listening and exits 0.
import http from 'node:http';

const service = process.env.SERVICE ?? 'app';
const port = Number(process.env.PORT ?? 8080);
const proxy = process.env.HTTP_PROXY ? new URL(process.env.HTTP_PROXY) : undefined;

function callPeer(url) {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: proxy ? proxy.hostname : target.hostname,
        port: proxy ? proxy.port : target.port || 80,
        method: 'POST',
        path: proxy ? target.href : target.pathname + target.search,
        headers: { host: target.host, 'content-type': 'application/json' },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ amount: 42, currency: 'EUR' }));
  });
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body, null, 2)}\n`);
}

const server = http.createServer(async (req, res) => {
  req.resume();
  const path = (req.url ?? '/').split('?')[0];
  if (path === '/checkout' && process.env.PEER_URL) {
    const peer = await callPeer(process.env.PEER_URL).catch((err) => ({ status: 502, body: JSON.stringify({ error: err.message }) }));
    let answer;
    try {
      answer = JSON.parse(peer.body);
    } catch {
      answer = peer.body;
    }
    return send(res, peer.status === 200 ? 200 : 502, { service, called: process.env.PEER_URL, peerStatus: peer.status, peerAnswer: answer });
  }
  send(res, 200, {
    service,
    method: req.method,
    path,
    caller: { sub: req.headers['x-peer-sub'] ?? null, iss: req.headers['x-peer-iss'] ?? null, client: req.headers['x-peer-client'] ?? null },
    bearerTokenReachedApp: 'authorization' in req.headers,
  });
});
server.listen(port, '127.0.0.1', () => console.log(`${service} app listening on 127.0.0.1:${server.address().port}`));

// The app is its container's PID 1, and PID 1 gets no default action for a signal: without these handlers
// `docker-compose down` would wait out its 10 s and then SIGKILL the app.
for (const signal of ['SIGTERM', 'SIGINT']) process.once(signal, () => server.close(() => process.exit(0)));
