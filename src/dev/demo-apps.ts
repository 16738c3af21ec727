import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What a demo app answers: the identity its sidecar verified, from the forwarded headers. */
export interface SeenIdentity {
  service: string;
  method: string;
  path: string;
  sub: string | null;
  iss: string | null;
  claims: Record<string, unknown> | null;
  /** Whether a bearer token reached the app (the sidecar removes it by default). */
  tokenReachedApp: boolean;
}

export interface DemoApp {
  name: string;
  url: string;
  /** Requests that reached the app (so a rejection provably stopped at the sidecar). */
  readonly requests: number;
  close(): Promise<void>;
}

/**
 * One demo service on 127.0.0.1:0. Every request is answered with the caller
 * identity its sidecar forwarded. With `peer`, `GET /checkout` first calls the
 * peer through the sidecar's outbound listener, the way an app uses
 * HTTP_PROXY (absolute-form request target, RFC 9112 §3.2.2).
 */
export async function startDemoApp(
  name: string,
  opts: { peer?: { url: string; outboundProxy: () => string | undefined } } = {},
): Promise<DemoApp> {
  let requests = 0;
  const server: Server = createServer((req, res) => {
    requests++;
    req.resume();
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const reply = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (path === '/checkout' && opts.peer) {
      const proxy = opts.peer.outboundProxy();
      if (!proxy) return reply(502, { error: 'no outbound proxy' });
      callThroughProxy(proxy, opts.peer.url).then(
        (peer) => reply(peer.status === 200 ? 200 : 502, { service: name, peerStatus: peer.status, peer: parseJson(peer.body) }),
        (err: Error) => reply(502, { service: name, error: err.message }),
      );
      return;
    }
    reply(200, identityOf(name, req, path));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    name,
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return requests;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function identityOf(service: string, req: IncomingMessage, path: string): SeenIdentity {
  const header = (n: string) => (typeof req.headers[n] === 'string' ? (req.headers[n] as string) : null);
  const encoded = header('x-peer-claims');
  return {
    service,
    method: req.method ?? 'GET',
    path,
    sub: header('x-peer-sub'),
    iss: header('x-peer-iss'),
    claims: encoded ? (parseJson(Buffer.from(encoded, 'base64url').toString('utf8')) as Record<string, unknown>) : null,
    tokenReachedApp: req.headers.authorization !== undefined,
  };
}

/** `POST <url>` sent to an HTTP proxy in absolute form. */
export function callThroughProxy(proxy: string, url: string, body = '{"amount":42,"currency":"EUR"}'): Promise<{ status: number; body: string }> {
  const p = new URL(proxy);
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: p.hostname, port: p.port, method: 'POST', path: target.href, headers: { host: target.host, 'content-type': 'application/json' } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
