import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { currentHttpDate, httpDate, isoTimeOrNumber, isoTimestamp, parseHttpDate } from '../../src/time-text.js';
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

  it('property: parseHttpDate reads back every IMF-fixdate httpDate writes, to the second', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(1000, 0, 1), max: Date.UTC(9999, 11, 31, 23, 59, 59, 999) }), (ms) => {
        expect(parseHttpDate(httpDate(ms), 0)).toBe(ms - (((ms % 1000) + 1000) % 1000));
      }),
      { numRuns: fuzzRuns() },
    );
  });

  it('parseHttpDate reads the three forms of RFC 9110 §5.6.7 as UTC, wherever the process is', () => {
    const at = Date.UTC(1994, 10, 6, 8, 49, 37);
    const now = Date.UTC(2026, 11, 1);
    expect(parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT', now)).toBe(at);
    expect(parseHttpDate('Sunday, 06-Nov-94 08:49:37 GMT', now)).toBe(at);
    // asctime has no zone: Date.parse reads it as local time, hours off wherever TZ is not UTC.
    expect(parseHttpDate('Sun Nov  6 08:49:37 1994', now)).toBe(at);
    expect(parseHttpDate('Sun Nov 16 08:49:37 1994', now)).toBe(at + 10 * 86_400_000);
    // A two-digit year more than 50 years ahead is the latest such year in the past; within 50 years, the future.
    expect(parseHttpDate('Friday, 01-Jan-77 00:00:00 GMT', now)).toBe(Date.UTC(1977, 0, 1));
    expect(parseHttpDate('Friday, 01-Jan-76 00:00:00 GMT', now)).toBe(Date.UTC(2076, 0, 1));
    expect(parseHttpDate('Tuesday, 01-Dec-26 00:00:00 GMT', now)).toBe(now);
    // The 50 years are counted to the second, not by the year's number, and the candidate may be in the next century.
    expect(parseHttpDate('Thursday, 31-Dec-76 23:59:59 GMT', now)).toBe(Date.UTC(1976, 11, 31, 23, 59, 59));
    expect(parseHttpDate('Monday, 01-Dec-76 00:00:00 GMT', now)).toBe(Date.UTC(2076, 11, 1));
    expect(parseHttpDate('Sunday, 01-Jan-20 00:00:00 GMT', Date.UTC(2080, 0, 1))).toBe(Date.UTC(2120, 0, 1));
    // Feb 29 of the year the rule picks: 2000 was a leap year; 1900, which the rule picks for 00 in 1930, was not.
    expect(parseHttpDate('Tuesday, 29-Feb-00 00:00:00 GMT', now)).toBe(Date.UTC(2000, 1, 29));
    expect(parseHttpDate('Thursday, 29-Feb-00 00:00:00 GMT', Date.UTC(1930, 0, 1))).toBeUndefined();
    // A leap second is the next second; the years 0-99 of a four-digit year are not 1900-1999.
    expect(parseHttpDate('Wed, 31 Dec 2025 23:59:60 GMT', now)).toBe(Date.UTC(2026, 0, 1));
    expect(parseHttpDate('Sat, 01 Jan 0094 00:00:00 GMT', now)).toBe(new Date('0094-01-01T00:00:00Z').getTime());
  });

  it('parseHttpDate refuses what is no HTTP-date, though Date.parse takes much of it', () => {
    const now = Date.UTC(2026, 11, 1);
    for (const value of [
      '',
      '2026-12-01T00:00:00Z',
      'Tue, 1 Dec 2026 00:00:00 GMT',
      'tue, 01 dec 2026 00:00:00 gmt',
      'Tue, 01 Dec 2026 00:00:00 UTC',
      'Tue, 01 Dec 2026 00:00:00 GMT ',
      'Tue, 01 Dec 2026 00:00 GMT',
      'Tue Dec  1 00:00:00 2026 GMT',
      'Dec 1 2026',
      'Tue, 30 Feb 2026 00:00:00 GMT',
      'Tue, 00 Dec 2026 00:00:00 GMT',
      'Tue, 01 Dec 2026 24:00:00 GMT',
      'Tue, 01 Dec 2026 23:60:00 GMT',
      'Tue, 01 Dec 2026 23:59:61 GMT',
      'Tuesday, 01-Dec-2026 00:00:00 GMT',
    ]) {
      expect(parseHttpDate(value, now), value).toBeUndefined();
    }
    expect(Number.isNaN(Date.parse('Dec 1 2026'))).toBe(false);
  });
});
