import type { IncomingMessage } from 'node:http';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildUpstreamHeaders, cgiSpelling, forwardableResponseHeaders, isHopByHop, isWebSocketUpgrade } from '../../src/proxy/headers.js';

/** A request as Node's parser hands it over: only the fields header building reads. */
function request(rawHeaders: string[], peer = '10.1.2.3', encrypted = false): IncomingMessage {
  const headers: Record<string, string> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) headers[rawHeaders[i]!.toLowerCase()] ??= rawHeaders[i + 1]!;
  return { rawHeaders, headers, socket: { remoteAddress: peer, encrypted } } as unknown as IncomingMessage;
}

const randomCase = (name: string) => fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((up) => [...name].map((c, i) => (up[i] ? c.toUpperCase() : c)).join(''));
const NAMES = ['connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings', 'proxy', 'proxy-authorization', 'proxy-connection', 'proxy-x-debug', 'expect', 'x-named', 'x-other', 'traceparent', 'tracestate', 'accept', 'x-peer-sub', 'cookie', 'x-forwarded-for', 'x-forwarded-proto', 'host', 'x_peer_sub', 'x-peer_sub', 'x_other', 'x_forwarded_for', 'x-forwarded_host', 'x_forwarded_proto'];
const headerName = fc.oneof(fc.constantFrom(...NAMES), fc.stringMatching(/^x-[a-z0-9]{1,6}$/)).chain(randomCase);
const headerValue = fc.stringMatching(/^[\x21-\x7e]([\x20-\x7e]{0,20}[\x21-\x7e])?$/);
const connectionValue = fc.array(fc.oneof(fc.constantFrom('keep-alive', 'close', 'X-Named', 'x-other', 'Upgrade'), fc.stringMatching(/^x-[a-z0-9]{1,6}$/)), { minLength: 1, maxLength: 4 }).map((t) => t.join(' , '));
const rawHeaders = fc
  .array(fc.oneof(fc.tuple(headerName, headerValue), fc.tuple(randomCase('connection'), connectionValue)), { maxLength: 25 })
  .map((pairs) => pairs.flat());

/**
 * The headers that never cross the proxy, in either direction, written out here rather than asked of
 * src/proxy/headers.ts (an oracle calling its isHopByHop agreed with whatever list that held): RFC 9110 §7.6.1
 * (Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade), Trailer (hop-by-hop since RFC 2616
 * §13.5.1), and what the README adds: every Proxy-* header, Proxy itself (httpoxy) and HTTP2-Settings (connection-
 * specific, RFC 7540 §3.2.1).
 */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings', 'proxy'];
const hopByHop = (lowerName: string) => HOP_BY_HOP.includes(lowerName) || lowerName.startsWith('proxy-');

function namedByConnection(raw: string[]): Set<string> {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') for (const t of raw[i + 1]!.split(',')) if (t.trim()) named.add(t.trim().toLowerCase());
  }
  return named;
}

