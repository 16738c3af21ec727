import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { isIP } from 'node:net';
import type { Config, InboundConfig } from './config/schema.js';
import { DEFAULTS } from './config/defaults.js';
import { createMetrics, type Metrics } from './admin/metrics.js';
import { createAdminServer } from './admin/server.js';
import { systemClock, type Clock } from './clock.js';
import type { Component, ComponentDeps, Handover } from './component.js';
import { ListenError, SidecarError } from './errors.js';
import { createInbound } from './inbound/index.js';
import { describeUnreachable, unreachableRules } from './inbound/unreachable-rules.js';
import { createInflightTracker } from './inflight.js';
import { createOutbound } from './outbound/index.js';
import type { Logger } from './log.js';
import { throttledCount } from './proxy/connection-cap.js';
import { createLimitedServer, formatAddress, limitSettings, listenOn, parseListen, type AdmitTunnel, type LimitedServer, type ListenAddress } from './proxy/listen.js';

type Side = 'inbound' | 'outbound';
const SIDES = ['inbound', 'outbound'] as const;

export interface AppOptions {
  logger: Logger;
  metrics?: Metrics;
  clock?: Clock;
}

export interface RunningApp {
  /** Bound addresses (real ports when the config said port 0). */
  readonly addresses: { inbound?: string; outbound?: string; admin: string };
  readonly metrics: Metrics;
  isReady(): boolean;
  /**
   * Swaps in a new config; listeners whose address is unchanged keep their sockets, and keys and
   * tokens carry over where their config is unchanged. All or nothing: on failure nothing changed.
   * `superseded` settling while the new config warms up gives it up (a SidecarError `superseded`): a newer config is
   * on its way, and this one, applied, could only discard what serves now for nothing.
   */
  reload(next: Config, superseded?: Promise<void>): Promise<void>;
  /** Stops accepting, lets in-flight requests and tunnels finish (bounded by the drain timeout), then closes everything. */
  shutdown(): Promise<void>;
}

/** One listening socket whose component can be swapped on reload. */
interface Slot {
  listen: string;
  tls: InboundConfig['tls'];
  limits: Config['limits'];
  server: LimitedServer;
  component: Component;
  address: ListenAddress;
}

/**
 * Composition root: builds the components, listeners and admin server from a
 * validated Config, and owns their lifecycle.
 */
