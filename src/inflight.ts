import type { Duplex } from 'node:stream';
import { cutTunnel } from './proxy/tunnel.js';

interface Closable {
  on(event: 'close', listener: () => void): unknown;
}

/**
 * Counts the work each component still has in flight, so a component retired
 * by a reload is closed only after its last request (bounded by the drain
 * timeout), and remembers tunnels (Upgrade/CONNECT sockets), which leave the
 * HTTP server's bookkeeping and so escape its drain.
 */
export interface InflightTracker {
  /** Counts one unit of work for `owner` until `done` emits 'close'. */
  track(owner: object, done: Closable): void;
  /** Resolves when `owner` has nothing in flight, or after `timeoutMs` (milliseconds). */
  settled(owner: object, timeoutMs: number): Promise<void>;
  /** Remembers a tunnel until its socket closes. */
  trackTunnel(socket: Duplex): void;
  /** Resolves when every tunnel has closed, or after `timeoutMs`; then cuts those still open. */
  drainTunnels(timeoutMs: number): Promise<void>;
  /** What is still open now, all owners together: requests being answered, and tunnels. */
  pending(): { requests: number; tunnels: number };
}

export function createInflightTracker(): InflightTracker {
  const counts = new Map<object, number>();
  const waiters = new Map<object, Set<() => void>>();
  const tunnels = new Set<Duplex>();
  let tunnelsEmpty: (() => void) | undefined;

  const release = (owner: object) => {
    const n = (counts.get(owner) ?? 1) - 1;
    if (n > 0) return void counts.set(owner, n);
    counts.delete(owner);
    for (const w of waiters.get(owner) ?? []) w();
    waiters.delete(owner);
  };

  // One release listener per owner, reused for every request: no closure and no once() wrapper per request.
  // 'close' is emitted once per response and per socket, so a plain listener is enough.
  const releasers = new WeakMap<object, () => void>();
  const releaserFor = (owner: object) => {
    let fn = releasers.get(owner);
    if (!fn) releasers.set(owner, (fn = () => release(owner)));
    return fn;
  };

  return {
    track(owner, done) {
      counts.set(owner, (counts.get(owner) ?? 0) + 1);
      done.on('close', releaserFor(owner));
    },
    settled(owner, timeoutMs) {
      if (!counts.has(owner)) return Promise.resolve();
      return new Promise((resolve) => {
        const timer = setTimeout(finish, timeoutMs);
        function finish() {
          clearTimeout(timer);
          waiters.get(owner)?.delete(finish);
          resolve();
        }
        let set = waiters.get(owner);
        if (!set) waiters.set(owner, (set = new Set()));
        set.add(finish);
      });
    },
    trackTunnel(socket) {
      tunnels.add(socket);
      socket.once('close', () => {
        tunnels.delete(socket);
        if (tunnels.size === 0) tunnelsEmpty?.();
      });
    },
    async drainTunnels(timeoutMs) {
      if (tunnels.size > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, timeoutMs);
          function done() {
            clearTimeout(timer);
            tunnelsEmpty = undefined;
            resolve();
          }
          tunnelsEmpty = done;
        });
      }
      for (const s of tunnels) cutTunnel(s);
    },
    pending() {
      let open = 0;
      for (const n of counts.values()) open += n;
      // A tunnel is counted for its owner too (its socket is tracked like a response).
      return { requests: Math.max(0, open - tunnels.size), tunnels: tunnels.size };
    },
  };
}
