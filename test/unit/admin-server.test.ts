import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/admin/metrics.js';
import { createAdminServer } from '../../src/admin/server.js';
import type { LimitsConfig } from '../../src/config/schema.js';
import { limitsWith, rawConnect, rawExchange } from './proxy-harness.js';

const servers: Array<ReturnType<typeof createAdminServer>> = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
});

async function startAdmin(limits: LimitsConfig = limitsWith()): Promise<number> {
  const server = createAdminServer(createMetrics({ processMetrics: false }), { isAccepting: () => true, waitingFor: () => [] }, limits);
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

  it('holds a connection that sends nothing, or half a header block, no longer than limits.headersTimeoutSeconds (408), as the other listeners do', async () => {
    // Node's own headers timeout (60 s, checked every 30 s) held both for over a minute.
    const port = await startAdmin(limitsWith({ headersTimeoutSeconds: 0.5 }));
    const answers = await Promise.all(
      ['', 'GET /metrics HTTP/1.1\r\nHost: x\r\n'].map(async (sent) => {
        const s = await rawConnect(port);
        let text = '';
        s.on('data', (d) => (text += d.toString('latin1')));
        s.on('error', () => {});
        if (sent) s.write(sent);
        await new Promise((r) => s.once('close', r));
        return text;
      }),
    );
    for (const text of answers) expect(text).toMatch(/^HTTP\/1\.1 408 /);
    // And it still serves.
    expect(await rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
  });
});
