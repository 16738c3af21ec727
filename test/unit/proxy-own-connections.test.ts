import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createOwnConnections } from '../../src/proxy/own-connections.js';

/** A listener that hands over each accepted socket, and its port. */
async function listener(host: string): Promise<{ server: Server; port: number; accepted: () => Promise<Socket> }> {
  const queue: Socket[] = [];
  const waiting: ((s: Socket) => void)[] = [];
  const server = createServer((s) => {
    const w = waiting.shift();
    if (w) w(s);
    else queue.push(s);
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  servers.push(server);
  return {
    server,
    port: (server.address() as AddressInfo).port,
    accepted: () => new Promise<Socket>((r) => (queue.length > 0 ? r(queue.shift()!) : waiting.push(r))),
  };
}

const servers: Server[] = [];
const sockets: Socket[] = [];
const open = (port: number, host = '127.0.0.1') => {
  const s = connect(port, host);
  sockets.push(s);
  return s;
};
const connected = (s: Socket) => new Promise<void>((r) => (s.connecting ? s.once('connect', () => r()) : r()));

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

describe('own connections (real sockets on loopback)', () => {
  it('knows a connection it opened when it arrives at its own listener, and no other', async () => {
    const own = createOwnConnections();
    const l = await listener('127.0.0.1');
    const ours = open(l.port);
    own.track(ours); // still connecting: tracked once connected
    const oursAccepted = await l.accepted();
    await connected(ours);
    const theirs = open(l.port);
    const theirsAccepted = await l.accepted();
    expect(own.isOwn(oursAccepted)).toBe(true);
    expect(own.isOwn(theirsAccepted)).toBe(false);
    // Our own socket seen from our side is not a connection the listener accepted.
    expect(own.isOwn(ours)).toBe(false);
    theirs.destroy();
  });

  it('matches both endpoints: a connection from our socket\'s source address and port to somewhere else is not ours', async () => {
    const own = createOwnConnections();
    const elsewhere = await listener('127.0.0.1');
    const ours = open(elsewhere.port);
    await connected(ours);
    own.track(ours);
    // Linux hands one source port to several connections with different destinations, but will not let a test bind
    // a second socket to it, so the stranger is described by its endpoints as the listener would see them.
    const asAccepted = (localPort: number) =>
      ({ remoteAddress: '127.0.0.1', remotePort: ours.localPort, localAddress: '127.0.0.1', localPort }) as unknown as Socket;
    expect(own.isOwn(asAccepted(elsewhere.port))).toBe(true);
    expect(own.isOwn(asAccepted(elsewhere.port + 1))).toBe(false);
  });

  it('forgets a socket once it closes', async () => {
    const own = createOwnConnections();
    const l = await listener('127.0.0.1');
    const ours = open(l.port);
    own.track(ours);
    const accepted = await l.accepted();
    await connected(ours);
    expect(own.isOwn(accepted)).toBe(true);
    // The same endpoints seen again after our socket closed (the kernel may hand them out anew) are no longer ours.
    const endpoints = { remoteAddress: ours.localAddress, remotePort: ours.localPort, localAddress: ours.remoteAddress, localPort: ours.remotePort };
    expect(own.isOwn({ ...endpoints } as unknown as Socket)).toBe(true);
    await new Promise<void>((r) => {
      ours.once('close', () => r());
      ours.destroy();
    });
    expect(own.isOwn({ ...endpoints } as unknown as Socket)).toBe(false);
  });

  it('reads an IPv4 peer of a dual-stack listener (::ffff:127.0.0.1) as the same address', async (ctx) => {
    const l = await listener('::').catch(() => undefined);
    if (!l) return ctx.skip();
    const own = createOwnConnections();
    const ours = open(l.port, '127.0.0.1');
    own.track(ours);
    const accepted = await l.accepted();
    await connected(ours);
    expect(accepted.remoteAddress).toBe('::ffff:127.0.0.1');
    expect(own.isOwn(accepted)).toBe(true);
  });
});
