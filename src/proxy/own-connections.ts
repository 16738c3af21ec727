import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Refusal } from './limits.js';

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
 * A connection is ours when its peer's address and port are the local address and port of a socket we opened. Only
 * the kernel could give another process that pair while our socket is open, so there are no false positives, and
 * nothing is added to the requests we send (a `Via` marker would be, and an app that copies incoming headers onto
 * its own calls would carry it back).
 */
export interface OwnConnections {
  /** Records a socket this side opened, once it is connected, until it closes. */
  track(socket: Socket): void;
  /** Whether a connection accepted by this side's listener is one this side opened. */
  isOwn(socket: Duplex): boolean;
}

export function createOwnConnections(): OwnConnections {
  /** `address port` of every open socket we made. */
  const open = new Set<string>();
  /** The answer per accepted connection, worked out on its first request: later requests cost one lookup. */
  const verdicts = new WeakMap<Duplex, boolean>();
  const add = (socket: Socket) => {
    const key = endpointKey(socket.localAddress, socket.localPort);
    if (key === undefined) return;
    open.add(key);
    socket.once('close', () => open.delete(key));
  };
  return {
    track(socket) {
      // A socket still connecting has no local port yet. Tracking it once connected is in time: no request goes out
      // on it before then, so none can arrive back before then.
      if (socket.connecting) socket.once('connect', () => add(socket));
      else if (!socket.destroyed) add(socket);
    },
    isOwn(duplex) {
      if (open.size === 0) return false;
      let verdict = verdicts.get(duplex);
      if (verdict === undefined) {
        const socket = duplex as Partial<Socket>;
        const key = endpointKey(socket.remoteAddress, socket.remotePort);
        verdict = key !== undefined && open.has(key);
        verdicts.set(duplex, verdict);
      }
      return verdict;
    },
  };
}

/** One spelling per endpoint: an IPv4 peer of a dual-stack listener reads `::ffff:127.0.0.1`, our socket `127.0.0.1`. */
function endpointKey(address: string | undefined, port: number | undefined): string | undefined {
  if (address === undefined || port === undefined) return undefined;
  return `${address.startsWith('::ffff:') ? address.slice(7) : address} ${port}`;
}
