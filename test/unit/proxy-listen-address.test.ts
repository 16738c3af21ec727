import { createServer, type Server } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { listenOn } from '../../src/proxy/listen.js';

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

function server(): Server {
  const s = createServer((_req, res) => res.end('ok'));
  servers.push(s);
  return s;
}

/** A server whose IPv6 sockets fail as on a kernel booted with ipv6.disable=1 (the kernel is the edge faked here). */
function serverWithoutIpv6(): Server {
  const s = server();
  const listen = s.listen.bind(s) as (port: number, host: string, cb: () => void) => Server;
  s.listen = ((port: number, host: string, cb: () => void) => {
    if (host.includes(':')) {
      process.nextTick(() => s.emit('error', Object.assign(new Error(`listen EAFNOSUPPORT: address family not supported ${host}:${port}`), { code: 'EAFNOSUPPORT' })));
      return s;
    }
    return listen(port, host, cb);
  }) as typeof s.listen;
  return s;
}

const hasIpv6Loopback = await new Promise<boolean>((resolve) => {
  const s = createServer();
  s.once('error', () => resolve(false));
  s.listen(0, '::1', () => s.close(() => resolve(true)));
});

describe('listen addresses', () => {
  it.skipIf(!hasIpv6Loopback)('[::] takes IPv4 and IPv6 connections alike, so one config serves IPv4, IPv6 and dual-stack pods', async () => {
    const { host, port } = await listenOn(server(), { host: '::', port: 0 });
    expect(host).toBe('::');
    for (const origin of [`http://127.0.0.1:${port}`, `http://[::1]:${port}`]) expect(await (await fetch(origin)).text(), origin).toBe('ok');
  });

  it('[::] on a kernel without IPv6 is every IPv4 address, as Node does for a listen without a host', async () => {
    const { host, port } = await listenOn(serverWithoutIpv6(), { host: '::', port: 0 });
    expect(host).toBe('0.0.0.0');
    expect(await (await fetch(`http://127.0.0.1:${port}`)).text()).toBe('ok');
  });

  it('an IPv6 address that is not [::] gets no such stand-in', async () => {
    await expect(listenOn(serverWithoutIpv6(), { host: '::1', port: 0 })).rejects.toMatchObject({ code: 'EAFNOSUPPORT' });
  });

  it.skipIf(!hasIpv6Loopback)('nor does [::] on a port already taken: the port is what is wrong, not the address family', async () => {
    const { port } = await listenOn(server(), { host: '::', port: 0 });
    await expect(listenOn(server(), { host: '::', port })).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });
});
