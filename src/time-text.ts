/**
 * Times as text (log lines, messages, the `Date` header) without `Date.prototype.toISOString` or `toUTCString`.
 *
 * Why: the first call of either makes V8 set up its time zone cache, which reads the ICU time zone data embedded in
 * the `node` binary. Those file-backed pages then count in the process's RSS for its whole life: about 1 MiB on
 * Node 22 (0.55 MiB of the binary's ICU data and code around it; docs/performance.md, "Memory"). A sidecar logs a
 * timestamp on every line and Node's HTTP server writes a `Date` on every response it completes itself, so either
 * would pay it at startup. The `getUTC*` accessors do plain arithmetic on the time value and touch none of it.
 * `test/e2e/bundle.test.ts` checks that a running sidecar calls neither method, and `test/unit/time-text.test.ts`
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
