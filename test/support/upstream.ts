import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  bodyBytes: number;
  bodySha256: string;
}

export interface UpstreamApp {
  url: string;
  /** host:port, for configs. */
  hostPort: string;
  /** Every request the app received, in order. */
  seen: SeenRequest[];
  close(): Promise<void>;
}

/**
 * A real HTTP app on 127.0.0.1:0 that records every request it receives and
 * answers with a JSON echo of what it saw (headers and body digest). A custom
 * handler may answer instead (after the request is recorded).
 */
export async function startUpstream(
  handler?: (req: IncomingMessage, res: ServerResponse, seen: SeenRequest) => void,
): Promise<UpstreamApp> {
  const seen: SeenRequest[] = [];
  const server = createServer((req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    req.on('end', () => {
      const rec: SeenRequest = {
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        bodyBytes: bytes,
        bodySha256: hash.digest('hex'),
      };
      seen.push(rec);
      if (handler) return handler(req, res, rec);
      const body = JSON.stringify({ method: rec.method, url: rec.url, headers: rec.headers, bodyBytes: bytes, bodySha256: rec.bodySha256 });
      res.writeHead(200, { 'content-type': 'application/json', 'x-app': 'upstream' }).end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hostPort: `127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
