import fc from 'fast-check';
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

  it('matches hosts exactly: no suffix, prefix or wildcard tricks', () => {
    // One trailing dot is dropped (`payments.` is `payments`), no more: `payments..` is another name.
    for (const host of ['payments.evil.com', 'evilpayments', 'payments..', 'pay', 'payments.default.svc', 'payments.1']) {
      expect(router.resolve('/x', host), host).toMatchObject({ kind: 'reject', status: 403, reason: 'no_route' });
    }
    expect(router.resolve('/x', '.payments')).toMatchObject({ kind: 'reject', status: 400 });
  });

  it('prefixes the target base path', () => {
    expect(router.resolve('/q?a=1', 'search')).toMatchObject({ route: search, path: '/api/q?a=1', target: { origin: 'https://search.internal' } });
  });

  it('refuses a dot segment behind a target base path: /api/../orders would take the token out of /api (a path gateway resolves it)', () => {
    // Spelt as gateways read them too: `..;` (Tomcat, Spring), and `..` next to an escaped or back slash.
    for (const path of ['/../orders/admin', '/a/%2e%2e/b', '/%2E./x', '/./q', '/a/..', 'http://search/../x?y=1', '/..;/orders', '/..;x=1/o', '/..%2forders', '/..%5Corders', '/..\\orders']) {
      const r = path.startsWith('/') ? router.resolve(path, 'search') : router.resolve(path, undefined);
      expect(r, path).toMatchObject({ kind: 'reject', status: 400, reason: 'bad_request', message: expect.stringContaining('out of the route target\'s path /api') });
    }
    // Dots inside a segment, or in the query, are no segment; without a base path the path goes as sent.
    for (const path of ['/a..b/.well-known/x', '/q?next=/../x', '/...', '/v1;v=2/x', '/a.b%2Fc']) expect(router.resolve(path, 'search'), path).toMatchObject({ kind: 'route', path: `/api${path}` });
    expect(router.resolve('/../x', 'payments')).toMatchObject({ kind: 'route', path: '/../x' });
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
    expect(router.resolveConnect('other:443')).toEqual({ authority: { host: 'other', key: 'other', port: 443, explicitPort: true } });
    expect(router.resolveConnect('payments')).toEqual({});
    expect(router.resolveConnect('/x')).toEqual({});
  });

  it('parses IPv6 authorities', () => {
    expect(parseAuthority('[::1]:8080', 80)).toEqual({ host: '[::1]', key: '[::1]', port: 8080, explicitPort: true });
    expect(parseAuthority('[::1]', 80)).toEqual({ host: '[::1]', key: '[::1]', port: 80, explicitPort: false });
    expect(parseAuthority('::1', 80)).toBeUndefined();
    // Brackets hold an IPv6 address or nothing (RFC 3986 §3.2.2).
    for (const text of ['[1.2.3.4]', '[:::]', '[1::2::3]', '[12345::]']) expect(parseAuthority(text, 80), text).toBeUndefined();
  });
});

