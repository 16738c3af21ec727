/**
 * Times as text (log lines, messages, the `Date` header) without `Date.prototype.toISOString` or `toUTCString`, and
 * HTTP dates read without `Date.parse`.
 *
 * Why: the first call of either makes V8 set up its time zone cache, which reads the ICU time zone data embedded in
 * the `node` binary. Those file-backed pages then count in the process's RSS for its whole life: about 1 MiB on
 * Node 22 (0.55 MiB of the binary's ICU data and code around it; docs/performance.md, "Memory"). A sidecar logs a
 * timestamp on every line and Node's HTTP server writes a `Date` on every response it completes itself, so either
 * would pay it at startup. The `getUTC*` accessors do plain arithmetic on the time value and touch none of it.
 * `test/e2e/date-text.test.ts` checks that a running sidecar calls neither method, and `test/unit/time-text.test.ts`
 * that the text is the same as theirs.
 */

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const pad2 = (n: number) => (n < 10 ? `0${n}` : String(n));
const pad3 = (n: number) => (n < 10 ? `00${n}` : n < 100 ? `0${n}` : String(n));

/** ISO 8601 as `toISOString` writes it: years outside 0–9999 as a sign and six digits (ECMA-262 §21.4.1.32). */
function isoYear(year: number): string {
  if (year >= 0 && year <= 9999) return String(year).padStart(4, '0');
  return (year < 0 ? '-' : '+') + String(Math.abs(year)).padStart(6, '0');
}

/**
 * `new Date(ms).toISOString()`, e.g. `2026-12-01T03:56:18.347Z`; undefined for a time no Date can hold (NaN, beyond
 * ±8.64e15 ms), where toISOString throws.
 */
export function isoTimestamp(ms: number): string | undefined {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return undefined;
  return (
    `${isoYear(d.getUTCFullYear())}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}` +
    `T${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}.${pad3(d.getUTCMilliseconds())}Z`
  );
}

/** A time for a message: ISO 8601 as above, or the number itself when no Date can hold it. */
export function isoTimeOrNumber(ms: number): string {
  return isoTimestamp(ms) ?? String(ms);
}

/** The IMF-fixdate of RFC 9110 §5.6.7 (`Tue, 01 Dec 2026 03:56:18 GMT`), as `toUTCString` writes years 1000–9999. */
export function httpDate(ms: number): string {
  const d = new Date(ms);
  return `${DAYS[d.getUTCDay()]}, ${pad2(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} GMT`;
}

let cachedSecond = Number.NaN;
let cachedDate = '';

/** The `Date` header for a response sent now: written once per second, as Node's own is. */
export function currentHttpDate(now: number = Date.now()): string {
  const second = Math.floor(now / 1000);
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedDate = httpDate(second * 1000);
  }
  return cachedDate;
}

const MONTH = '(?<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)';
const TIME = '(?<h>\\d\\d):(?<m>\\d\\d):(?<s>\\d\\d)';
// RFC 9110 §5.6.7: the three forms a recipient must accept, case-sensitive, all in UTC.
const HTTP_DATE_FORMS = [
  new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?<day>\\d\\d) ${MONTH} (?<year>\\d{4}) ${TIME} GMT$`),
  new RegExp(`^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (?<day>\\d\\d)-${MONTH}-(?<yy>\\d\\d) ${TIME} GMT$`),
  new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ${MONTH} (?<day>[ \\d]\\d) ${TIME} (?<year>\\d{4})$`),
];

/**
 * An HTTP-date (RFC 9110 §5.6.7) as ms since the epoch; undefined for anything else, or a date that does not exist.
 * Not `Date.parse`: that takes the asctime form, which has no zone, as local time (hours off wherever TZ is not UTC,
 * and it would load V8's time zone data), and it accepts many strings that are no HTTP-date at all. A two-digit
 * rfc850 year that would be more than 50 years after `nowMs` is the most recent such year in the past.
 */
export function parseHttpDate(value: string, nowMs: number): number | undefined {
  const g = HTTP_DATE_FORMS.map((form) => form.exec(value)).find(Boolean)?.groups;
  if (!g) return undefined;
  const [month, day, h, m, s] = [MONTHS.indexOf(g.month!), Number(g.day), Number(g.h), Number(g.m), Number(g.s)];
  // The grammar allows a leap second (:60), read as the next second.
  if (h > 23 || m > 59 || s > 60) return undefined;
  // setUTCFullYear, not Date.UTC, which reads the years 0-99 as 1900-1999. Both carry over (Feb 30 is Mar 2).
  const timeIn = (year: number) => {
    const date = new Date(0);
    date.setUTCFullYear(year, month, day);
    return { date, ms: date.getTime() + ((h * 60 + m) * 60 + s) * 1000 };
  };
  let year = Number(g.year);
  if (g.yy !== undefined) {
    // RFC 9110: a two-digit year that would put the date more than 50 years in the future is the most recent year in
    // the past with those digits: of this century's candidate and its neighbours, the latest that is not.
    const thisYear = new Date(nowMs).getUTCFullYear();
    const limit = new Date(nowMs);
    limit.setUTCFullYear(thisYear + 50);
    const century = thisYear - (thisYear % 100);
    const candidates = [century + 100, century, century - 100].map((c) => c + Number(g.yy));
    year = candidates.find((y) => timeIn(y).ms <= limit.getTime()) ?? candidates[2]!;
  }
  const { date, ms } = timeIn(year);
  // A day the month does not have (Feb 30, or Feb 29 outside a leap year) carried over: no such date.
  return date.getUTCMonth() === month && date.getUTCDate() === day ? ms : undefined;
}
