import { connect } from 'node:net';
import type { TestIdp } from '../support/idp.js';
import type { UpstreamApp } from '../support/upstream.js';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  json(): any;
}

/**
 * Sends exact request bytes over TCP (undici and fetch would normalise paths
 * and merge duplicate headers) and reads the answer until the server closes.
 * `head` is the request line plus headers without the final blank line.
 */
export function rawRequest(baseUrl: string, head: string, body = ''): Promise<RawResponse> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const split = text.indexOf('\r\n\r\n');
      const lines = text.slice(0, split).split('\r\n');
      const status = Number(lines[0]!.split(' ')[1]);
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
      }
      let rest = text.slice(split + 4);
      if (headers['transfer-encoding'] === 'chunked') rest = dechunk(rest);
      resolve({ status, headers, body: rest, json: () => JSON.parse(rest) });
    });
    const withClose = /\r\nconnection:/i.test(head) ? head : `${head}\r\nConnection: close`;
    socket.write(`${withClose}\r\n\r\n${body}`);
  });
}

function dechunk(s: string): string {
  let out = '';
  let i = 0;
  for (;;) {
    const nl = s.indexOf('\r\n', i);
    if (nl < 0) return out;
    const size = parseInt(s.slice(i, nl), 16);
    if (!size) return out;
    out += s.slice(nl + 2, nl + 2 + size);
    i = nl + 2 + size + 2;
  }
}

/** GET through the sidecar with an optional bearer token and extra headers. */
export async function call(
  base: string,
  path: string,
  opts: { token?: string; method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<{ status: number; headers: Headers; body: any; text: string }> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(`${base}${path}`, { method: opts.method ?? 'GET', headers, ...(opts.body !== undefined ? { body: opts.body } : {}) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, body, text };
}

/** The sidecar config for an inbound sidecar in front of `app`, trusting `idps`. */
export function inboundSidecarConfig(app: Pick<UpstreamApp, 'url'>, idps: TestIdp[], inbound: Record<string, unknown> = {}, top: Record<string, unknown> = {}) {
  return {
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    ...top,
    inbound: {
      target: app.url,
      audience: 'orders',
      issuers: idps.map((i) => ({ issuer: i.issuer })),
      ...inbound,
    },
  };
}

/** The /metrics text of a sidecar. */
export async function metricsText(admin: string): Promise<string> {
  return (await fetch(`${admin}/metrics`)).text();
}

/** Value of one sample line, e.g. `oidc_sidecar_inbound_requests_total{decision="allow",reason="ok"}` (labels in any order). */
export function sample(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const ok = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (ok) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

/** Polls `check` until it returns a truthy value; for waiting on another process (never a timing assertion). */
export async function eventually<T>(check: () => Promise<T> | T, timeoutMs = 15_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