export async function startApp(config: Config, opts: AppOptions): Promise<RunningApp> {
  const logger = opts.logger;
  const metrics = opts.metrics ?? createMetrics({ service: config.service });
  const clock = opts.clock ?? systemClock;
  const inflight = createInflightTracker();
  let current = config;
  let accepting = true;
  // Shutdown does not wait for a reload's warm-up (up to reloadWarmupSeconds against a slow IdP): the reload gives up
  // as soon as shutdown begins, and shutdown waits only for it to put away what it had built.
  let beginShutdown!: () => void;
  const shutdownBegun = new Promise<void>((resolve) => (beginShutdown = resolve));
  let reloadSettled: Promise<unknown> = Promise.resolve();
  const shuttingDownError = () => new SidecarError('shutting_down', 'the sidecar is shutting down', 503);
  const slots = new Map<Side, Slot>();
  // A rule that can never decide is a policy that is not applied: said for the rules that serve, at start and after a
  // reload that changed what there is to say (not again for each retry or SIGHUP of the same rules).
  let reportedRules: string | undefined;
  const reportUnreachableRules = (cfg: Config) => {
    const rules = cfg.inbound?.rules ?? [];
    const lines = unreachableRules(rules).map((u) => ({ fields: { event: 'rule_unreachable', key: `inbound.rules.${u.index}`, pattern: u.pattern, coveredBy: u.coveredBy }, msg: describeUnreachable(u, rules) }));
    const said = lines.map((l) => l.msg).join('\n');
    if (said === reportedRules) return;
    reportedRules = said;
    const inboundLogger = logger.child({ component: 'inbound' });
    for (const l of lines) inboundLogger.warn(l.fields, l.msg);
  };

  const build = (side: Side, cfg: Config, handover?: Handover): Component => {
    const deps: ComponentDeps = { logger: logger.child({ component: side }), metrics, clock, service: cfg.service, ...(handover ? { handover } : {}) };
    return side === 'inbound' ? createInbound(cfg.inbound!, cfg.limits, deps) : createOutbound(cfg.outbound!, cfg.limits, deps);
  };

  /** A listener is bound; its cap is said where it has one (no cap is a field left out, as on max_connections_changed). */
  const logListening = (side: Side | 'admin', address: ListenAddress, server: Server) => {
    logger.info({ event: 'listening', side, address: formatAddress(address), maxConnections: finite(server.maxConnections) }, `${side} listening on ${formatAddress(address)}`);
  };

  /** Counts (from 0, so the first shows in increase()) and logs, throttled, the connections a full listener closes as it accepts them. */
  const droppedConnections = (side: Side | 'admin', maxConnections: () => number) => {
    metrics.connectionsDropped.inc({ direction: side }, 0);
    const cap = side === 'admin' ? 'its cap (an eighth of the open-file limit)' : 'limits.maxConnections';
    const report = throttledCount((count) => {
      const max = maxConnections();
      logger.warn({ event: 'connections_dropped', side, count, maxConnections: max }, `${side} closed ${count} new connection(s) as it accepted them: it holds ${cap} (${max})`);
    });
    return () => {
      metrics.connectionsDropped.inc({ direction: side });
      report();
    };
  };

  const openSlot = async (side: Side, cfg: Config, component: Component): Promise<Slot> => {
    const listen = listenOf(side, cfg);
    const tls = tlsOf(side, cfg);
    const slot = { listen, tls, limits: cfg.limits, component } as Slot;
    const tunnelled = (req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel, kind: 'upgrade' | 'connect') => {
      const c = slot.component;
      inflight.track(c, socket);
      inflight.trackTunnel(socket);
      if (kind === 'upgrade') c.upgrade(req, socket, head, admit);
      else c.connect!(req, socket, head, admit);
    };
    const dropped = droppedConnections(side, () => slot.server.maxConnections);
    const server = createLimitedServer(
      cfg.limits,
      (req: IncomingMessage, res: ServerResponse) => {
        if (!accepting) res.shouldKeepAlive = false;
        inflight.track(slot.component, res);
        slot.component.handle(req, res);
      },
      tls,
      {
        logger,
        // Limits (header count, Host) and socket error handling live in createLimitedServer; refusals are JSON like every other error.
        refused: (req, refusal) => slot.component.refused(req, refusal),
        isOwnConnection: (socket) => slot.component.isOwnConnection(socket),
        dropped,
        upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel) => tunnelled(req, socket, head, admit, 'upgrade'),
        // CONNECT is the outbound side's alone (passthrough hosts); without a handler the listener refuses it (405).
        // A reload swaps the component for one of the same side, so this holds for the life of the listener.
        ...(component.connect ? { connect: (req: IncomingMessage, socket: Duplex, head: Buffer, admit: AdmitTunnel) => tunnelled(req, socket, head, admit, 'connect') } : {}),
      },
    );
    slot.server = server;
    slot.address = await listenAs(`${side}.listen`, server, listen);
    logListening(side, slot.address, server);
    return slot;
  };

  const adminState = {
    isAccepting: () => accepting,
    waitingFor: () => [...slots.values()].flatMap((s) => s.component.waitingFor()),
  };
  const openAdmin = async (listen: string, limits: Config['limits']) => {
    const server: Server = createAdminServer(metrics, adminState, limits, droppedConnections('admin', () => server.maxConnections));
    const address = await listenAs('admin.listen', server, listen);
    logListening('admin', address, server);
    return { server, listen, address };
  };

  /** The counterpart of `listening`, for a listener a reload closes: moved to another address, or its side removed. */
  const STOPPED_BECAUSE = { moved: 'the reload moved it', removed: 'the reload removed it', rolled_back: 'the reload that opened it failed' } as const;
  const logStoppedListening = (side: Side | 'admin', address: ListenAddress, why: keyof typeof STOPPED_BECAUSE) => {
    const where = formatAddress(address);
    logger.info({ event: 'stopped_listening', side, address: where, reason: why }, `${side} stopped listening on ${where} (${STOPPED_BECAUSE[why]})`);
  };

  let admin: Awaited<ReturnType<typeof openAdmin>>;
  try {
    for (const side of SIDES) {
      if (!config[side]) continue;
      slots.set(side, await openSlot(side, config, build(side, config)));
    }
    admin = await openAdmin(config.admin.listen, config.limits);
  } catch (err) {
    await Promise.all([...slots.values()].map(async (s) => {
      await closeServer(s.server, 0);
      await s.component.close();
    }));
    throw err;
  }
  // Keys and tokens are asked for only once every socket is bound: a sidecar that cannot start (say the admin port is
  // taken) makes no request to the IdP, and logs no key or token failure of its own making as it closes them again.
  for (const slot of slots.values()) void slot.component.start();
  reportUnreachableRules(config);

  const addresses: RunningApp['addresses'] = { admin: formatAddress(admin.address) };
  const syncAddresses = () => {
    for (const side of SIDES) {
      const slot = slots.get(side);
      if (slot) addresses[side] = formatAddress(slot.address);
      else delete addresses[side];
    }
    addresses.admin = formatAddress(admin.address);
  };
  syncAddresses();

  /** Closes a replaced component once its in-flight requests are done (at most the drain timeout). */
  const retire = async (component: Component, drainMs: number) => {
    retiringComponents.add(component);
    try {
      await inflight.settled(component, drainMs);
      await component.close();
    } finally {
      retiringComponents.delete(component);
    }
  };
  // Components a reload replaced that still serve requests: a shutdown's drain deadline cuts those requests too. (A
  // reload alone cuts nothing they serve unless it moved or removed their listener: see closeServer's onCut below.)
  const retiringComponents = new Set<Component>();
  // What reloads replaced and is still finishing its requests (a listener whose address changed, the components it
  // served): shutdown waits for it too, or a SIGTERM soon after such a reload would cut those requests at exit.
  const retiring = new Set<Promise<void>>();
  const retireInBackground = (work: Promise<void>) => {
    retiring.add(work);
    void work.finally(() => retiring.delete(work));
  };
  // Listeners a reload moved or removed, still finishing their requests under that reload's drain: a shutdown's own
  // deadline cuts them too. Left to the reload's (a drain of 30 s, then SIGTERM with 3 s) they held the exit for the rest.
  const retiringServers = new Set<LimitedServer>();
  const retireServer = (slot: Slot, drainMs: number) => {
    retiringServers.add(slot.server);
    retireInBackground(closeServer(slot.server, drainMs, true, () => slot.component.drainExpired?.()).finally(() => retiringServers.delete(slot.server)));
  };

  return {
    addresses,
    metrics,
    isReady: () => accepting && adminState.waitingFor().length === 0,

    reload(next, superseded) {
      if (!accepting) return Promise.reject(shuttingDownError());
      const applied = applyReload(next, superseded);
      reloadSettled = applied.catch(() => {});
      return applied;
    },

    async shutdown() {
      if (!accepting) return;
      accepting = false;
      beginShutdown();
      logger.info({ event: 'shutdown' }, 'draining in-flight requests');
      await reloadSettled;
      const drainSeconds = current.lifecycle.drainTimeoutSeconds;
      const drainMs = drainSeconds * 1000;
      // Set before the listeners' own deadlines (same delay, so it fires first): what the deadline cuts is said before
      // it is cut. Without it a drain that cut requests ended with the same `stopped` line and exit 0 as a clean one.
      const deadline = setTimeout(() => {
        const left = inflight.pending();
        if (left.requests + left.tunnels === 0) return;
        for (const c of [...[...slots.values()].map((s) => s.component), ...retiringComponents]) c.drainExpired?.();
        // Tunnels on them are cut with the others (drainTunnels).
        for (const server of retiringServers) server.closeHttpConnections();
        logger.warn(
          { event: 'drain_timeout', drainTimeoutSeconds: drainSeconds, ...left },
          `drain timeout reached: cutting ${left.requests} request(s) and ${left.tunnels} tunnel(s) still in flight`,
        );
      }, drainMs);
      await Promise.all([...[...slots.values()].map((s) => closeServer(s.server, drainMs)), inflight.drainTunnels(drainMs), ...retiring]);
      clearTimeout(deadline);
      await Promise.all([...slots.values()].map((s) => s.component.close()));
      await closeServer(admin.server, 0);
      logger.info({ event: 'stopped' }, 'stopped');
    },
  };

  /** Builds, warms up and binds the new config, then swaps it in; see RunningApp.reload. */
  async function applyReload(next: Config, superseded?: Promise<void>): Promise<void> {
    const previousLevel = logger.level;
    // Before building, so the new components' loggers are born with the new level.
    logger.level = next.log.level;
    // Build, warm up and bind everything new before touching what serves now, so a reload
    // never causes a gap, and a failure (e.g. the new address is taken) changes nothing.
    const fresh = new Map<Side, Component>();
    const opened = new Map<Side, Slot>();
    const reconfigured = new Map<Side, () => void>();
    let newAdmin: typeof admin | undefined;
    try {
      for (const side of SIDES) if (next[side]) fresh.set(side, build(side, next, slots.get(side)?.component.handover?.()));
      const warmUp = Promise.all([...fresh.values()].map((c) => withTimeout(c.start(), DEFAULTS.lifecycle.reloadWarmupSeconds * 1000)));
      let givenUp = false;
      await Promise.race([warmUp, shutdownBegun, ...(superseded ? [superseded.then(() => void (givenUp = true))] : [])]);
      if (!accepting) throw shuttingDownError();
      if (givenUp) throw new SidecarError('superseded', 'a newer config arrived while this one warmed up', 1);
      for (const [side, component] of fresh) {
        const slot = slots.get(side);
        if (!slot || !isSameAddress(slot, listenOf(side, next))) {
          opened.set(side, await openSlot(side, next, component).catch((err: unknown) => ownPortTaken(`${side}.listen`, slot, listenOf(side, next), err)));
        }
        // Same address, other limits or TLS files: a second socket could not be bound there, so the listener takes
        // them in place (checked here, applied below with everything else).
        else if (!hasSameSettings(slot, side, next)) reconfigured.set(side, slot.server.prepareReconfigure(next.limits, tlsOf(side, next)));
      }
      if (!isSameAddress(admin, next.admin.listen)) newAdmin = await openAdmin(next.admin.listen, next.limits).catch((err: unknown) => ownPortTaken('admin.listen', admin, next.admin.listen, err));
      // Past this point the swap runs to the end without waiting on anything, so shutdown cannot begin halfway.
      if (!accepting) throw shuttingDownError();
    } catch (err) {
      logger.level = previousLevel;
      // Each was announced `listening` as it opened; the line that takes that back, so no log claims a dead address.
      for (const [side, slot] of opened) logStoppedListening(side, slot.address, 'rolled_back');
      if (newAdmin) logStoppedListening('admin', newAdmin.address, 'rolled_back');
      await Promise.all([...opened.values()].map((s) => closeServer(s.server, 0)));
      if (newAdmin) await closeServer(newAdmin.server, 0);
      await Promise.all([...fresh.values()].map((c) => c.close()));
      throw err;
    }
    const drainMs = next.lifecycle.drainTimeoutSeconds * 1000;
    for (const side of SIDES) {
      const slot = slots.get(side);
      if (slot) retireInBackground(retire(slot.component, drainMs));
      const replacement = opened.get(side);
      const component = fresh.get(side);
      if (replacement) {
        slots.set(side, replacement);
        if (slot) {
          logStoppedListening(side, slot.address, 'moved');
          retireServer(slot, drainMs);
        }
      } else if (component && slot) {
        slot.component = component;
        const reconfigure = reconfigured.get(side);
        if (reconfigure) {
          const capBefore = slot.server.maxConnections;
          reconfigure();
          // The cap is on the `listening` line; a reload that changes it in place says so, as one that moves the listener does.
          const cap = slot.server.maxConnections;
          if (cap !== capBefore) {
            // No cap (where the open-file limit cannot be read and the key is not set) is a field left out, as on `listening`.
            logger.info(
              { event: 'max_connections_changed', side, maxConnections: finite(cap), previous: finite(capBefore) },
              Number.isFinite(cap) ? `${side} now holds at most ${cap} connections (limits.maxConnections)` : `${side} no longer limits its connections (limits.maxConnections)`,
            );
          }
          slot.limits = next.limits;
          slot.tls = tlsOf(side, next);
        }
      } else if (slot) {
        slots.delete(side);
        logStoppedListening(side, slot.address, 'removed');
        retireServer(slot, drainMs);
      }
    }
    if (newAdmin) {
      logStoppedListening('admin', admin.address, 'moved');
      void closeServer(admin.server, 0);
      admin = newAdmin;
    } else {
      // The admin listener kept: new limits apply to it in place, as to the others (see prepareReconfigure).
      Object.assign(admin.server, limitSettings(next.limits));
    }
    if (next.service !== current.service) {
      logger.warn({ event: 'restart_required', key: 'service' }, 'the service name in logs and metrics changes at the next restart');
    }
    current = next;
    syncAddresses();
    reportUnreachableRules(next);
    const notReady = SIDES.filter((side) => slots.get(side) && slots.get(side)!.component.waitingFor().length > 0);
    if (notReady.length > 0) logger.warn({ event: 'reloaded_not_ready', sides: notReady }, 'new config is serving but not ready yet (keys or tokens still loading)');
  }
}

