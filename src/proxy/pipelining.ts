import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/**
 * Calls `serve` for a request when its turn comes: at once, or, when it was pipelined behind requests still being
 * answered (its response has no socket yet), once every earlier response is complete. Node hands each request over as
 * soon as it is parsed and queues its response; handled at once, a POST pipelined behind another would reach the app
 * on a second upstream connection, side by side with it and possibly first. A server may only work on pipelined
 * requests in parallel if all are safe (RFC 9112 §9.3.2); like Envoy, the sidecar works on one request of a
 * connection at a time. Node assigns the socket once every earlier response is complete; a connection closed
 * meanwhile aborts the request unhandled.
 */
export function inTurn(req: IncomingMessage, res: ServerResponse, serve: (req: IncomingMessage, res: ServerResponse) => void): void {
  if (res.socket) return serve(req, res);
  const socket = req.socket as HttpServerSocket;
  waitTurn(socket);
  res.once('socket', () => {
    takeTurn(socket);
    // Every TURNS_IN_A_ROW-th waiting request of a connection waits for the next event-loop turn (see serveInTurn).
    const inARow = (turnsInARow.get(socket) ?? 0) + 1;
    turnsInARow.set(socket, inARow % TURNS_IN_A_ROW);
    if (inARow < TURNS_IN_A_ROW) serve(req, res);
    else setImmediate(serveInTurn, req, res, serve);
  });
}

/**
 * A waiting request's turn comes when the answer before it is complete, in the same event-loop turn as that answer's
 * end. Served there every time, a connection that pipelined thousands of requests the sidecar answers itself (401s)
 * had them answered back to back, and every other connection waited over a second. So every TURNS_IN_A_ROW-th one
 * is served in the next turn, after other connections' I/O: a turn of its own for each would halve the rate at which
 * a client that pipelines is served, this costs it about a tenth.
 */
const TURNS_IN_A_ROW = 16;
/** Per connection: waiting requests served since the last one that waited for the next turn. */
const turnsInARow = new WeakMap<HttpServerSocket, number>();

function serveInTurn(req: IncomingMessage, res: ServerResponse, serve: (req: IncomingMessage, res: ServerResponse) => void): void {
  // A connection closed meanwhile has aborted the request: nothing is left to serve.
  if (res.destroyed || req.socket.destroyed) return;
  serve(req, res);
}

/** What Node's HTTP server keeps on a connection's socket: `parser` is its parser (null once the socket left HTTP), `_handle` the stream it reads. */
type HttpServerSocket = Socket & {
  parser?: unknown;
  _handle?: { reading: boolean; readStart(): number } | null;
};

/** Per connection: how many of its requests wait for their turn (see inTurn). */
const waitingRequests = new WeakMap<HttpServerSocket, number>();
/** Connections this module stopped reading because too many of their requests wait. */
const pausedForWaiting = new WeakSet<HttpServerSocket>();
/** Connections with the `resume` listener that keeps them paused (see waitTurn). */
const resumeWatched = new WeakSet<HttpServerSocket>();

/**
 * Requests of one connection that may wait for their turn before it stops being read. Node's own flood guard stops
 * reading once the answers queued on a connection pass its buffer, but a waiting request queues no answer, so without
 * a limit every request a client pipelines behind a slow one would be parsed and kept (about 2 KB of heap for 30 bytes
 * on the wire, without bound). Below the limit the connection is read on, so a client that goes away is noticed and
 * its waiting requests are dropped with it, never sent upstream.
 */
const MAX_WAITING_REQUESTS = 32;

/**
 * A request of this connection waits for the responses before it. At the limit the socket is paused (Node then stops
 * reading it; what was read already is parsed, at most one read of 64 KiB) until every waiting request has had its
 * turn: resumed any earlier, each turn would let in one more read of requests. Node resumes the socket itself (when
 * an earlier request's body is read or dumped, when its own guard's pause ends); a `resume` listener pauses it again.
 * Node's own `_paused` flag is left alone: with it Node also pauses the parser, and a TLS socket hands over the rest
 * of a decrypted read after the pause, which a paused parser takes for a parse error.
 */
function waitTurn(socket: HttpServerSocket): void {
  const waiting = (waitingRequests.get(socket) ?? 0) + 1;
  waitingRequests.set(socket, waiting);
  if (waiting < MAX_WAITING_REQUESTS || pausedForWaiting.has(socket)) return;
  pausedForWaiting.add(socket);
  if (!resumeWatched.has(socket)) {
    resumeWatched.add(socket);
    // After Node's own `resume` listener, which starts the reads: stopped again in the same tick, nothing is read.
    socket.on('resume', () => {
      if (pausedForWaiting.has(socket)) socket.pause();
    });
  }
  socket.pause();
}

/** A waiting request's turn has come; once none waits, a connection paused for them is read again. */
function takeTurn(socket: HttpServerSocket): void {
  const waiting = (waitingRequests.get(socket) ?? 1) - 1;
  if (waiting > 0) return void waitingRequests.set(socket, waiting);
  waitingRequests.delete(socket);
  if (!pausedForWaiting.delete(socket)) return;
  // Node's `resume` listener starts the reads again, unless its own guard wants the socket paused.
  if (socket.parser) return void socket.resume();
  // Left HTTP behind (an Upgrade or CONNECT pipelined behind the waiting requests): Node no longer starts the reads it
  // stopped, and the socket's stream still counts a read under way, so a tunnel's resume() would not start one either.
  // Start them here and leave the flow to the tunnel that takes the socket next: nothing is lost meanwhile.
  const handle = socket._handle;
  if (handle && !handle.reading) {
    handle.reading = true;
    handle.readStart();
  }
}