describe('buildUpstreamHeaders (RFC 9110 §7.6.1)', () => {
  it('never forwards hop-by-hop, Proxy-*, Expect, dropped or Connection-named headers, and keeps every other header in order, byte-exact', () => {
    fc.assert(
      fc.property(rawHeaders, (raw) => {
        const drop = new Set(['x-peer-sub']);
        const out = buildUpstreamHeaders(request(raw), drop, ['x-peer-sub', 'verified']);
        const named = namedByConnection(raw);
        // A dropped name is dropped in any `_` spelling too (CGI-style apps read `_` as `-`), and so are the `_` spellings of X-Forwarded-*.
        const forwardedUnderscored = (n: string) => n.includes('_') && /^x-forwarded-(for|proto|host)$/.test(n.replaceAll('_', '-'));
        const removed = (n: string) => hopByHop(n) || n === 'expect' || drop.has(n.replaceAll('_', '-')) || forwardedUnderscored(n) || named.has(n);
        const forwarded = out.slice(0, -2);
        for (let i = 0; i < forwarded.length; i += 2) expect(removed(forwarded[i]!.toLowerCase())).toBe(false);
        // Every surviving header except the X-Forwarded-* lines (merged, then appended to) is copied in order.
        const kept = (list: string[]) =>
          list.flatMap((n, i) => (i % 2 === 0 && !/^x-forwarded-/i.test(n) ? [[n, list[i + 1]]] : [])).filter(([n]) => !removed(n!.toLowerCase()));
        expect(kept(forwarded)).toEqual(kept(raw));
        expect(out.slice(-2)).toEqual(['x-peer-sub', 'verified']);
      }),
      { numRuns: 400 },
    );
  });

  it('drops a dropped name in every spelling with _ for - (WSGI/Rack/PHP-FPM read X_Peer_Sub as HTTP_X_PEER_SUB), in both header copies', () => {
    const drop = new Set(['x-peer-sub', 'x-peer-iss', 'x-peer-claims', 'x-peer-env', 'authorization']);
    const raw = [
      'X_Peer_Sub', 'admin', 'x_peer_iss', 'https://evil', 'X-Peer_Claims', 'e30', 'x-PEER_env', 'prod', 'X-Peer-Sub', 'root',
      'X_Peer_Subject', 'kept', 'x_custom', 'kept', 'Accept', 'kept',
    ];
    const kept = [['X_Peer_Subject', 'kept'], ['x_custom', 'kept'], ['Accept', 'kept']];
    const pairs = (flat: string[]) => flat.flatMap((n, i) => (i % 2 === 0 && !/^x-forwarded-/i.test(n) ? [[n, flat[i + 1]]] : []));
    expect(pairs(buildUpstreamHeaders(request(raw), drop, []))).toEqual(kept);
  });

  it('drops X-Forwarded-* spelt with _ (an app would read X_Forwarded_For as HTTP_X_FORWARDED_FOR) and appends to the - spelling only', () => {
    const raw = ['Host', 'svc', 'X_Forwarded_For', '10.0.0.1', 'x-forwarded_proto', 'https', 'X_FORWARDED_HOST', 'evil', 'X-Forwarded-For', '192.0.2.7', 'X_Forwarded_Port', '1'];
    expect(buildUpstreamHeaders(request(raw, '10.1.2.3'), new Set(), [])).toEqual([
      'Host', 'svc', 'X-Forwarded-For', '192.0.2.7, 10.1.2.3', 'X_Forwarded_Port', '1', 'x-forwarded-proto', 'http', 'x-forwarded-host', 'svc',
    ]);
  });

  it('drops a dropped name spelt with any other punctuation for - too (lighttpd reads X.Peer.Sub, x+peer+sub and X~Peer~Sub as HTTP_X_PEER_SUB)', () => {
    const drop = new Set(['x-peer-sub', 'x-peer-env']);
    const raw = [
      ...['X.Peer.Sub', 'admin', 'x+peer+sub', 'admin', 'X~Peer~Sub', 'admin', "x!peer'env", 'prod', 'X-Peer|Env', 'prod', 'x^peer`sub', 'admin'],
      ...['X.Forwarded.For', '10.0.0.1', 'x*forwarded#host', 'evil', 'X.Peer.Subject', 'kept', 'x.custom', 'kept'],
    ];
    const pairs = (flat: string[]) => flat.flatMap((n, i) => (i % 2 === 0 && !/^x-forwarded-/i.test(n) ? [[n, flat[i + 1]]] : []));
    expect(pairs(buildUpstreamHeaders(request(raw), drop, []))).toEqual([['X.Peer.Subject', 'kept'], ['x.custom', 'kept']]);
    expect(cgiSpelling('x.peer+sub')).toBe('x-peer-sub');
    expect(cgiSpelling('x-peer-sub')).toBeUndefined();
  });

  it('a drop entry spelt with _ drops only the spellings with _: a kept token header passes, a second one beside it does not', () => {
    const drop = new Set(['x_service_token']);
    const raw = ['X-Service-Token', 'verified', 'X_Service_Token', 'forged', 'x-service_token', 'forged', 'x_service-token', 'forged', 'x.service.token', 'forged'];
    const pairs = (flat: string[]) => flat.flatMap((n, i) => (i % 2 === 0 && !/^x-forwarded-/i.test(n) ? [[n, flat[i + 1]]] : []));
    expect(pairs(buildUpstreamHeaders(request(raw), drop, []))).toEqual([['X-Service-Token', 'verified']]);
  });

  it('merges X-Forwarded-* lines without empty list elements: blank lines and edge commas add nothing (RFC 9110 §5.6.1)', () => {
    const raw = ['Host', 'svc', 'X-Forwarded-For', '', 'X-Forwarded-For', ' 192.0.2.7 ,', 'x-forwarded-for', ',', 'X-Forwarded-Proto', '\t', 'X-Forwarded-Host', 'a.example,'];
    expect(buildUpstreamHeaders(request(raw, '10.1.2.3'), new Set(), [])).toEqual([
      'Host', 'svc', 'X-Forwarded-For', '192.0.2.7, 10.1.2.3', 'X-Forwarded-Host', 'a.example, svc', 'x-forwarded-proto', 'http',
    ]);
  });

  it('never forwards Proxy (httpoxy, CVE-2016-5385: CGI-style apps read it as HTTP_PROXY and send their own calls through it)', () => {
    expect(isHopByHop('proxy')).toBe(true);
    expect(buildUpstreamHeaders(request(['Host', 'svc', 'Proxy', 'http://evil.example:8080', 'PROXY', 'x', 'Proxyish', 'kept']), new Set(), []).slice(0, 4)).toEqual(['Host', 'svc', 'Proxyish', 'kept']);
  });

  it("with no Host to append (empty, or none from an HTTP/1.0 client), the caller's X-Forwarded-Host does not pass: its last element would be the caller's", () => {
    const xfh = (raw: string[]) => buildUpstreamHeaders(request(raw), new Set(), []).filter((_, i, out) => i % 2 === 1 && out[i - 1]!.toLowerCase() === 'x-forwarded-host');
    expect(xfh(['Host', '', 'X-Forwarded-Host', 'evil.example', 'x-forwarded-host', 'b.example'])).toEqual([]);
    expect(xfh(['X-Forwarded-Host', 'evil.example', 'Accept', '*/*'])).toEqual([]);
    expect(buildUpstreamHeaders(request(['X-Forwarded-Host', 'evil.example', 'Accept', '*/*']), new Set(), ['x-peer-sub', 's'])).toEqual([
      'Accept', '*/*', 'x-forwarded-for', '10.1.2.3', 'x-forwarded-proto', 'http', 'x-peer-sub', 's',
    ]);
    expect(xfh(['Host', 'svc', 'X-Forwarded-Host', 'edge.example'])).toEqual(['edge.example, svc']);
  });

  it('appends this hop to X-Forwarded-For/-Proto/-Host in a single line each', () => {
    fc.assert(
      fc.property(fc.array(fc.ipV4(), { maxLength: 4 }), fc.ipV4(), fc.boolean(), (earlier, peer, tls) => {
        const raw = ['Host', 'svc.local', ...earlier.flatMap((ip) => ['X-Forwarded-For', ip])];
        const out = buildUpstreamHeaders(request(raw, peer, tls), new Set(), []);
        const values = (name: string) => out.filter((_, i) => i % 2 === 1 && out[i - 1]!.toLowerCase() === name);
        expect(values('x-forwarded-for')).toEqual([[...earlier, peer].join(', ')]);
        expect(values('x-forwarded-proto')).toEqual([tls ? 'https' : 'http']);
        expect(values('x-forwarded-host')).toEqual(['svc.local']);
      }),
    );
  });
});