/** The default address of each listener: a config that never names the key still binds it (two sidecars on one host). */
const DEFAULT_LISTEN: Readonly<Record<string, string>> = {
  'inbound.listen': DEFAULTS.inbound.listen,
  'outbound.listen': DEFAULTS.outbound.listen,
  'admin.listen': DEFAULTS.admin.listen,
};

/** Binds `listen`; a failure (the address in use) names the config key that gave the address, and says when it is that key's default. */
async function listenAs(key: string, server: Server, listen: string): Promise<ListenAddress> {
  const address = parseListen(listen);
  try {
    return await listenOn(server, address);
  } catch (err) {
    throw new ListenError(key, formatAddress(address), err, listen === DEFAULT_LISTEN[key]);
  }
}

function listenOf(side: Side, config: Config): string {
  return side === 'inbound' ? config.inbound!.listen : config.outbound!.listen;
}

function tlsOf(side: Side, config: Config): InboundConfig['tls'] {
  return side === 'inbound' ? config.inbound!.tls : undefined;
}

/** Whether a kept listener's limits and TLS files are those of the new config. */
function hasSameSettings(slot: Slot, side: Side, next: Config): boolean {
  return JSON.stringify(slot.tls) === JSON.stringify(tlsOf(side, next)) && JSON.stringify(slot.limits) === JSON.stringify(next.limits);
}

