import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { DEFAULTS } from '../../src/config/defaults.js';
import type { LimitsConfig } from '../../src/config/schema.js';
import { UpstreamError } from '../../src/errors.js';
import { forward } from '../../src/proxy/forward.js';
import { createLimitedServer, listenOn, type LimitedServerOptions, type TlsFiles } from '../../src/proxy/listen.js';
import { sendError } from '../../src/proxy/respond.js';
import { createUpstreamPools } from '../../src/proxy/upstreams.js';

/**
 * A minimal proxy made of the real data-plane pieces (createLimitedServer +
 * forward + upstream pools), the way inbound and outbound use them, so proxy
 * behaviour is tested without a token in the way.
 */
export interface TestProxy {
  url: string;
  port: number;
  server: Server;
  /** Upstream errors forward() reported, by code: before the response headers (rejections) and after them (onBrokenResponse). */
  errors: string[];
  /** Statuses forward() saw from the upstream. */
  statuses: number[];
  close(): Promise<void>;
}

export function limitsWith(overrides: Partial<LimitsConfig> = {}): LimitsConfig {
  return { ...DEFAULTS.limits, ...overrides };
}

export async function startTestProxy(
  target: string,
  opts: {
    limits?: Partial<LimitsConfig>;
    dropHeaders?: string[];
    addHeaders?: string[];
    tls?: TlsFiles;
    server?: LimitedServerOptions;
  } = {},
): Promise<TestProxy> {
  const limits = limitsWith(opts.limits);
  const pools = createUpstreamPools(limits);
  const dispatcher = pools.get(new URL(target).origin);
  const dropHeaders = new Set(opts.dropHeaders ?? []);
  const addHeaders = opts.addHeaders ?? [];
  const errors: string[] = [];
  const statuses: number[] = [];
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    forward(req, res, { dispatcher, path: req.url!, dropHeaders, addHeaders, onResponse: (s) => statuses.push(s), onBrokenResponse: (e) => void errors.push(e.code) }).catch((err: unknown) => {
      const e = err instanceof UpstreamError ? err : new UpstreamError('upstream_reset', String(err));
      errors.push(e.code);
      sendError(res, e.status, e.code, e.message);
    });
  };
  const server = createLimitedServer(limits, handler, opts.tls, opts.server);
  const { port } = await listenOn(server, { host: '127.0.0.1', port: 0 });
  return {
    url: `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    server,
    errors,
    statuses,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await pools.destroy();
    },
  };
}

/** Opens a raw TCP connection (for requests no well-behaved client would send). */
export function rawConnect(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends raw bytes and collects everything the server answers until it closes the connection. */
export async function rawExchange(port: number, request: string | Buffer): Promise<string> {
  const s = await rawConnect(port);
  return new Promise((resolve) => {
    let text = '';
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('error', () => {});
    s.on('close', () => resolve(text));
    s.write(request);
  });
}

/** Reads one HTTP/1.1 response head + Content-Length body from a raw socket that stays open. */
export function readResponse(s: Socket): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const [statusLine, ...lines] = buf.slice(0, end).split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
      const len = Number(headers['content-length'] ?? 0);
      if (buf.length - end - 4 < len) return;
      s.off('data', onData);
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body: buf.slice(end + 4, end + 4 + len) });
    };
    s.on('data', onData);
    s.once('error', reject);
  });
}

/**
 * A port on 127.0.0.1 where nothing listens. It is taken outside the OS's
 * ephemeral range (32768+ on Linux, 49152+ on macOS): every server in the
 * tests listens on port 0, so none can take this port between the check and
 * its use. A just-closed ephemeral port, as this used to return, can be
 * handed to a concurrent test's server; once, the request to it hung until
 * the test timed out.
 */
export async function closedPort(): Promise<number> {
  const { createServer } = await import('node:net');
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const srv = createServer();
    const free = await new Promise<boolean>((r) => {
      srv.once('error', () => r(false));
      srv.listen(port, '127.0.0.1', () => r(true));
    });
    if (free) {
      await new Promise<void>((r) => srv.close(() => r()));
      return port;
    }
  }
  throw new Error('no free port between 20000 and 29999 on 127.0.0.1');
}
