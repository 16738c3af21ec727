import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { TokenRejectedError } from '../../src/errors.js';
import { checkShape, createExtractor } from '../../src/inbound/extractor.js';

const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcmRlcnMifQ.c2lnbmF0dXJl';
const extract = createExtractor({ header: 'authorization', maxTokenBytes: 8192 });

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TokenRejectedError);
    return (err as TokenRejectedError).code;
  }
  throw new Error('expected a rejection');
}

describe('extractor', () => {
  it('takes the token from "Bearer <jwt>", scheme case-insensitive, and returns its segment boundaries', () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
      const got = extract(['Host', 'x', 'Authorization', `${scheme} ${jwt}`]);
      expect(got.token).toBe(jwt);
      expect(got.token.slice(0, got.dot1)).toBe('eyJhbGciOiJSUzI1NiJ9');
      expect(got.token.slice(got.dot1 + 1, got.dot2)).toBe('eyJzdWIiOiJvcmRlcnMifQ');
    }
    expect(extract(['authorization', `Bearer   ${jwt}`]).token).toBe(jwt);
  });

  it('reports a missing header, an empty value, another scheme and an empty token as missing_token', () => {
    expect(reason(() => extract(['host', 'x']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', '']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', 'Basic b3JkZXJzOnNlY3JldA==']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', 'Bearer ']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', jwt]))).toBe('missing_token');
    expect(reason(() => extract(['authorization', `Bearer${jwt}`]))).toBe('missing_token');
  });

  it('refuses two Authorization headers even when both are valid (Node keeps only the first in req.headers)', () => {
    expect(reason(() => extract(['Authorization', `Bearer ${jwt}`, 'authorization', `Bearer ${jwt}`]))).toBe('malformed_token');
    expect(reason(() => extract(['authorization', `Bearer ${jwt}`, 'AUTHORIZATION', 'Basic eA==']))).toBe('malformed_token');
  });

  it('refuses a token over the size cap before parsing it', () => {
    const small = createExtractor({ header: 'authorization', maxTokenBytes: 64 });
    const big = `${'a'.repeat(40)}.${'b'.repeat(40)}.c`;
    expect(reason(() => small(['authorization', `Bearer ${big}`]))).toBe('malformed_token');
    try {
      small(['authorization', `Bearer ${big}`]);
    } catch (err) {
      expect((err as Error).message).toMatch(/larger than 64 bytes/);
    }
    expect(small(['authorization', `Bearer ${'a'.repeat(31)}.${'b'.repeat(30)}.c`]).token).toHaveLength(64);
  });

  it('rejects anything that is not a compact JWS: JWE, wrong segment count, empty parts, bad characters', () => {
    const bad = [
      'a.b.c.d.e', // JWE compact
      'a.b',
      'a.b.c.d',
      '.b.c',
      'a..c',
      'a.b.c=',
      'a.b+.c',
      'a.b/.c',
      'a.b.c d',
      'a.b.\u00e9',
      '{"alg":"RS256"}.e30.x', // JSON serialization pieces are not compact
    ];
    for (const t of bad) expect(reason(() => extract(['authorization', `Bearer ${t}`])), t).toBe('malformed_token');
    expect(() => checkShape('a.b.c.d.e')).toThrow(/JWE/);
  });

  it('lets an empty signature through the shape check, so alg "none" is reported by the authenticator', () => {
    expect(extract(['authorization', 'Bearer a.b.']).token).toBe('a.b.');
  });

  it('CVE-2025-30204: a header full of dots is refused in one linear pass', () => {
    const dots = '.'.repeat(8000);
    expect(reason(() => extract(['authorization', `Bearer ${dots}`]))).toBe('malformed_token');
    const manyParts = 'a.'.repeat(4000);
    expect(reason(() => extract(['authorization', `Bearer ${manyParts}`]))).toBe('malformed_token');
  });

  it('reads a custom header with or without the Bearer prefix, and never the Authorization header then', () => {
    const custom = createExtractor({ header: 'x-jwt-assertion', maxTokenBytes: 8192 });
    expect(custom(['X-JWT-Assertion', jwt]).token).toBe(jwt);
    expect(custom(['x-jwt-assertion', `Bearer ${jwt}`]).token).toBe(jwt);
    expect(reason(() => custom(['authorization', `Bearer ${jwt}`]))).toBe('missing_token');
  });

  it('property: accepts exactly three non-empty base64url header/payload segments, rejects everything else with a coded error', () => {
    const seg = fc.stringMatching(/^[A-Za-z0-9_-]{1,20}$/);
    fc.assert(
      fc.property(seg, seg, fc.stringMatching(/^[A-Za-z0-9_-]{0,20}$/), (h, p, s) => {
        const t = `${h}.${p}.${s}`;
        expect(extract(['authorization', `Bearer ${t}`]).token).toBe(t);
      }),
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 60 }), (garbage) => {
        try {
          const got = extract(['authorization', `Bearer ${garbage}`]);
          // Anything accepted really is three base64url segments.
          expect(got.token.split('.')).toHaveLength(3);
          expect(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(got.token)).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(TokenRejectedError);
        }
      }),
    );
  });
});
