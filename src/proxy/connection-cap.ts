import { readFileSync } from 'node:fs';

/**
 * How many client connections a traffic listener holds at once. A connection flood (or a fleet of callers with large
 * keep-alive pools) would otherwise take every file descriptor the process may open: the sidecar then cannot connect
 * to its app or its IdP (every request 502, keys not refreshed) and the admin listener cannot accept the kubelet's
 * probes. With a cap, a connection over it is closed as it is accepted and everything else keeps working.
 *
 * Without `limits.maxConnections` the cap is a quarter of the open-file limit for each of the two traffic listeners:
 * half of the descriptors for clients, the other half for what they cause (an outbound call's upstream connection, up
 * to one per client connection; the app's pool; IdP fetches; the admin listener; files). Node raises the soft limit to
 * the hard one as it starts, so the limit read here is the one that applies.
 */
export function connectionCap(configured: number | undefined, fileLimit: number | undefined): number {
  if (configured !== undefined) return configured;
  return fileLimit === undefined ? Infinity : Math.max(1, Math.floor(fileLimit / 4));
}

/**
 * How many connections the admin listener holds at once: an eighth of the open-file limit, and at least
 * ADMIN_MIN_CONNECTIONS; no cap where the limit cannot be read. The cap is there so that a flood on the admin port
 * (every interface by default, no authentication) cannot take every descriptor the process may open; set small, a
 * few dozen connections that said nothing would have kept the kubelet's probes out, and a failed readiness probe
 * takes the pod out of its Service. With the traffic listeners' quarters, an eighth leaves over a third of the
 * descriptors for the app's, the IdP's and the outbound calls' connections.
 */
export function adminConnectionCap(fileLimit: number | undefined): number {
  return fileLimit === undefined ? Infinity : Math.max(ADMIN_MIN_CONNECTIONS, Math.floor(fileLimit / 8));
}

export const ADMIN_MIN_CONNECTIONS = 256;

/** The process's soft limit on open files, from /proc/self/limits; undefined where there is none (not Linux) or it is unlimited. */
export function openFileLimit(read: () => string = () => readFileSync('/proc/self/limits', 'utf8')): number | undefined {
  let text: string;
  try {
    text = read();
  } catch {
    return undefined;
  }
  const soft = /^Max open files\s+(\S+)/m.exec(text)?.[1];
  const n = Number(soft);
  return soft !== undefined && Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/**
 * Counts dropped connections and reports them at most once per `everyMs`: the first at once, then, `everyMs` after
 * the last report, how many were dropped since. A flood drops thousands a second; a log line each would bury every
 * other line, and a count held back until the next drop (hours later, perhaps) would be reported as if it were new.
 * The timer does not keep the process alive.
 */
export function throttledCount(report: (count: number) => void, everyMs = 10_000): () => void {
  let count = 0;
  let last = -Infinity;
  let pending: NodeJS.Timeout | undefined;
  const flush = () => {
    pending = undefined;
    if (count === 0) return;
    last = performance.now();
    report(count);
    count = 0;
  };
  return () => {
    count++;
    if (pending) return;
    const wait = last + everyMs - performance.now();
    if (wait <= 0) flush();
    else pending = setTimeout(flush, wait).unref();
  };
}
