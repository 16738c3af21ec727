import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { RouteNotFoundError, SidecarError, TokenRejectedError } from '../../src/errors.js';
import { createRouter, parseAuthority } from '../../src/outbound/router.js';

function routesOf(routes: Array<Record<string, unknown>>, unknownHosts: 'deny' | 'passthrough' = 'deny') {
  const cfg = parseConfig({
    service: 't',
    outbound: { tokenSource: { type: 'env', variable: 'T' }, routes, unknownHosts },
  });
  return { router: createRouter(cfg.outbound!.routes, unknownHosts), routes: cfg.outbound!.routes };
}

describe('outbound router', () => {
  const { router, routes } = routesOf([
    { host: 'payments', audience: 'payments', target: 'http://10.0.0.1:15006' },
    { host: 'Ledger:8443', audience: 'ledger' },
    { host: 'search', audience: 'search', target: 'https://search.internal/api/' },
  ]);
  const [payments, ledger, search] = routes;

  it('routes origin-form requests by the Host header, with or without a port', () => {
    for (const host of ['payments', 'payments:8080', 'PAYMENTS', 'Payments:80']) {
      const r = router.resolve('/charge?x=1', host);
      expect(r).toMatchObject({ kind: 'route', route: payments, path: '/charge?x=1', target: { origin: 'http://10.0.0.1:15006' } });
    }
  });

  it('routes absolute-form (HTTP_PROXY) requests by the URI authority and ignores the Host header (RFC 9112 §3.2.2)', () => {
    const r = router.resolve('http://payments/charge?x=1', 'search');
    expect(r).toMatchObject({ kind: 'route', route: payments, path: '/charge?x=1' });
    expect(router.resolve('HTTP://Payments:9000', undefined)).toMatchObject({ kind: 'route', route: payments, path: '/' });
    expect(router.resolve('http://payments?q=1', undefined)).toMatchObject({ kind: 'route', path: '/?q=1' });
  });

  it('keeps the raw path bytes (no dot-segment normalisation that would change what the peer authorizes)', () => {
    expect(router.resolve('http://payments/a/../b/%2e%2e/c', undefined)).toMatchObject({ path: '/a/../b/%2e%2e/c' });
  });

  it('a route host with a port matches only that port', () => {
    expect(router.resolve('/x', 'ledger:8443')).toMatchObject({ kind: 'route', route: ledger, target: { origin: 'http://ledger:8443' } });
    expect(router.resolve('/x', 'ledger')).toMatchObject({ kind: 'reject', status: 403, reason: 'no_route' });
    expect(router.resolve('http://ledger:8444/x', undefined)).toMatchObject({ kind: 'reject', reason: 'no_route' });
  });

  it('refuses an unknown host with exactly RouteNotFoundError (403 no_route, the same message), naming the host for the log', () => {
    const err = new RouteNotFoundError('ledger');
    expect(err).toMatchObject({ code: 'no_route', status: 403, message: 'no outbound route for host "ledger"' });
    expect(router.resolve('/x', 'Ledger')).toEqual({ kind: 'reject', status: err.status, reason: err.code, message: err.message, host: 'ledger' });
    // The error classes carry code and status only: no unread flags, and the cause is kept.
    const cause = new Error('inner');
    const rejected = new TokenRejectedError('expired', 'the token has expired', { cause });
    expect(rejected).toBeInstanceOf(SidecarError);
    expect(rejected.cause).toBe(cause);
    expect(Object.keys(rejected).sort()).toEqual(['code', 'name', 'status']);
  });

  it('matches hosts exactly: no suffix, prefix or trailing-dot tricks', () => {
    for (const host of ['payments.evil.com', 'evilpayments', 'payments.', 'pay', 'payments.default.svc']) {
      expect(router.resolve('/x', host)).toMatchObject({ kind: 'reject', status: 403, reason: 'no_route' });
    }
  });

  it('prefixes the target base path', () => {
    expect(router.resolve('/q?a=1', 'search')).toMatchObject({ route: search, path: '/api/q?a=1', target: { origin: 'https://search.internal' } });
  });

  it('refuses malformed targets and hosts with 400', () => {
    expect(router.resolve('/x', undefined)).toMatchObject({ kind: 'reject', status: 400, reason: 'bad_request' });
    expect(router.resolve('/x', 'pay ments')).toMatchObject({ status: 400 });
    expect(router.resolve('/x', 'payments:99999')).toMatchObject({ status: 400 });
    expect(router.resolve('http://user:pw@payments/x', undefined)).toMatchObject({ status: 400 });
    expect(router.resolve('ftp://payments/x', undefined)).toMatchObject({ status: 400 });
    expect(router.resolve('*', 'payments')).toMatchObject({ status: 400 });
    expect(router.resolve('http:///x', undefined)).toMatchObject({ status: 400 });
  });

  it('passthrough forwards unknown hosts to themselves and still routes known ones', () => {
    const p = routesOf([{ host: 'payments', audience: 'payments' }], 'passthrough').router;
    expect(p.resolve('http://example.test:8080/a', undefined)).toEqual({
      kind: 'passthrough',
      target: { origin: 'http://example.test:8080', basePath: '' },
      path: '/a',
      authority: 'example.test:8080',
    });
    expect(p.resolve('/a', 'payments')).toMatchObject({ kind: 'route', target: { origin: 'http://payments' } });
  });

  it('resolves CONNECT authorities (port required)', () => {
    expect(router.resolveConnect('payments:443').route).toBe(payments);
    expect(router.resolveConnect('other:443')).toEqual({ authority: { host: 'other', port: 443, explicitPort: true } });
    expect(router.resolveConnect('payments')).toEqual({});
    expect(router.resolveConnect('/x')).toEqual({});
  });

  it('parses IPv6 authorities', () => {
    expect(parseAuthority('[::1]:8080', 80)).toEqual({ host: '[::1]', port: 8080, explicitPort: true });
    expect(parseAuthority('[::1]', 80)).toEqual({ host: '[::1]', port: 80, explicitPort: false });
    expect(parseAuthority('::1', 80)).toBeUndefined();
  });
});

describe('outbound router config checks', () => {
  it('names the route key path for a port out of range', () => {
    expect(() => routesOf([{ host: 'payments:99999', audience: 'p' }])).toThrow(/outbound\.routes\.0\.host: must be a host name, optionally with a port 1-65535/);
  });
});
