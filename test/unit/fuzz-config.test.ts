import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { ALGORITHMS, type Config } from '../../src/config/schema.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { fuzzRuns, tallyFuzzCases } from '../support/attacks.js';

/**
 * Property-based fuzzing of the config validator: every document is either a
 * valid, frozen, fully defaulted config that keeps the fail-closed defaults,
 * or a ConfigError whose issues name key paths related to what was wrong.
 * Nothing else may escape: no TypeError, no RangeError, no silent acceptance
 * of an unknown key. Also through loadConfig with YAML overlays (merging,
 * `${VAR}` interpolation, `__proto__` keys).
 *
 * The checks made on every case use node:assert, with messages built only when
 * a check fails: at hundreds of thousands of cases, vitest's `expect` costs a
 * fifth of the run.
 */

const FULL = {
  service: 'orders',
  inbound: {
    listen: '127.0.0.1:15006',
    target: 'http://127.0.0.1:8080',
    audience: ['orders', 'orders-alt'],
    issuers: [
      { issuer: 'https://idp.example', algorithms: ['RS256', 'ES256'], audience: 'x' },
      { issuer: 'https://b.example', jwksUri: 'https://b.example/jwks' },
    ],
    clockSkewSeconds: 30,
    maxTokenLifetimeSeconds: 3600,
    requiredClaims: ['sub'],
    typ: 'at+jwt',
    tokenHeader: 'authorization',
    maxTokenBytes: 8192,
    jwks: { refreshIntervalSeconds: 300, maxStaleSeconds: 3600, cooldownSeconds: 30, timeoutSeconds: 5, retryMinSeconds: 1, retryMaxSeconds: 60 },
    cache: { maxEntries: 100 },
    rules: [
      { match: { path: '/healthz', methods: ['GET'] }, public: true },
      { match: { path: '/payments/**', methods: ['POST'] }, allow: [{ sub: 'orders' }, { claims: { repository: 'acme/x', ref: 'refs/heads/main' } }] },
    ],
    forward: { subjectHeader: 'x-peer-sub', claimHeaders: { 'x-peer-env': 'environment' }, keepToken: false },
  },
  outbound: {
    listen: '127.0.0.1:15001',
    tokenSource: { type: 'client_credentials', issuer: 'https://idp.example', clientId: 'orders', clientSecret: 's', scopes: undefined },
    routes: [
      { host: 'payments', target: 'http://payments:15006', audience: 'payments', scopes: ['read'] },
      { host: 'ledger:8443', audience: 'ledger', tokenSource: { type: 'file', path: '/var/run/{audience}.jwt' } },
      { host: 'ci', audience: 'ci', tokenSource: { type: 'github_actions' } },
      { host: 'gitlab', audience: 'gitlab', tokenSource: { type: 'env', variable: 'ID_TOKEN_{audience}' } },
      {
        host: 'sts',
        audience: 'sts',
        tokenSource: { type: 'token_exchange', tokenEndpoint: 'https://sts.example/token', clientId: 'c', privateKeyFile: '/k.pem', subjectTokenFile: '/t', audienceParam: 'audience', params: { x: 'y' } },
      },
    ],
    unknownHosts: 'deny',
  },
  admin: { listen: '0.0.0.0:15020' },
  log: { level: 'info' },
  limits: { maxHeaderBytes: 16384, headersTimeoutSeconds: 10, requestTimeoutSeconds: 300 },
  lifecycle: { drainTimeoutSeconds: 20, watchConfig: true },
};
delete (FULL.outbound.tokenSource as Record<string, unknown>).scopes;

const MINIMAL_INBOUND = { service: 'a', inbound: { target: 'http://127.0.0.1:1', audience: 'a', issuers: [{ issuer: 'https://i' }] } };
const BASES: Record<string, unknown>[] = [FULL, MINIMAL_INBOUND];

/** Objects whose keys are free-form (z.record): an extra key there is data, not a typo. */
const RECORD_PARENT = /(^|\.)(claims|claimHeaders|params)$/;

