import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { capped, type Logger } from './log.js';
import type { AdmitTunnel, Refusal, RefusedRequest } from './proxy/listen.js';
import type { Metrics } from './admin/metrics.js';
import type { Clock } from './clock.js';
import type { KeyStoreSnapshot } from './inbound/key-store.js';
import type { TokenCacheSnapshot } from './outbound/token-cache.js';

/**
 * One half of the sidecar (inbound or outbound) as the composition root sees it:
 * a request handler plus a lifecycle. Listeners are owned by the app, so a
 * reload can swap a component without dropping the socket.
 */
export interface Component {
  handle(req: IncomingMessage, res: ServerResponse): void;
  /** `Upgrade:` requests: both sides tunnel WebSocket and refuse every other protocol themselves. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel): void;
  /**
   * A request the listener refused before `handle` or `upgrade` (a head that breaks a limit, an `Expect` other than
   * 100-continue, CONNECT where there is no `connect`, what Node's parser refused): the listener answers it; the
   * component counts and logs it like its own refusals.
   */
  refused(req: RefusedRequest, refusal: Refusal): void;
  /** Whether a connection the listener accepted is one this component opened to its upstream: a loop (see OwnConnections). */
  isOwnConnection(socket: Duplex): boolean;
  /** `CONNECT` requests; absent = refused. */
  connect?(req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel): void;
  /** Starts background work (key loading, token prefetch). Never rejects. */
  start(): Promise<void>;
  /** What it still needs before it can serve, one short line each (`keys for <issuer>: <last error>`); empty = ready. */
  waitingFor(): string[];
  /** Stops timers and closes its pools after in-flight work ends. */
  close(): Promise<void>;
  /**
   * A drain deadline has passed (a shutdown's, or that of a listener a reload moved or removed): what this component
   * still has in flight is about to be cut by the sidecar, so a call that ends unanswered from now on was not given up
   * by its client.
   */
  drainExpired?(): void;
  /** State worth keeping across a config reload (keys, tokens), handed to the successor's factory. */
  handover?(): Handover;
}

/**
 * What a retiring component hands to its successor on reload. Each part is
 * reused only where the successor's config is unchanged for it, so a reload
 * during an IdP outage keeps the last good keys and tokens.
 */
export interface Handover {
  keys?: KeyStoreSnapshot;
  tokens?: TokenCacheSnapshot;
}

/** What every component is built with: injected, never global. */
export interface ComponentDeps {
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  service: string;
  /** From the component this one replaces (config reload). */
  handover?: Handover;
}

/** One line of waitingFor(): what is missing, and the last error behind it if any (on one line, capped: it can quote an IdP's answer). */
export function waitingLine(what: string, lastError: string | undefined): string {
  return lastError ? `${what} (${capped(lastError.replace(/\s+/g, ' '), 200)})` : what;
}
