import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Refusal } from './limits.js';
import { unmapped } from './peer-address.js';

/** RFC 5842 §7.2 (508 Loop Detected), for HTTP requests generally rather than WebDAV's bindings alone. */
export const LOOP_DETECTED: Refusal = {
  status: 508,
  reason: 'loop_detected',
  message: 'the request came back to this sidecar on a connection it opened itself: its upstream is its own listener',
};

/**
 * The connections one half of the sidecar opened to its upstreams (its pools and its WebSocket tunnels), so that
 * its listener can tell when one of them comes back to it: an upstream that is the sidecar's own listener (a
 * mistyped port in `inbound.target`, a route target that is the outbound listener, an app that names the sidecar's
 * own address with `unknownHosts: passthrough`). Such a request would be forwarded to itself again and again: plain
 * requests until the pool ran out of connections, then every level waiting out the upstream timeout; WebSocket
 * upgrades with a new connection per level, with no bound at all. The listener answers it instead (508).
 *
 * A connection is ours when its two endpoints are those of a socket we opened, the other way round. The kernel keeps
 * that pair of endpoints unique among open connections, so there are no false positives (the local port alone would
 * not do: Linux gives one source port to several connections with different destinations). Nothing is added to the
 * requests we send: a `Via` marker would be, and an app that copies incoming headers onto its own calls would carry
 * it back.
 */
export interface OwnConnections {
  /** Records a socket this side opened, once it is connected, until it closes. */
  track(socket: Socket): void;
  /** Whether a connection accepted by this side's listener is one this side opened. */
  isOwn(socket: Duplex): boolean;
}

export function createOwnConnections(): OwnConnections {
  /**
   * The endpoints of every open socket we made, as connectionKey spells them, under their local port: a connection
   * whose peer port is none of these (nearly all) is told apart with one number lookup and no string built.
   */
  const byPort = new Map<number, Set<string>>();
  const add = (socket: Socket) => {
    const port = socket.localPort;
    const key = connectionKey(socket.localAddress, port, socket.remoteAddress, socket.remotePort);
    if (key === undefined || port === undefined) return;
    let keys = byPort.get(port);
    if (!keys) byPort.set(port, (keys = new Set()));
    keys.add(key);
    socket.once('close', () => {
      keys.delete(key);
      if (keys.size === 0 && byPort.get(port) === keys) byPort.delete(port);
    });
  };
  return {
    track(socket) {
      // A socket still connecting has no local port yet. Tracking it once connected is in time: no request goes out
      // on it before then, so none can arrive back before then.
      if (socket.connecting) socket.once('connect', () => add(socket));
      else if (!socket.destroyed) add(socket);
    },
    isOwn(duplex) {
      const socket = duplex as Partial<Socket>;
      const port = socket.remotePort;
      const keys = port === undefined ? undefined : byPort.get(port);
      if (keys === undefined) return false;
      const key = connectionKey(socket.remoteAddress, port, socket.localAddress, socket.localPort);
      return key !== undefined && keys.has(key);
    },
  };
}

/** A connection's endpoints, source first, or undefined while any is unknown (a socket not connected, or closed). */
function connectionKey(fromAddress?: string, fromPort?: number, toAddress?: string, toPort?: number): string | undefined {
  if (fromAddress === undefined || fromPort === undefined || toAddress === undefined || toPort === undefined) return undefined;
  return `${unmapped(fromAddress)} ${fromPort} ${unmapped(toAddress)} ${toPort}`;
}