/** Every key path of a document (objects and arrays), root excluded. */
function keyPaths(doc: unknown, prefix: string[] = []): string[][] {
  if (doc === null || typeof doc !== 'object') return [];
  const out: string[][] = [];
  for (const [k, v] of Object.entries(doc)) {
    const p = [...prefix, k];
    out.push(p, ...keyPaths(v, p));
  }
  return out;
}

type Op = { kind: 'set'; value: unknown } | { kind: 'delete' } | { kind: 'unknown'; key: string } | { kind: 'recase' };

/**
 * Applies `op` at `path` to a deep copy of `doc`; returns the copy and the key
 * path the change lives at (for `unknown` on a non-object, the value is
 * replaced by an object holding the key, so the change is at `path`).
 */
function mutate(doc: unknown, path: string[], op: Op): { doc: any; at: string[] } {
  const copy = structuredClone(doc) as any;
  const parent = path.slice(0, -1).reduce((o, k) => o[k], copy);
  const key = path.at(-1)!;
  switch (op.kind) {
    case 'set':
      parent[key] = op.value;
      return { doc: copy, at: path };
    case 'delete':
      if (Array.isArray(parent)) parent.splice(Number(key), 1);
      else delete parent[key];
      return { doc: copy, at: path };
    case 'unknown': {
      const target = parent[key];
      if (target && typeof target === 'object' && !Array.isArray(target)) {
        target[op.key] = 1;
        return { doc: copy, at: [...path, op.key] };
      }
      parent[key] = { [op.key]: 1 };
      return { doc: copy, at: path };
    }
    case 'recase': {
      if (Array.isArray(parent)) return { doc: copy, at: path };
      const renamed = key === key.toUpperCase() ? key.toLowerCase() : `${key[0]!.toUpperCase()}${key.slice(1)}`;
      const value = parent[key];
      delete parent[key];
      parent[renamed] = value;
      return { doc: copy, at: [...path.slice(0, -1), renamed] };
    }
  }
}

const trickyValue = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom<unknown>('', -1, 0, 0.5, 65536, 1e21, Infinity, -Infinity, NaN, -0, 'none', 'HS256', 'hs256', 'http://', 'javascript:alert(1)', 'file:///etc/passwd', '0.0.0.0:99999', ':0', '[::1]:1', '/**', '/a/../b', '../..', '${HOME}', [], {}, null, true, [null], { __proto__: { x: 1 } }),
  fc.string({ maxLength: 20 }),
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), value: trickyValue }),
  fc.constant({ kind: 'delete' as const }),
  fc.record({ kind: fc.constant('unknown' as const), key: fc.constantFrom('rule', 'algorithm', 'allowNone', 'Audience', 'x', 'constructor', 'prototype') }),
  fc.constant({ kind: 'recase' as const }),
);

/** Parses and returns the config, or the ConfigError; anything else thrown fails the property. */
function parse(doc: unknown): Config | ConfigError {
  try {
    return parseConfig(doc);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw new Error(`parseConfig threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.message} for ${JSON.stringify(doc)?.slice(0, 300)}`);
  }
}

function checkIssues(err: ConfigError): void {
  assert.ok(err.issues.length > 0, `a ConfigError without issues: ${err.message}`);
  for (const i of err.issues) {
    assert.equal(typeof i.path, 'string');
    if (i.message.length === 0) assert.fail(`an issue without a message at ${i.path}`);
    const named = i.path ? `${i.path}: ${i.message}` : i.message;
    if (!err.message.includes(named)) assert.fail(`${JSON.stringify(err.message)} does not contain ${JSON.stringify(named)}`);
  }
}

