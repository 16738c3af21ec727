import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { currentHttpDate, httpDate, isoTimeOrNumber, isoTimestamp } from '../../src/time-text.js';
import { fuzzRuns } from '../support/attacks.js';

// The largest time value a Date holds (ECMA-262 §21.4.1.31), in ms either side of the epoch.
const MAX_TIME = 8.64e15;

describe('time-text: times written without Date.prototype.toISOString/toUTCString', () => {
  it('property: isoTimestamp is toISOString for every time a Date can hold, six-digit years included', () => {
    fc.assert(
      fc.property(fc.integer({ min: -MAX_TIME, max: MAX_TIME }), (ms) => {
        expect(isoTimestamp(ms)).toBe(new Date(ms).toISOString());
      }),
      { numRuns: fuzzRuns() },
    );
  });

  it('property: the same around the years where the format changes width, and for fractional times', () => {
    const yearStart = (y: number) => Date.UTC(y, 0, 1);
    const edges = [-1, 0, 1, 10_000].map(yearStart);
    fc.assert(
      fc.property(fc.constantFrom(...edges), fc.double({ min: -2 * 86_400_000, max: 2 * 86_400_000, noNaN: true }), (edge, delta) => {
        expect(isoTimestamp(edge + delta)).toBe(new Date(edge + delta).toISOString());
      }),
      { numRuns: fuzzRuns() },
    );
  });

  it('isoTimestamp is undefined, and isoTimeOrNumber the number, where toISOString would throw', () => {
    for (const ms of [Number.NaN, MAX_TIME + 1, -MAX_TIME - 1, Number.POSITIVE_INFINITY, 1e300]) {
      expect(() => new Date(ms).toISOString()).toThrow(RangeError);
      expect(isoTimestamp(ms)).toBeUndefined();
      expect(isoTimeOrNumber(ms)).toBe(String(ms));
    }
    expect(isoTimeOrNumber(0)).toBe('1970-01-01T00:00:00.000Z');
    expect(isoTimestamp(Date.UTC(10_000, 0, 1))).toBe('+010000-01-01T00:00:00.000Z');
    expect(isoTimestamp(Date.UTC(-1, 11, 31, 23, 59, 59, 999))).toBe('-000001-12-31T23:59:59.999Z');
  });

  it('property: httpDate is toUTCString, the IMF-fixdate of RFC 9110, for the years 1000-9999', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(1000, 0, 1), max: Date.UTC(9999, 11, 31, 23, 59, 59, 999) }), (ms) => {
        expect(httpDate(ms)).toBe(new Date(ms).toUTCString());
        expect(httpDate(ms)).toMatch(/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/);
      }),
      { numRuns: fuzzRuns() },
    );
  });

  it('currentHttpDate changes with the second, not within it', () => {
    const at = Date.UTC(2026, 11, 1, 3, 56, 18);
    expect(currentHttpDate(at)).toBe('Tue, 01 Dec 2026 03:56:18 GMT');
    expect(currentHttpDate(at + 999)).toBe('Tue, 01 Dec 2026 03:56:18 GMT');
    expect(currentHttpDate(at + 1000)).toBe('Tue, 01 Dec 2026 03:56:19 GMT');
    // Back in time too (a clock stepped back): the cache is keyed by the second, not by time moving forward.
    expect(currentHttpDate(at - 1)).toBe('Tue, 01 Dec 2026 03:56:17 GMT');
  });

});