describe('forwardableResponseHeaders', () => {
  it('drops hop-by-hop and Connection-named response headers and keeps the rest', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.oneof(fc.constantFrom('x-named', 'x-other', 'keep-alive', 'upgrade', 'te', 'trailer', 'transfer-encoding', 'http2-settings', 'proxy', 'proxy-authenticate', 'content-type'), fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/)), headerValue), connectionValue, (fields, conn) => {
        const headers = { ...fields, connection: conn };
        const out = forwardableResponseHeaders(headers);
        const named = namedByConnection(['connection', conn]);
        for (const [name, value] of Object.entries(headers)) {
          if (hopByHop(name) || named.has(name)) expect(out).not.toHaveProperty(name);
          else expect(out[name]).toBe(value);
        }
      }),
    );
  });
});

describe('isWebSocketUpgrade: the one protocol either listener tunnels', () => {
  it('trims only OWS at the edges of each element, also around a long run of spaces inside one (linear, no regex)', () => {
    const run = ' '.repeat(15_000);
    expect(isWebSocketUpgrade(['Upgrade', `${run}websocket\t${run}`])).toBe(true);
    expect(isWebSocketUpgrade(['Upgrade', `web${run}socket`])).toBe(false);
    expect(isWebSocketUpgrade(['Upgrade', `websocket${run}x`])).toBe(false);
    expect(isWebSocketUpgrade(['Upgrade', `\u00a0websocket`])).toBe(false);
  });

  it('accepts Upgrade: websocket in any letter case, alone or beside empty list elements (RFC 9110 §5.6.1)', () => {
    for (const raw of [
      ['Upgrade', 'websocket'],
      ['upgrade', 'WebSocket'],
      ['UPGRADE', 'WEBSOCKET'],
      ['Upgrade', '\twebsocket ,'],
      ['Upgrade', ', websocket'],
      ['Upgrade', 'websocket', 'Upgrade', ''],
    ]) {
      expect(isWebSocketUpgrade(['Host', 'x', 'Connection', 'Upgrade', ...raw]), JSON.stringify(raw)).toBe(true);
    }
  });

  it('refuses every other protocol, and any list of several, even one naming websocket (h2c smuggling)', () => {
    for (const raw of [
      ['Upgrade', 'h2c'],
      ['Upgrade', 'H2C'],
      ['Upgrade', 'websocket, h2c'],
      ['Upgrade', 'h2c, websocket'],
      ['Upgrade', 'websocket', 'Upgrade', 'h2c'],
      ['upgrade', 'h2c', 'Upgrade', 'websocket'],
      ['Upgrade', 'websocket, websocket'],
      ['Upgrade', 'websocket/13'],
      ['Upgrade', 'TLS/1.0'],
      ['Upgrade', 'HTTP/2.0'],
      ['Upgrade', 'web socket'],
      ['Upgrade', 'websocket\u00a0'],
      ['Upgrade', ''],
      ['Upgrade', ' , '],
      [],
    ]) {
      expect(isWebSocketUpgrade(['Host', 'x', 'Connection', 'Upgrade', ...raw]), JSON.stringify(raw)).toBe(false);
    }
  });
});