/** The fail-closed defaults a valid config must keep unless the document set them explicitly. */
function checkValid(config: Config, doc: any): void {
  assert.ok(Object.isFrozen(config), 'the config is not frozen');
  // Parsing the result again changes nothing: defaults and normalisations are idempotent.
  const again = parseConfig(structuredClone(config));
  if (!isDeepStrictEqual(again, config)) expect(again).toEqual(config);
  for (const issuer of config.inbound?.issuers ?? []) {
    for (const alg of issuer.algorithms) assert.ok((ALGORITHMS as readonly string[]).includes(alg), `algorithm ${alg} accepted`);
  }
  if (config.inbound) {
    assert.equal(config.inbound.forward.keepToken, doc?.inbound?.forward?.keepToken ?? false, 'forward.keepToken');
    assert.ok(config.inbound.clockSkewSeconds <= 300, `clockSkewSeconds ${config.inbound.clockSkewSeconds}`);
    assert.ok(Number.isSafeInteger(config.inbound.maxTokenBytes) && config.inbound.maxTokenBytes > 0, `maxTokenBytes ${config.inbound.maxTokenBytes}`);
    if (config.inbound.rules) for (const r of config.inbound.rules) assert.ok(r.public || (r.allow?.length ?? 0) > 0, 'a rule that is neither public nor allows anyone');
  }
  if (config.outbound) assert.equal(config.outbound.unknownHosts, doc?.outbound?.unknownHosts ?? 'deny', 'outbound.unknownHosts');
  assert.equal(({} as Record<string, unknown>).x, undefined, 'Object.prototype was polluted');
}

describe('regressions this fuzzer found', () => {
  const load = (overlay: string) => {
    const dir = mkdtempSync(join(tmpdir(), 'fuzz-config-'));
    writeFileSync(join(dir, 'base.yaml'), stringify(MINIMAL_INBOUND));
    writeFileSync(join(dir, 'overlay.yaml'), overlay);
    try {
      loadConfig([join(dir, 'base.yaml'), join(dir, 'overlay.yaml')], {});
    } catch (err) {
      return err;
    }
    return undefined;
  };

  it('a `__proto__` key in a file or an overlay is reported as unknown, not silently dropped', () => {
    const err = load('inbound:\n  __proto__:\n    maxTokenBytes: 1\n__proto__:\n  outbound: {}\n');
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues.map((i) => i.path)).toEqual(expect.arrayContaining(['inbound.__proto__', '__proto__']));
  });

  it('a YAML alias that contains itself is a ConfigError at its key path, not a stack overflow', () => {
    const err = load('inbound:\n  audience: &a [*a]\n');
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues).toEqual([{ path: 'inbound.audience.0', message: expect.stringMatching(/^a YAML alias makes this value contain itself \(in .*overlay\.yaml, line 2\)$/) }]);
  });
});

