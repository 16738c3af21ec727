import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { LimitsConfig } from '../config/schema.js';
import { adminConnectionCap, openFileLimit } from '../proxy/connection-cap.js';
import { limitedServerSettings } from '../proxy/listen.js';
import { DatedResponse } from '../proxy/dated-response.js';
import { inTurn } from '../proxy/pipelining.js';
import { writeRawResponse } from '../proxy/respond.js';
import type { Metrics } from './metrics.js';

export interface AdminState {
  /** False once shutdown starts, so load balancers stop sending traffic. */
  isAccepting(): boolean;
  /** What the components still need before they can serve (issuer keys, route tokens); empty = ready. */
  waitingFor(): string[];
}

/**
 * GET /healthz (process alive), /readyz (ready to serve), /metrics (Prometheus text). The header size and the headers,
 * request and keep-alive timeouts of `limits` apply here as on the other listeners: the admin port listens on every
 * interface by default, and with Node's own timeouts a connection that sent nothing, or half a header block, was held
 * for over a minute instead of `headersTimeoutSeconds`.
 */
export function createAdminServer(metrics: Metrics, state: AdminState, limits: LimitsConfig, dropped: () => void): Server {
  // One request of a connection at a time, as on the other listeners (pipelining.ts). Node hands every pipelined
  // request over as soon as it is parsed, and a /metrics answer is rendered asynchronously, so one connection that
  // pipelined thousands of `GET /metrics` had them all rendered at once (the heap grew by over 100 MB). Each is also
  // answered in an event-loop turn of its own, where the data listeners yield every 16th: a /metrics answer costs
  // far more than a refusal, and sixteen in a row would hold the inbound and outbound listeners that much longer.
  const server = createServer({ ...limitedServerSettings(limits), ServerResponse: DatedResponse }, (request, response) => {
    atRest.busy(request.socket, response);
    inTurn(request, response, inTurnOfItsOwn);
  });
  const atRest = connectionsAtRest(server);
  const inTurnOfItsOwn = (req: IncomingMessage, res: ServerResponse) => void setImmediate(serve, req, res);
  const serve = (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end(METHOD_NOT_ALLOWED);
      return;
    }
    switch (path) {
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        // The body says what is missing, so `curl /readyz` answers "why not ready?" without a trip to the logs.
        const waiting = state.isAccepting() ? state.waitingFor() : undefined;
        const body = waiting === undefined ? 'shutting down\n' : waiting.length === 0 ? 'ready\n' : `not ready\n${waiting.map((w) => `- waiting for ${w}\n`).join('')}`;
        res.writeHead(waiting?.length === 0 ? 200 : 503, { 'content-type': 'text/plain' }).end(body);
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
  };
  // A cap of its own (adminConnectionCap): without one a flood on this port took every descriptor the process may
  // open, so the probes, the callers and the app's and the IdP's connections all failed. At the cap, the connections
  // at rest (see connectionsAtRest) are closed to make room: the next probe gets in, and only a flood that keeps
  // sending partial requests (each closed after limits.headersTimeoutSeconds) holds the places.
  server.maxConnections = adminConnectionCap(openFileLimit());
  server.on('drop', () => {
    atRest.close();
    dropped();
  });
  // Without a listener Node closes a CONNECT's socket with no answer at all; the other methods get a 405 above.
  server.on('connect', (_req, socket: Duplex) => {
    socket.on('error', () => socket.destroy());
    writeRawResponse(socket, 405, { allow: 'GET, HEAD', 'content-type': 'text/plain', 'content-length': String(METHOD_NOT_ALLOWED.length) }, METHOD_NOT_ALLOWED);
  });
  return server;
}

const METHOD_NOT_ALLOWED = 'method not allowed\n';

/**
 * The admin listener's connections at rest: none of their requests is being answered, everything answered has left
 * for the kernel, and no byte of a new request has come since (a socket that never said anything, a scraper's
 * keep-alive connection between scrapes). `close` closes those. Node's closeIdleConnections() was not that: it counts
 * a connection idle once its response is ended, and cut a /metrics page still being sent to a slow scraper.
 */
function connectionsAtRest(server: Server): { busy(socket: Socket, response: ServerResponse): void; close(): void } {
  const open = new Map<Socket, { answering: number; bytesReadAtRest: number }>();
  server.on('connection', (socket: Socket) => {
    open.set(socket, { answering: 0, bytesReadAtRest: 0 });
    socket.once('close', () => open.delete(socket));
  });
  return {
    busy(socket, response) {
      const state = open.get(socket);
      if (!state) return;
      state.answering++;
      response.once('close', () => {
        state.answering--;
        state.bytesReadAtRest = socket.bytesRead;
      });
    },
    close() {
      for (const [socket, state] of open) {
        if (state.answering === 0 && socket.writableLength === 0 && socket.bytesRead === state.bytesReadAtRest) socket.destroy();
      }
    },
  };
}
