import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Config, InboundConfig } from './config/schema.js';
import { createMetrics, type Metrics } from './admin/metrics.js';
import { createAdminServer } from './admin/server.js';
import { systemClock, type Clock } from './clock.js';
import type { Component, ComponentDeps } from './component.js';
import { createInbound } from './inbound/index.js';
import { createOutbound } from './outbound/index.js';
import type { Logger } from './log.js';
import { createLimitedServer, formatAddress, listenOn, parseListen, type ListenAddress } from './proxy/listen.js';
import { writeRawError } from './proxy/respond.js';

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
  /** Swaps in a new config; listeners whose address is unchanged keep their sockets. */
  reload(next: Config): Promise<void>;
  /** Stops accepting, lets in-flight requests finish (bounded by the drain timeout), then closes everything. */
  shutdown(): Promise<void>;
}

/** One listening socket whose component can be swapped on reload. */
interface Slot {
  listen: string;
  tls: InboundConfig['tls'];
  limits: Config['limits'];
  server: Server;
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
  let current = config;
  let accepting = true;
  const slots = new Map<Side, Slot>();

  const build = (side: Side, cfg: Config): Component => {
    const deps: ComponentDeps = { logger: logger.child({ component: side }), metrics, clock, service: cfg.service };
    return side === 'inbound' ? createInbound(cfg.inbound!, cfg.limits, deps) : createOutbound(cfg.outbound!, cfg.limits, deps);
  };

  const openSlot = async (side: Side, cfg: Config, component: Component): Promise<Slot> => {
    const listen = side === 'inbound' ? cfg.inbound!.listen : cfg.outbound!.listen;
    const tls = side === 'inbound' ? cfg.inbound!.tls : undefined;
    const slot = { listen, tls, limits: cfg.limits, component } as Slot;
    const server = createLimitedServer(
      cfg.limits,
      (req: IncomingMessage, res: ServerResponse) => {
        if (!accepting) res.shouldKeepAlive = false;
        slot.component.handle(req, res);
      },
      tls,
      {
        logger,
        // Limits (header count, Host) and socket error handling live in createLimitedServer; refusals are JSON like every other error.
        upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => {
          if (slot.component.upgrade) slot.component.upgrade(req, socket, head);
          else writeRawError(socket, 501, 'upgrade_not_supported');
        },
        connect: (req: IncomingMessage, socket: Duplex, head: Buffer) => {
          if (slot.component.connect) slot.component.connect(req, socket, head);
          else writeRawError(socket, 405, 'connect_not_supported');
        },
      },
    );
    slot.server = server;
    slot.address = await listenOn(server, parseListen(listen));
    logger.info({ event: 'listening', side, address: formatAddress(slot.address) }, `${side} listening on ${formatAddress(slot.address)}`);
    return slot;
  };

  const admin = createAdminServer(metrics, {
    isAccepting: () => accepting,
    isReady: () => [...slots.values()].every((s) => s.component.isReady()),
  });

  try {
    for (const side of SIDES) {
      if (!config[side]) continue;
      const component = build(side, config);
      slots.set(side, await openSlot(side, config, component));
      void component.start();
    }
  } catch (err) {
    await Promise.all([...slots.values()].map((s) => closeServer(s.server, 0)));
    throw err;
  }
  const adminAddress = await listenOn(admin, parseListen(config.admin.listen)).catch(async (err) => {
    await Promise.all([...slots.values()].map((s) => closeServer(s.server, 0)));
    throw err;
  });
  logger.info({ event: 'listening', side: 'admin', address: formatAddress(adminAddress) }, `admin listening on ${formatAddress(adminAddress)}`);

  const addresses: RunningApp['addresses'] = { admin: formatAddress(adminAddress) };
  const syncAddresses = () => {
    for (const side of SIDES) {
      const slot = slots.get(side);
      if (slot) addresses[side] = formatAddress(slot.address);
      else delete addresses[side];
    }
  };
  syncAddresses();

  return {
    addresses,
    metrics,
    isReady: () => accepting && [...slots.values()].every((s) => s.component.isReady()),

    async reload(next) {
      // Build, warm up and bind everything new before touching what serves now, so a reload
      // never causes a gap, and a failure (e.g. the new address is taken) changes nothing.
      const fresh = new Map<Side, Component>();
      for (const side of SIDES) if (next[side]) fresh.set(side, build(side, next));
      const opened = new Map<Side, Slot>();
      try {
        await Promise.all([...fresh.values()].map((c) => withTimeout(c.start(), 10_000)));
        for (const [side, component] of fresh) {
          const slot = slots.get(side);
          if (!slot || !canKeepListener(slot, side, next)) opened.set(side, await openSlot(side, next, component));
        }
      } catch (err) {
        await Promise.all([...opened.values()].map((s) => closeServer(s.server, 0)));
        await Promise.all([...fresh.values()].map((c) => c.close()));
        throw err;
      }
      const drainMs = next.lifecycle.drainTimeoutSeconds * 1000;
      const retired: Component[] = [];
      for (const side of SIDES) {
        const slot = slots.get(side);
        if (slot) retired.push(slot.component);
        const replacement = opened.get(side);
        const component = fresh.get(side);
        if (replacement) {
          slots.set(side, replacement);
          if (slot) void closeServer(slot.server, drainMs);
        } else if (component && slot) {
          slot.component = component;
        } else if (slot) {
          slots.delete(side);
          void closeServer(slot.server, drainMs);
        }
      }
      current = next;
      syncAddresses();
      // Old components finish their in-flight work in the background.
      for (const c of retired) void c.close();
    },

    async shutdown() {
      if (!accepting) return;
      accepting = false;
      logger.info({ event: 'shutdown' }, 'draining in-flight requests');
      const drainMs = current.lifecycle.drainTimeoutSeconds * 1000;
      await Promise.all([...slots.values()].map((s) => closeServer(s.server, drainMs)));
      await Promise.all([...slots.values()].map((s) => s.component.close()));
      await closeServer(admin, 0);
      logger.info({ event: 'stopped' }, 'stopped');
    },
  };
}

/** A listener survives a reload only if nothing it was created with changed. */
function canKeepListener(slot: Slot, side: Side, next: Config): boolean {
  const listen = side === 'inbound' ? next.inbound!.listen : next.outbound!.listen;
  const tls = side === 'inbound' ? next.inbound!.tls : undefined;
  return slot.listen === listen && JSON.stringify(slot.tls) === JSON.stringify(tls) && JSON.stringify(slot.limits) === JSON.stringify(next.limits);
}

/** Stops accepting, closes idle keep-alive sockets, and cuts what is left after `drainMs`. */
function closeServer(server: Server, drainMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    const cut = setTimeout(() => server.closeAllConnections(), drainMs);
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