describe('fuzz: the config validator', () => {
  it('mutated valid configs: valid and fail-closed, or a ConfigError naming a related key path', async () => {
    const runs = fuzzRuns(2);
    const cases = fc.nat(BASES.length - 1).chain((b) => fc.tuple(fc.constant(b), fc.constantFrom(...keyPaths(BASES[b])), opArb));
    await fc.assert(
      fc.property(cases, ([b, path, op]) => {
        const { doc, at } = mutate(BASES[b], path, op);
        const result = parse(doc);
        if (!(result instanceof ConfigError)) {
          checkValid(result, doc);
          // An unknown or re-cased key is only ever fine inside a free-form record.
          if (op.kind === 'unknown' || op.kind === 'recase') {
            const parent = at.slice(0, -1).join('.');
            const renamedToSame = op.kind === 'recase' && at.join('.') === path.join('.');
            if (!(RECORD_PARENT.test(parent) || renamedToSame || /^\d+$/.test(at.at(-1)!))) assert.fail(`accepted ${at.join('.')}`);
          }
          return;
        }
        checkIssues(result);
        const section = at[0]!;
        // The issues stay in the section that was changed (a refinement may name a sibling key there).
        if (!result.issues.some((i) => i.path.split('.')[0] === section || i.path === '' || (section !== 'inbound' && section !== 'outbound' && i.path === 'inbound'))) {
          assert.fail(`${op.kind} at ${at.join('.')} -> ${result.message}`);
        }
        if (op.kind === 'unknown' && at.length > path.length && !RECORD_PARENT.test(path.join('.'))) {
          if (!result.issues.some((i) => i.path === at.join('.'))) assert.fail(`no issue at ${at.join('.')}: ${result.message}`);
        }
      }),
      { numRuns: runs },
    );
    await tallyFuzzCases('config.mutated', runs);
  });

  it('random documents with config-shaped keys: a Config or a ConfigError, never anything else', async () => {
    const runs = fuzzRuns(1);
    const keys = fc.constantFrom('service', 'inbound', 'outbound', 'admin', 'log', 'limits', 'lifecycle', 'issuers', 'issuer', 'target', 'audience', 'rules', 'match', 'path', 'allow', 'public', 'routes', 'host', 'tokenSource', 'type', 'listen', 'jwks', 'cache', 'forward', '__proto__', 'constructor');
    await fc.assert(
      fc.property(fc.object({ key: keys, maxDepth: 4, maxKeys: 5, values: [trickyValue] }), (doc) => {
        const result = parse(doc);
        if (result instanceof ConfigError) checkIssues(result);
        else checkValid(result, doc);
      }),
      { numRuns: runs },
    );
    await tallyFuzzCases('config.random', runs);
  });

  it('YAML overlays through loadConfig (merge, ${VAR}, anchors, __proto__): Config, ConfigError or UsageError only, and no key is silently dropped', async () => {
    const runs = fuzzRuns(0.5);
    const dir = mkdtempSync(join(tmpdir(), 'fuzz-config-'));
    const base = join(dir, 'base.yaml');
    const overlay = join(dir, 'overlay.yaml');
    writeFileSync(base, stringify(MINIMAL_INBOUND));
    const fragment = fc.constantFrom(
      'inbound:\n  audience: b\n',
      'inbound:\n  rules: null\n',
      'inbound: null\n',
      'outbound: null\n',
      'inbound:\n  __proto__:\n    maxTokenBytes: 1\n',
      '__proto__:\n  outbound:\n    unknownHosts: passthrough\n',
      'constructor:\n  x: 1\n',
      'inbound:\n  audience: ${AUD}\n',
      'inbound:\n  audience: ${UNSET_VAR_XYZ}\n',
      'inbound:\n  audience: ${UNSET_VAR_XYZ:-dflt}\n',
      'inbound:\n  audience: $${AUD}\n',
      'service: &a svc\nlog:\n  level: *a\n',
      'x: &x [*x]\n',
      'inbound: [1, 2]\n',
      '- just\n- a list\n',
      '"unterminated\n',
      'inbound:\n  issuers:\n    - issuer: https://j\n      algorithms: [none]\n',
      'inbound:\n  maxTokenBytes: .inf\n',
      'inbound:\n  clockSkewSeconds: .nan\n',
      'limits:\n  requestTimeoutSeconds: 1\n',
      'inbound:\n  tokenHeader: "Authorization\\r\\nX: y"\n',
      '',
      '{}\n',
      'inbound: {target: "http://x", audience: c, issuers: [{issuer: "https://k"}], rule: []}\n',
    );
    await fc.assert(
      fc.property(fc.array(fragment, { maxLength: 3 }), (parts) => {
        // Fragments may repeat a top-level key: that is a YAML error the loader must report, so keep them.
        writeFileSync(overlay, parts.join(''));
        let result: Config | ConfigError | UsageError;
        try {
          result = loadConfig([base, overlay], { AUD: 'from-env' });
        } catch (err) {
          if (!(err instanceof ConfigError) && !(err instanceof UsageError)) throw err;
          result = err;
        }
        if (result instanceof ConfigError) return checkIssues(result);
        if (result instanceof UsageError) return;
        // A key that does not exist in the schema must never be accepted by being dropped on the way.
        if (parts.some((p) => p.includes('__proto__') || p.startsWith('constructor'))) assert.fail(`accepted ${JSON.stringify(parts)}`);
        assert.equal(({} as Record<string, unknown>).maxTokenBytes, undefined, 'Object.prototype was polluted');
      }),
      { numRuns: runs },
    );
    await tallyFuzzCases('config.yaml-overlays', runs);
  });
});
