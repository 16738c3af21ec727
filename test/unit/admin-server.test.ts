import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/admin/metrics.js';
import { createAdminServer } from '../../src/admin/server.js';
import { rawExchange } from './proxy-harness.js';

const servers: Array<ReturnType<typeof createAdminServer>> = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
});

async function startAdmin(): Promise<number> {
  const server = createAdminServer(createMetrics({ processMetrics: false }), { isAccepting: () => true, waitingFor: () => [] });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

describe('admin server', () => {
  it('answers a CONNECT with 405 and the methods it serves, as it does a POST, instead of closing without a word', async () => {
    const port = await startAdmin();
    const connect = await rawExchange(port, 'CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n');
    expect(connect).toMatch(/^HTTP\/1\.1 405 Method Not Allowed\r\n/);
    expect(connect).toMatch(/\r\nallow: GET, HEAD\r\n/);
    expect(connect).toMatch(/\r\n\r\nmethod not allowed\n$/);
    const post = await rawExchange(port, 'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    expect(post).toMatch(/^HTTP\/1\.1 405 /);
    expect(post).toMatch(/\r\nallow: GET, HEAD\r\n/i);
    // Still serving.
    const health = await rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(health).toMatch(/^HTTP\/1\.1 200 /);
    expect(health).toContain('ok\n');
  });
});