/**
 * A reload opens the new socket before it closes the old one, so that no connection is refused meanwhile; on the same
 * port with only the host changed (`127.0.0.1:15006` to `0.0.0.0:15006`, or back), the old socket may hold the port,
 * and the new one cannot bind. An "address already in use" there is said as what it is, not blamed on another program.
 */
function ownPortTaken(key: string, bound: { address: ListenAddress } | undefined, listen: string, err: unknown): never {
  const { host, port } = parseListen(listen);
  const inUse = err instanceof ListenError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'EADDRINUSE';
  if (!inUse || bound === undefined || port === 0 || port !== bound.address.port) throw err;
  // Two different IPv4 addresses, neither the wildcard (127.0.0.1 and 127.0.0.2), do not share a port: what holds it
  // there is another program, and a restart would not help. IPv6 spellings (`[::0]`, `[::ffff:127.0.0.1]`) and names
  // can overlap the old socket, so they are taken for the sidecar's own.
  const otherIpv4 = isIP(host) === 4 && isIP(bound.address.host) === 4 && host !== '0.0.0.0' && bound.address.host !== '0.0.0.0' && host !== bound.address.host;
  if (otherIpv4) throw err;
  throw new SidecarError(
    'restart_required',
    `${key}: moving from ${formatAddress(bound.address)} to ${listen} keeps the port, which the listener there holds until the new one is open; restart the sidecar to change only the host, or move to another port`,
    1,
    { cause: err },
  );
}

