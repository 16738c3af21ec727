import { createServer, type Server } from 'node:http';
import type { Metrics } from './metrics.js';

export interface AdminState {
  /** False once shutdown starts, so load balancers stop sending traffic. */
  isAccepting(): boolean;
  /** Every component ready (issuer keys loaded, route tokens fetched). */
  isReady(): boolean;
}

/** GET /healthz (process alive), /readyz (ready to serve), /metrics (Prometheus text). */
export function createAdminServer(metrics: Metrics, state: AdminState): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    switch (path) {
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        const status = !state.isAccepting() ? 'shutting down' : state.isReady() ? 'ready' : 'not ready';
        res.writeHead(status === 'ready' ? 200 : 503, { 'content-type': 'text/plain' }).end(`${status}\n`);
        return;
      }
      case '/metrics':
        metrics.registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
          () => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'),
        );
        return;
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
}
