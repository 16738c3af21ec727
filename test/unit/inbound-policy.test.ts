import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { AllowEntry } from '../../src/config/schema.js';
import { compilePolicy } from '../../src/inbound/policy.js';

/** Allow entries as a user writes them, validated by the real schema. */
function allow(entries: unknown[]): AllowEntry[] {
  const config = parseConfig({
    service: 't',
    inbound: {
      target: 'http://127.0.0.1:9',
      audience: 'orders',
      issuers: [{ issuer: 'https://idp' }],
      rules: [{ match: { path: '/**' }, allow: entries }],
    },
  });
  return [...config.inbound!.rules![0]!.allow!];
}

describe('policy', () => {
  it('matches sub, iss, azp and client_id as a string or a list', () => {
    const p = compilePolicy(allow([{ sub: 'orders' }, { azp: ['ci', 'deployer'] }, { client_id: 'billing', iss: 'https://idp' }]));
    expect(p({ sub: 'orders' })).toBe(true);
    expect(p({ sub: 'payments' })).toBe(false);
    expect(p({ azp: 'deployer' })).toBe(true);
    expect(p({ client_id: 'billing', iss: 'https://idp' })).toBe(true);
    // every key of an entry must match
    expect(p({ client_id: 'billing', iss: 'https://other' })).toBe(false);
    expect(p({ client_id: 'billing' })).toBe(false);
  });

  it('does not match a sub claim that is not a string, even if it stringifies equal', () => {
    const p = compilePolicy(allow([{ sub: ['42', 'orders'] }]));
    expect(p({ sub: 42 })).toBe(false);
    expect(p({ sub: ['orders'] })).toBe(false);
    expect(p({ sub: '42' })).toBe(true);
  });

  it('compares claims: string equality, list membership, claim arrays containing the value', () => {
    const p = compilePolicy(allow([{ claims: { repository: 'acme/deployer', ref: 'refs/heads/main' } }]));
    expect(p({ repository: 'acme/deployer', ref: 'refs/heads/main' })).toBe(true);
    expect(p({ repository: 'acme/deployer', ref: 'refs/heads/dev' })).toBe(false);
    expect(p({ repository: 'acme/deployer' })).toBe(false);

    const roles = compilePolicy(allow([{ claims: { roles: 'admin' } }]));
    expect(roles({ roles: ['reader', 'admin'] })).toBe(true);
    expect(roles({ roles: ['reader'] })).toBe(false);
    expect(roles({ roles: 'admin' })).toBe(true);

    const env = compilePolicy(allow([{ claims: { environment: ['prod', 'staging'] } }]));
    expect(env({ environment: 'staging' })).toBe(true);
    expect(env({ environment: 'dev' })).toBe(false);
    expect(env({ environment: ['dev', 'prod'] })).toBe(true);
  });

  it('compares numbers and booleans by type', () => {
    const p = compilePolicy(allow([{ claims: { level: 3, mfa: true } }]));
    expect(p({ level: 3, mfa: true })).toBe(true);
    expect(p({ level: '3', mfa: true })).toBe(false);
    expect(p({ level: 3, mfa: 'true' })).toBe(false);
    expect(p({ level: [1, 3], mfa: true })).toBe(true);
  });

  it('treats scope and scp as space-delimited lists (RFC 9068 §2.2.3)', () => {
    const p = compilePolicy(allow([{ claims: { scope: 'payments:write' } }]));
    expect(p({ scope: 'payments:read payments:write' })).toBe(true);
    expect(p({ scope: 'payments:read' })).toBe(false);
    expect(p({ scope: 'payments:write-all' })).toBe(false);
    const scp = compilePolicy(allow([{ claims: { scp: ['a', 'b'] } }]));
    expect(scp({ scp: 'x b' })).toBe(true);
    // other claims are not split
    const other = compilePolicy(allow([{ claims: { team: 'a' } }]));
    expect(other({ team: 'a b' })).toBe(false);
  });

  it('reads a configured scope value as the token does: "export admin" asks for both scopes, in any order or form', () => {
    const both = compilePolicy(allow([{ claims: { scope: 'export  admin' } }]));
    expect(both({ scope: 'export admin' })).toBe(true);
    expect(both({ scope: 'admin read export' })).toBe(true);
    expect(both({ scope: ['admin', 'export'] })).toBe(true);
    expect(both({ scope: 'export' })).toBe(false);
    expect(both({ scope: ['export admin'] })).toBe(false);
    // A list is any of its values, each of which may ask for several scopes.
    const either = compilePolicy(allow([{ claims: { scp: ['export admin', 'root'] } }]));
    expect(either({ scp: 'root' })).toBe(true);
    expect(either({ scp: 'admin export' })).toBe(true);
    expect(either({ scp: 'admin' })).toBe(false);
    expect(either({ scp: null })).toBe(false);
  });

  it('refuses a scope value that names no scope, which would match every token', () => {
    const rule = (claims: Record<string, unknown>) => ({
      service: 't',
      inbound: { target: 'http://127.0.0.1:9', audience: 'a', issuers: [{ issuer: 'https://i' }], rules: [{ match: { path: '/**' }, allow: [{ claims }] }] },
    });
    expect(() => parseConfig(rule({ scope: ' ' }))).toThrow('inbound.rules.0.allow.0.claims.scope: names no scope: a scope value is one or more scopes separated by spaces');
    expect(() => parseConfig(rule({ scp: ['read', ''] }))).toThrow('inbound.rules.0.allow.0.claims.scp: names no scope');
    expect(() => parseConfig(rule({ team: ' ', scope: 'read write' }))).not.toThrow();
  });

  it('never matches missing, null or object claims', () => {
    const p = compilePolicy(allow([{ claims: { team: 'core' } }]));
    expect(p({})).toBe(false);
    expect(p({ team: null })).toBe(false);
    expect(p({ team: { name: 'core' } })).toBe(false);
  });

  it('takes claim names literally, so namespaced names with dots work', () => {
    const p = compilePolicy(allow([{ claims: { 'https://example.com/roles': 'admin' } }]));
    expect(p({ 'https://example.com/roles': ['admin'] })).toBe(true);
    expect(p({ https: { 'example.com/roles': 'admin' } })).toBe(false);
  });

  it('allows when any entry matches', () => {
    const p = compilePolicy(allow([{ sub: 'a' }, { sub: 'b' }]));
    expect(p({ sub: 'b' })).toBe(true);
    expect(p({ sub: 'c' })).toBe(false);
  });
});
