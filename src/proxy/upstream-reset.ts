import type { Socket } from 'node:net';

/**
 * A response with neither Content-Length nor chunked framing ends where the upstream's connection ends (RFC 9112
 * §6.3, item 8). undici completes such a response also when the connection is reset (ECONNRESET) instead of closed
 * (client-h1.js, onHttpSocketError: macOS resets after a full body), so a body the upstream cut short would reach the
 * client as if whole. A reset is the upstream giving up, as nginx and Envoy read it too, and the client must see one
 * (cutResponse). undici delivers the reset inside the socket's 'error' event and completes the response there, in the
 * same synchronous call: a listener put in front of undici's marks that call, and forward() asks whether the
 * response it is ending ends inside one.
 */
let resetting = false;

const onSocketError = (err: NodeJS.ErrnoException): void => {
  if (err.code !== 'ECONNRESET') return;
  resetting = true;
  queueMicrotask(() => {
    resetting = false;
  });
};

/** Marks the resets of an upstream socket, before undici sees them. */
export function watchUpstreamResets(socket: Socket): void {
  socket.prependListener('error', onSocketError);
}

/** Whether the response being ended now ends because its connection was reset. */
export function endingOnReset(): boolean {
  return resetting;
}
