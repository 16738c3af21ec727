import { request, type IncomingHttpHeaders, Agent } from 'node:http';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import type { TestIdp } from '../support/idp.js';

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json(): any;
}

export interface SendOptions {
  method?: string;
  /** Request target as written on the request line: `/path` (origin-form) or `http://host/path` (absolute-form, HTTP_PROXY style). */
  target: string;
  /** Host header (origin-form needs it to name the peer). */
  host?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  agent?: Agent;
}

/** One request to a sidecar listener with full control of the request line and Host header (fetch cannot set Host). */
export function send(listener: string, opts: SendOptions): Promise<Reply> {
  const url = new URL(listener);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        method: opts.method ?? 'GET',
        path: opts.target,
        headers: { ...(opts.host ? { host: opts.host } : {}), ...opts.headers },
        agent: opts.agent ?? false,
        setHost: opts.host === undefined,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode!, headers: res.headers, text, json: () => JSON.parse(text) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** The bearer token in an Authorization-style header value, or undefined. */
export function bearerOf(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  return v ? /^Bearer (.+)$/.exec(v)?.[1] : undefined;
}

/** Verifies a token with the IdP's published keys, as a resource server would. */
export async function verifyWithIdp(idp: TestIdp, token: string, audience: string): Promise<JWTPayload> {
  const jwks = (await (await fetch(idp.jwksUri)).json()) as JSONWebKeySet;
  return (await jwtVerify(token, createLocalJWKSet(jwks), { issuer: idp.issuer, audience })).payload;
}

/** Reads the sidecar's /metrics text. */
export async function metricsText(admin: string): Promise<string> {
  return (await fetch(`${admin}/metrics`)).text();
}

/** One sample's value from Prometheus text (labels matched as a subset), or undefined. */
export function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const inner = line.slice(name.length + 1, line.lastIndexOf('}')).split(',');
    if (want.every((w) => inner.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}
