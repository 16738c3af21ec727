import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { LimitsConfig } from '../config/schema.js';

export interface ListenAddress {
  host: string;
  port: number;
}

/** Parses `host:port`, `:port` or `[v6]:port` (already validated by the schema). */
export function parseListen(listen: string): ListenAddress {
  const idx = listen.lastIndexOf(':');
  let host = listen.slice(0, idx);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host: host || '0.0.0.0', port: Number(listen.slice(idx + 1)) };
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

/** An HTTP(S) server with the sidecar's limits applied (slowloris, header size/count, idle keep-alive). */
export function createLimitedServer(
  limits: LimitsConfig,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  tls?: TlsFiles,
): Server {
  const options = {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headersTimeoutSeconds * 1000,
    requestTimeout: limits.requestTimeoutSeconds * 1000,
    keepAliveTimeout: limits.keepAliveTimeoutSeconds * 1000,
    // Node rejects a request with both Content-Length and Transfer-Encoding (smuggling); keep that strictness.
    insecureHTTPParser: false,
  };
  const server = tls
    ? createHttpsServer({ ...options, cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) }, handler)
    : createHttpServer(options, handler);
  server.maxHeadersCount = limits.maxHeaderCount;
  return server as Server;
}

/** Listens and resolves with the bound address (port 0 → the real port). */
export function listenOn(server: Server, addr: ListenAddress): Promise<ListenAddress> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(addr.port, addr.host, () => {
      server.off('error', onError);
      const a = server.address() as AddressInfo;
      resolve({ host: a.address, port: a.port });
    });
  });
}

export function formatAddress(a: ListenAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
