import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { compileGlob, createMatcher } from '../../src/inbound/matcher.js';
import { BadPathError, normalizePath, normalizeTarget, ruleSpelling } from '../../src/inbound/path.js';
import { fuzzRuns } from '../support/attacks.js';

function badPath(p: string): string {
  try {
    normalizePath(p);
  } catch (err) {
    expect(err).toBeInstanceOf(BadPathError);
    return (err as BadPathError).code;
  }
  throw new Error(`expected ${p} to be refused`);
}

describe('normalizePath', () => {
  it('resolves dot segments (RFC 3986 §5.2.4), also percent-encoded, and never climbs above /', () => {
    const cases: [string, string][] = [
      ['/', '/'],
      ['/a/b/../c', '/a/c'],
      ['/a/./b', '/a/b'],
      ['/a/b/..', '/a/'],
      ['/a/b/.', '/a/b/'],
      ['/../../etc/passwd', '/etc/passwd'],
      ['/public/%2e%2e/admin', '/admin'],
      ['/public/%2E%2E/admin', '/admin'],
      ['/public/.%2e/admin', '/admin'],
      ['/public/%2e./admin', '/admin'],
      ['/a/%2e/b', '/a/b'],
      ['/a/...', '/a/...'],
      ['/a/..b/c', '/a/..b/c'],
    ];
    for (const [input, want] of cases) expect(normalizePath(input), input).toBe(want);
  });

  it('collapses empty segments, keeps a trailing slash and case', () => {
    expect(normalizePath('//a///b//')).toBe('/a/b/');
    expect(normalizePath('/A/b')).toBe('/A/b');
  });

  it('decodes percent-encoded unreserved characters and upper-cases other escapes (RFC 3986 §6.2.2)', () => {
    expect(normalizePath('/%61%62%7e%2d%5f')).toBe('/ab~-_');
    expect(normalizePath('/a%3bb/%25/%c3%a9')).toBe('/a%3Bb/%25/%C3%A9');
    expect(normalizePath('/a%20b')).toBe('/a%20b');
  });

  it('refuses encoded slash/backslash/NUL/controls, raw backslash, ";", "#", controls, spaces, non-ASCII and broken escapes', () => {
    for (const p of ['/a%2Fb', '/a%2fb', '/a%5Cb', '/a%5cb', '/a%00', '/admin%0a', '/a%0D%0Ab', '/a%09', '/a%1f', '/a%7F', '/a\\b', '/admin;x/y', '/a#b', '/a\u0001', '/a b', '/caf\u00e9', '/a%', '/a%4', '/a%zz', 'a/b']) {
      expect(badPath(p), JSON.stringify(p)).toBe('bad_path');
    }
  });

  it('splits off the query untouched, accepts absolute-form and refuses asterisk-form', () => {
    expect(normalizeTarget('/a/../b?x=%2e%2e&y=/..')).toEqual({ path: '/b', query: '?x=%2e%2e&y=/..' });
    expect(normalizeTarget('http://orders:8080/a/./b?q')).toEqual({ path: '/a/b', query: '?q' });
    expect(normalizeTarget('http://orders:8080')).toEqual({ path: '/', query: '' });
    expect(() => normalizeTarget('*')).toThrow(BadPathError);
    expect(() => normalizeTarget('orders:443')).toThrow(BadPathError);
    expect(normalizeTarget('HTTPS://orders/a')).toEqual({ path: '/a', query: '' });
    // Only http(s) URLs with a host and no user info (RFC 9110 §4.2.1, §4.2.4).
    for (const t of ['foo://orders/a', 'ftp://orders/a', 'http:///a', 'http://:80/a', 'http://user:pw@orders/a', 'http://@orders/a']) {
      expect(() => normalizeTarget(t), t).toThrow(BadPathError);
    }
  });

  const segment = fc.oneof(
    fc.constantFrom('.', '..', '%2e', '%2E%2e', '.%2e', '', 'a', 'admin', 'public', '%41', '~', '%7E', '*', '%20', '...'),
    fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,=:@-]{1,6}$/),
  );
  const path = fc.array(segment, { maxLength: 12 }).map((s) => `/${s.join('/')}`);

  it('property: normalised paths are absolute, have no dot or empty segments, and normalising again changes nothing', () => {
    fc.assert(
      fc.property(path, (p) => {
        const n = normalizePath(p);
        expect(n.startsWith('/')).toBe(true);
        const segs = n.split('/').slice(1, n.endsWith('/') ? -1 : undefined);
        for (const s of segs) expect(['', '.', '..']).not.toContain(s);
        expect(normalizePath(n)).toBe(n);
      }),
      { numRuns: 2000 },
    );
  });

  it('property: agrees with the WHATWG URL resolver on dot segments (the resolver apps and browsers use)', () => {
    const plain = fc.array(fc.constantFrom('.', '..', '%2e', '%2e%2e', '.%2e', 'a', 'b', 'admin'), { minLength: 1, maxLength: 10 });
    fc.assert(
      fc.property(plain, (segs) => {
        const p = `/${segs.join('/')}`;
        const viaUrl = new URL(`http://h${p}`).pathname;
        expect(normalizePath(p)).toBe(viaUrl);
      }),
      { numRuns: 2000 },
    );
  });

  it('property: "x/.." inserted anywhere (plain or encoded) never changes the path, so it never changes the matched rule', () => {
    const matcher = createMatcher([
      { match: { path: '/admin/**' }, tag: 'admin' },
      { match: { path: '/public/**' }, tag: 'public' },
      { match: { path: '/**' }, tag: 'rest' },
    ]);
    const seg = fc.constantFrom('admin', 'public', 'x', 'y', 'a.b');
    fc.assert(
      fc.property(fc.array(seg, { minLength: 1, maxLength: 6 }), fc.nat(), seg, fc.constantFrom('..', '%2e%2e', '.%2E'), (segs, at, detour, up) => {
        const real = `/${segs.join('/')}`;
        const i = at % segs.length; // before a real segment: a trailing "x/.." would leave a trailing slash (RFC 3986 §5.2.4)
        const tricky = `/${[...segs.slice(0, i), detour, up, ...segs.slice(i)].join('/')}`;
        expect(normalizePath(tricky)).toBe(normalizePath(real));
        expect(matcher.match('GET', normalizePath(tricky))?.rule.tag).toBe(matcher.match('GET', normalizePath(real))?.rule.tag);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('compileGlob and the matcher', () => {
  it('"*" matches within one segment, "**" any number of segments including none', () => {
    const g = compileGlob('/payments/**');
    for (const p of ['/payments', '/payments/', '/payments/a', '/payments/a/b/c']) expect(g.test(p), p).toBe(true);
    for (const p of ['/paymentsX', '/payment', '/x/payments']) expect(g.test(p), p).toBe(false);

    const one = compileGlob('/users/*/profile');
    expect(one.test('/users/42/profile')).toBe(true);
    expect(one.test('/users/42/43/profile')).toBe(false);
    expect(one.test('/users//profile')).toBe(false);

    const within = compileGlob('/files/*.json');
    expect(within.test('/files/a.json')).toBe(true);
    expect(within.test('/files/a/b.json')).toBe(false);

    const middle = compileGlob('/a/**/z');
    for (const p of ['/a/z', '/a/b/z', '/a/b/c/z']) expect(middle.test(p), p).toBe(true);
    expect(middle.test('/a/b/c')).toBe(false);

    expect(compileGlob('/').test('/')).toBe(true);
    expect(compileGlob('/').test('/a')).toBe(false);
    expect(compileGlob('/**').test('/anything/at/all')).toBe(true);
  });

  it('matches exactly what the glob as a regex would (the former implementation), without its backtracking', () => {
    // The oracle: `**` as (?:/.*)?, `*` as /[^/]+, other stars as [^/]* (exponential on long paths, fine on short ones).
    const oracle = (glob: string) => {
      const parts = glob === '/' ? [''] : glob.split('/').slice(1);
      const source = parts.map((p) => (p === '**' ? '(?:/.*)?' : p === '*' ? '/[^/]+' : `/${p.split(/\*+/).join('[^/]*')}`)).join('');
      return new RegExp(`^${source}$`);
    };
    const globSegment = fc.constantFrom('a', 'b', 'ab', '*', '**', '***', 'a*', '*a', 'a*b', '*a*', 'a**b', '*-*-*', '-');
    const pathSegment = fc.constantFrom('a', 'b', 'ab', 'ba', 'aab', 'a-b-c', '--', '-', 'x');
    fc.assert(
      fc.property(fc.array(globSegment, { maxLength: 5 }), fc.boolean(), fc.array(pathSegment, { maxLength: 7 }), fc.boolean(), (gs, gSlash, ps, pSlash) => {
        const glob = `/${gs.join('/')}${gSlash && gs.length > 0 ? '/' : ''}`;
        const path = `/${ps.join('/')}${pSlash && ps.length > 0 ? '/' : ''}`;
        expect(compileGlob(glob).test(path), `${glob} ~ ${path}`).toBe(oracle(glob).test(path));
      }),
      { numRuns: fuzzRuns(2) },
    );
  });

  it('decides a long path against several * in a segment or several ** (ReDoS as a regex)', () => {
    expect(compileGlob('/f/*-*-*.txt').test(`/f/${'-'.repeat(50_000)}x`)).toBe(false);
    expect(compileGlob('/f/*-*-*.txt').test(`/f/${'-'.repeat(50_000)}.txt`)).toBe(true);
    expect(compileGlob('/**/a/**/b/**/c').test(`${'/a/b'.repeat(20_000)}/x`)).toBe(false);
    expect(compileGlob('/**/a/**/b/**/c').test(`${'/a/b'.repeat(20_000)}/c`)).toBe(true);
  });

  it('treats regex metacharacters in globs literally and canonicalises escapes like request paths', () => {
    expect(compileGlob('/v1.0/(x)').test('/v1.0/(x)')).toBe(true);
    expect(compileGlob('/v1.0/(x)').test('/v1x0/(x)')).toBe(false);
    expect(compileGlob('/a%7Eb').test(normalizePath('/a~b'))).toBe(true);
    expect(compileGlob('/caf%c3%a9').test(normalizePath('/caf%C3%A9'))).toBe(true);
  });

  it('matches the plain and the escaped spelling of a printable character (! $ & \' ( ) + , : = @ [ ] ...) as one, as an app that decodes the path reads them, and a literal star only as %2A', () => {
    const m = createMatcher([
      { match: { path: '/jobs/*:run' }, id: 'run' },
      { match: { path: '/users/%40admin/**' }, id: 'admin' },
      { match: { path: "/p/!$&'()+,=" }, id: 'delims' },
      { match: { path: '/files/%2A' }, id: 'star' },
      { match: { path: '/files/*.txt' }, id: 'txt' },
      { match: { path: '/**' }, id: 'any' },
    ]);
    const ruleFor = (raw: string) => m.match('GET', ruleSpelling(normalizePath(raw)))?.rule.id;
    for (const raw of ['/jobs/7:run', '/jobs/7%3Arun', '/jobs/7%3arun']) expect(ruleFor(raw), raw).toBe('run');
    for (const raw of ['/users/@admin/keys', '/users/%40admin/keys', '/users/%40admin']) expect(ruleFor(raw), raw).toBe('admin');
    for (const raw of ["/p/!$&'()+,=", '/p/%21%24%26%27%28%29%2B%2C%3D', "/p/%21$&'()%2b,="]) expect(ruleFor(raw), raw).toBe('delims');
    for (const raw of ['/files/*', '/files/%2A', '/files/%2a']) expect(ruleFor(raw), raw).toBe('star');
    // A rule's * is still the wildcard, and a request's star is text it matches like any other.
    expect(ruleFor('/files/a*.txt')).toBe('txt');
    expect(ruleFor('/files/ab')).toBe('any');
    // Every escape of a printable character a path may carry plain is read as that character ([ ] { } | ^ ` " < >
    // as well as the RFC 3986 sub-delims); those that would change the path's structure, or are not allowed plain, stay.
    expect(ruleSpelling('/%5Bops%5D%7B%7D%7C%5E%60%22%3C%3E')).toBe('/[ops]{}|^`"<>');
    expect(ruleSpelling('/a%3Fb%23c%25d%20%C3%A9%3B')).toBe('/a%3Fb%23c%25d%20%C3%A9%3B');
    expect(ruleSpelling('/plain/path')).toBe('/plain/path');
    // The app receives the path as normalised, escapes and all: only the matching reads the other spelling.
    expect(normalizePath('/users/%40admin/keys')).toBe('/users/%40admin/keys');
  });

  it('refuses globs with dot segments or characters requests can never have, naming the rule key path', () => {
    for (const g of ['/a/../b', '/a/./b', '/a/%2e%2e/b', '/a;b', '/a\\b', '/a%2Fb']) {
      expect(() => compileGlob(g), g).toThrow();
    }
    // The query is split off before rules are matched: a rule naming one could never match, and a wider one would decide.
    for (const g of ['/reports?format=csv', '/search?', '/a/**?x']) {
      expect(() => compileGlob(g), g).toThrow('must not contain "?": rules match the path only, never the query string (a literal "?" in a path segment is written %3F)');
    }
    expect(compileGlob('/a%3Fb').test(normalizeTarget('/a%3Fb?x=1').path)).toBe(true);
    try {
      createMatcher([{ match: { path: '/ok' } }, { match: { path: '/a/../admin' } }]);
      throw new Error('expected a ConfigError');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).issues[0]!.path).toBe('inbound.rules.1.match.path');
    }
  });

  it('the config schema runs the same glob check, so `validate` reports a bad glob by key path', () => {
    try {
      parseConfig({
        service: 't',
        inbound: { target: 'http://127.0.0.1:9', audience: 'a', issuers: [{ issuer: 'https://i' }], rules: [{ match: { path: '/x/%2e%2e/admin' }, public: true }] },
      });
      throw new Error('expected a ConfigError');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).issues).toEqual([{ path: 'inbound.rules.0.match.path', message: 'must not contain "." or ".." segments' }]);
    }
  });

  it('a literal rule does not cover its trailing-slash form; "/secret/**" covers /secret, /secret/, /secret/. and /secret/x (README: Paths)', () => {
    const ruleFor = (m: ReturnType<typeof createMatcher<{ match: { path: string }; id: string }>>, target: string) => m.match('GET', normalizeTarget(target).path)?.rule.id;
    // The trap, pinned as documented: the literal leaves /secret/ (and /secret/., which is /secret/) to the broader rule.
    const literal = createMatcher([
      { match: { path: '/secret' }, id: 'deployer only' },
      { match: { path: '/**' }, id: 'everyone' },
    ]);
    expect(['/secret', '/secret/', '/secret/.', '/secret/x'].map((t) => ruleFor(literal, t))).toEqual(['deployer only', 'everyone', 'everyone', 'everyone']);
    // The recommended form: the resource and everything under it, in every spelling that normalises to it.
    const prefix = createMatcher([
      { match: { path: '/secret/**' }, id: 'deployer only' },
      { match: { path: '/**' }, id: 'everyone' },
    ]);
    for (const t of ['/secret', '/secret/', '/secret/.', '/secret/x', '/secret/x/', '//secret', '/secret/x/..', 'http://orders/secret/']) expect(ruleFor(prefix, t), t).toBe('deployer only');
    for (const t of ['/secrets', '/secret-x', '/Secret/', '/secret/..']) expect(ruleFor(prefix, t), t).toBe('everyone');
  });

  it('returns the first matching rule, honouring methods (no method list = every method)', () => {
    const m = createMatcher([
      { match: { path: '/healthz', methods: ['GET'] }, id: 'health' },
      { match: { path: '/payments/**', methods: ['POST', 'PUT'] }, id: 'pay-write' },
      { match: { path: '/payments/**' }, id: 'pay-any' },
    ]);
    expect(m.match('GET', '/healthz')?.rule.id).toBe('health');
    expect(m.match('OPTIONS', '/healthz')).toBeUndefined();
    expect(m.match('POST', '/payments/1')?.rule.id).toBe('pay-write');
    expect(m.match('GET', '/payments/1')?.rule.id).toBe('pay-any');
    expect(m.match('GET', '/other')).toBeUndefined();
    expect(m.match('POST', '/payments/1')?.index).toBe(1);
  });

  it('shadows lists the earlier rules a spelling apps treat as the same path matches: other letter case (patterns too), the trailing slash toggled', () => {
    const m = createMatcher([
      { match: { path: '/admin/**' }, id: 'admin' },
      { match: { path: '/Reports/*' }, id: 'reports' },
      { match: { path: '/secret' }, id: 'secret' },
      { match: { path: '/public/' }, id: 'public dir' },
      { match: { path: '/**' }, id: 'any' },
    ]);
    const shadows = (path: string) => m.shadows('GET', path, m.match('GET', path)).map((r) => r.rule.id);
    expect(shadows('/ADMIN/x')).toEqual(['admin']);
    expect(shadows('/Admin')).toEqual(['admin']);
    expect(shadows('/reports/q1')).toEqual(['reports']);
    expect(shadows('/secret/')).toEqual(['secret']);
    expect(shadows('/SECRET/')).toEqual(['secret']);
    expect(shadows('/public')).toEqual(['public dir']);
    // The exact match already, a later rule only, or /** either way: none.
    for (const path of ['/admin/x', '/Reports/q1', '/secret', '/Other/X', '/', '/x/']) expect(shadows(path), path).toEqual([]);
    expect(createMatcher([{ match: { path: '/a' }, id: 'a' }]).shadows('GET', '/A', undefined)).toEqual([]);
  });

  it('shadows folds a pattern\'s letters however the rule spells them: /%41dmin/** is /Admin/**, and shadows /admin/x as that does', () => {
    for (const pattern of ['/Admin/**', '/%41dmin/**', '/%41DMIN/**']) {
      const m = createMatcher([
        { match: { path: pattern }, id: 'admin' },
        { match: { path: '/**' }, id: 'any' },
      ]);
      expect(m.shadows('GET', '/admin/x', m.match('GET', '/admin/x')).map((r) => r.rule.id), pattern).toEqual(['admin']);
    }
  });

  it('shadows folds the letter case of a path with escapes without folding their hex, which stays upper case in rules', () => {
    const m = createMatcher([
      { match: { path: '/files/caf%C3%A9/**' }, id: 'cafe' },
      { match: { path: '/Docs/%E2%9C%93' }, id: 'check' },
      { match: { path: '/**' }, id: 'any' },
    ]);
    const shadows = (path: string) => m.shadows('GET', path, m.match('GET', path)).map((r) => r.rule.id);
    expect(shadows(normalizePath('/FILES/caf%c3%a9/x'))).toEqual(['cafe']);
    expect(shadows(normalizePath('/Files/CAF%C3%A9'))).toEqual(['cafe']);
    expect(shadows(normalizePath('/docs/%e2%9c%93'))).toEqual(['check']);
    expect(shadows(normalizePath('/files/caf%C3%A9/x'))).toEqual([]);
  });

  it('matches HEAD wherever it matches GET: apps answer a HEAD with their GET handler, so a GET rule cannot be sidestepped by asking HEAD', () => {
    const m = createMatcher([
      { match: { path: '/admin/**', methods: ['GET'] }, id: 'admins read' },
      { match: { path: '/admin/**', methods: ['HEAD'] }, id: 'head only' },
      { match: { path: '/**' }, id: 'everyone' },
    ]);
    expect(m.match('HEAD', '/admin/users')?.rule.id).toBe('admins read');
    expect(m.match('GET', '/admin/users')?.rule.id).toBe('admins read');
    // Not the other way round: a HEAD rule does not cover GET.
    const headOnly = createMatcher([{ match: { path: '/x', methods: ['HEAD'] }, id: 'head' }]);
    expect(headOnly.match('GET', '/x')).toBeUndefined();
    expect(headOnly.match('HEAD', '/x')?.rule.id).toBe('head');
  });
});
