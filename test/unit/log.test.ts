import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { capped, cappedJson, loggedPath, unverifiedClaims } from '../../src/log.js';
import { fuzzRuns } from '../support/attacks.js';

describe('cappedJson and unverifiedClaims: claims made safe to log', () => {
  it('property: the same text as JSON.stringify cut by capped(), for any JSON value', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.integer({ min: 1, max: 200 }), (value, max) => {
        expect(cappedJson(value, max)).toBe(capped(JSON.stringify(value), max));
      }),
      { numRuns: fuzzRuns() },
    );
  });

  it('writes a value nested far past what JSON.stringify survives as its first characters and a …, without throwing', () => {
    const depth = 50_000;
    const arrays: unknown = JSON.parse('['.repeat(depth) + ']'.repeat(depth));
    expect(() => JSON.stringify(arrays)).toThrow(RangeError);
    expect(cappedJson(arrays, 128)).toBe(`${'['.repeat(128)}…`);
    const objects: unknown = JSON.parse('{"a":'.repeat(depth) + '1' + '}'.repeat(depth));
    expect(cappedJson(objects, 20)).toBe('{"a":{"a":{"a":{"a":…');
    expect(unverifiedClaims({ sub: arrays, aud: objects, iss: 'x'.repeat(500), exp: 1 })).toEqual({
      verified: false,
      sub: `${'['.repeat(128)}…`,
      aud: `${'{"a":'.repeat(25)}{"a…`,
      iss: `${'x'.repeat(128)}…`,
      exp: 1,
    });
  });

  it('stops at the budget on wide values too: a long array, a long key, a long string', () => {
    expect(cappedJson(Array.from({ length: 100_000 }, () => 'a'), 10)).toBe('["a","a","…');
    expect(cappedJson({ ['k'.repeat(1_000)]: 1 }, 8)).toBe('{"kkkkkk…');
    expect(cappedJson(['"'.repeat(1_000)], 8)).toBe('["\\"\\"\\"…');
  });
});

describe('loggedPath: a token in a target refused before normalisation is masked however it is escaped', () => {
  const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlc2lnbmF0dXJl';
  it('plain, with letters escaped once (%65 is "e"), or escaped twice and more (%2565)', () => {
    expect(loggedPath(`/cb/${jwt}/%zz`)).toBe('/cb/[redacted]/%zz');
    expect(loggedPath(`/cb/%65${jwt.slice(1)}/%zz`)).toBe('/cb/[redacted]/%zz');
    expect(loggedPath(`/cb/%2565${jwt.slice(1)}/%zz`)).toBe('/cb/[redacted]/%zz');
    expect(loggedPath(`/cb/%252565${jwt.slice(1).replaceAll('.', '%252E')}/%zz`)).toBe('/cb/[redacted]/%zz');
  });

  it('leaves every other escape as sent: a %25 that hides no token is logged as it came', () => {
    expect(loggedPath('/files/100%2541/%zz')).toBe('/files/100%2541/%zz');
    expect(loggedPath('/a%2Fb/%7e%41')).toBe('/a%2Fb/~A');
  });
});