/** A number, or undefined for Infinity (no cap): a log field left out rather than written as null. */
function finite(n: number): number | undefined {
  return Number.isFinite(n) ? n : undefined;
}

/**
 * Same text, or the address the socket is actually bound to (`:0` became port 43857, `:9090` is `0.0.0.0:9090`):
 * rebinding it would fail with EADDRINUSE.
 */
function isSameAddress(bound: { listen: string; address: ListenAddress }, listen: string): boolean {
  if (bound.listen === listen) return true;
  const next = parseListen(listen);
  return next.port !== 0 && next.port === bound.address.port && next.host === bound.address.host;
}

/**
 * Stops accepting, closes idle keep-alive sockets, and cuts what is left after `drainMs`. With `keepTunnels` (a
 * listener a reload retires), open tunnels are left to run their course as at an address the reload kept: only HTTP
 * connections are cut, and the promise settles once the tunnels have closed too (a SIGTERM cuts them at its deadline).
 * `onCut` runs just before the cut, so what the cut ends is counted as the sidecar's doing, not the client's.
 */
function closeServer(server: Server, drainMs: number, keepTunnels = false, onCut?: () => void): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    const cut = setTimeout(() => {
      onCut?.();
      if (!keepTunnels) return server.closeAllConnections();
      clearInterval(idle);
      (server as LimitedServer).closeHttpConnections();
    }, drainMs);
    const idle = setInterval(() => server.closeIdleConnections(), 100);
    server.close(() => {
      clearTimeout(cut);
      clearInterval(idle);
      resolve();
    });
    server.closeIdleConnections();
  });
}

async function withTimeout(p: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}