describe('outbound router: one host, many spellings', () => {
  const { router, routes } = routesOf(
    [
      { host: '127.0.0.1:8080', audience: 'loopback', target: 'http://10.0.0.1:15006' },
      { host: '[::1]', audience: 'v6' },
      { host: 'orders', audience: 'orders' },
      { host: 'orders.ns.svc.cluster.local.', audience: 'fqdn' },
      { host: '10.1.2.3', audience: 'ten' },
    ],
    'passthrough',
  );
  const [loopback, v6, orders, fqdn, ten] = routes;

  const cases: Array<[string, (typeof routes)[number]]> = [
    ['127.1:8080', loopback!],
    ['0x7f.0.0.1:8080', loopback!],
    ['0X7F.0.0.1:8080', loopback!],
    ['2130706433:8080', loopback!],
    ['0177.0.0.1:8080', loopback!],
    ['127.0.1:8080', loopback!],
    ['0x7f000001:8080', loopback!],
    ['127.0.0.1.:8080', loopback!],
    ['[::ffff:127.0.0.1]:8080', loopback!],
    ['[::ffff:7f00:1]:8080', loopback!],
    ['[0:0:0:0:0:FFFF:7F00:0001]:8080', loopback!],
    ['[0:0::1]', v6!],
    ['[0000:0000:0000:0000:0000:0000:0000:0001]:443', v6!],
    ['orders.', orders!],
    ['ORDERS.:8080', orders!],
    ['orders.ns.svc.cluster.local', fqdn!],
    ['Orders.NS.svc.cluster.local.:80', fqdn!],
    ['10.1.515', ten!],
    ['167838211', ten!],
    ['012.1.2.3', ten!],
  ];

  it('routes every spelling of a routed host, in the Host header and in an absolute-form target, and names it as the app did', () => {
    for (const [spelt, route] of cases) {
      const target = route === loopback ? { origin: 'http://10.0.0.1:15006' } : {};
      expect(router.resolve('/x', spelt), spelt).toMatchObject({ kind: 'route', route, target, path: '/x', authority: spelt.toLowerCase() });
      expect(router.resolve(`http://${spelt}/x`, 'elsewhere'), spelt).toMatchObject({ kind: 'route', route, target, authority: spelt.toLowerCase() });
    }
  });

  it('recognises a CONNECT to any spelling of a routed host (so it is refused, not tunnelled without a token)', () => {
    for (const [spelt, route] of cases) {
      const withPort = /:\d+$/.test(spelt) ? spelt : `${spelt}:443`;
      expect(router.resolveConnect(withPort).route, withPort).toBe(route);
    }
  });

  it('keeps the port rule and exact match after canonicalising: another port, address or name is not routed', () => {
    for (const spelt of ['127.1:8081', '127.1', '127.0.0.2:8080', '[::ffff:7f00:2]:8080', '[::2]', 'orders..', 'orders.ns', 'xorders.', '10.1.2.4', '[::ffff:a01:204]:80']) {
      expect(router.resolve('/x', spelt), spelt).toMatchObject({ kind: 'passthrough', authority: spelt });
    }
    // An IPv4-mapped address reaches the IPv4 host: the same route.
    expect(router.resolve('/x', '[::ffff:a01:203]')).toMatchObject({ kind: 'route', route: ten });
    // A passthrough call goes where the app named it, as it spelt it (a trailing dot makes an absolute DNS name).
    expect(router.resolve('http://example.test.:8080/a', undefined)).toEqual({
      kind: 'passthrough',
      target: { origin: 'http://example.test.:8080', basePath: '' },
      path: '/a',
      authority: 'example.test.:8080',
    });
  });

  it('names the host as the app spelt it when refusing', () => {
    const deny = routesOf([{ host: '127.0.0.1:8080', audience: 'l' }]).router;
    expect(deny.resolve('/x', '127.1:9')).toMatchObject({ kind: 'reject', status: 403, host: '127.1:9' });
    expect(deny.resolve('/x', '0x7f.1:8080')).toMatchObject({ kind: 'route' });
  });

  it('leaves a numeric-looking name that is no IPv4 address as a name (as a resolver does)', () => {
    const target = 'http://10.0.0.1';
    const names = routesOf([{ host: '1.2.3.256', audience: 'a', target }, { host: 'foo.1', audience: 'b', target }, { host: '4294967296', audience: 'c', target }]);
    expect(names.router.resolve('/x', '1.2.3.256.')).toMatchObject({ kind: 'route', route: names.routes[0] });
    expect(names.router.resolve('/x', 'FOO.1')).toMatchObject({ kind: 'route', route: names.routes[1] });
    expect(names.router.resolve('/x', '4294967296')).toMatchObject({ kind: 'route', route: names.routes[2] });
    expect(names.router.resolve('/x', '0')).toMatchObject({ kind: 'reject', reason: 'no_route' });
  });

  /** The spellings inet_aton(3) and the URL Standard's IPv4 parser both read as `ip`: 1 to 4 parts, each decimal, octal or hex. */
  const spellingOf = (ip: number) =>
    fc
      .record({
        parts: fc.integer({ min: 1, max: 4 }),
        radixes: fc.array(fc.constantFrom(10, 8, 16), { minLength: 4, maxLength: 4 }),
        upper: fc.boolean(),
        zeros: fc.integer({ min: 0, max: 3 }),
        trailingDot: fc.boolean(),
        mapped: fc.constantFrom('no', 'dotted', 'hex'),
      })
      .map(({ parts, radixes, upper, zeros, trailingDot, mapped }) => {
        const bytes = [ip >>> 24, (ip >>> 16) & 0xff, (ip >>> 8) & 0xff, ip & 0xff];
        if (mapped === 'dotted') return `[::ffff:${bytes.join('.')}]`;
        if (mapped === 'hex') return `[::ffff:${(ip >>> 16).toString(16).padStart(zeros + 1, '0')}:${(ip & 0xffff).toString(16)}]`;
        // The last part holds the remaining bytes (`127.1` is 127.0.0.1; `2130706433` is all four).
        const values = [...bytes.slice(0, parts - 1), bytes.slice(parts - 1).reduce((v, b) => v * 256 + b, 0)];
        const text = values
          .map((v, i) => {
            if (radixes[i] === 16) return `0x${'0'.repeat(zeros)}${v.toString(16)}`;
            if (radixes[i] === 8) return `0${'0'.repeat(zeros)}${v.toString(8)}`;
            return String(v);
          })
          .join('.');
        return (upper ? text.toUpperCase() : text) + (trailingDot ? '.' : '');
      });
  const address = fc.integer({ min: 0, max: 0xffffffff });

  it('property: every spelling of an IPv4 address resolves to the route for any other spelling of it, and to no other route', () => {
    fc.assert(
      fc.property(
        address.chain((ip) => fc.tuple(fc.constant(ip), spellingOf(ip), spellingOf(ip), fc.integer({ min: 1, max: 65535 }))),
        address,
        ([ip, asRouted, asCalled, port], other) => {
          fc.pre(other !== ip);
          const routed = { host: asRouted, audience: 'a' };
          const decoy = { host: [other >>> 24, (other >>> 16) & 0xff, (other >>> 8) & 0xff, other & 0xff].join('.'), audience: 'b' };
          const { router: r, routes: [route] } = routesOf([routed, decoy]);
          expect(r.resolve('/x', `${asCalled}:${port}`)).toMatchObject({ kind: 'route', route, authority: `${asCalled.toLowerCase()}:${port}` });
          expect(r.resolve(`http://${asCalled}:${port}/x`, undefined)).toMatchObject({ kind: 'route', route });
          expect(r.resolveConnect(`${asCalled}:${port}`).route).toBe(route);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('outbound router config checks', () => {
  it('names the route key path for a port out of range', () => {
    expect(() => routesOf([{ host: 'payments:99999', audience: 'p' }])).toThrow(/outbound\.routes\.0\.host: must be a host name, optionally with a port 1-65535/);
  });

  it('refuses two routes for one host spelt two ways, naming both', () => {
    const pairs: Array<[string, string]> = [
      ['127.0.0.1', '127.1'],
      ['127.0.0.1:8080', '[::ffff:7f00:1]:8080'],
      ['[::1]', '[0:0::1]'],
      ['orders', 'orders.'],
      ['orders.ns.svc.cluster.local.', 'Orders.NS.svc.cluster.local'],
    ];
    for (const [first, second] of pairs) {
      expect(() => routesOf([{ host: first, audience: 'a' }, { host: second, audience: 'b' }]), second).toThrow(
        `outbound.routes.1.host: duplicate route for host "${second.toLowerCase()}": the same host as outbound.routes.0.host "${first.toLowerCase()}"`,
      );
    }
    // Another port is another route.
    expect(() => routesOf([{ host: '127.0.0.1:8080', audience: 'a' }, { host: '127.1:8081', audience: 'b' }, { host: '127.1', audience: 'c' }])).not.toThrow();
  });

  it('refuses a bracketed route host that is no IPv6 address', () => {
    expect(() => routesOf([{ host: '[1.2.3.4]', audience: 'p' }])).toThrow(/outbound\.routes\.0\.host: must be a host name/);
  });
});
