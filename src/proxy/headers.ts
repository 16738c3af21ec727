/**
 * Header hygiene for a forwarding proxy (RFC 9110 §7.6.1): hop-by-hop headers
 * and every header named in `Connection` belong to one connection and are
 * never forwarded. Header names here are lower-case.
 */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);

/** Names listed in the Connection header(s), lower-cased. */
export function connectionTokens(rawHeaders: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() !== 'connection') continue;
    for (const token of rawHeaders[i + 1]!.split(',')) {
      const t = token.trim().toLowerCase();
      if (t) out.add(t);
    }
  }
  return out;
}

/**
 * Copies `rawHeaders` (Node's flat [name, value, ...] list, duplicates kept)
 * into a new flat list without hop-by-hop headers, Connection-named headers
 * and any name in `drop`.
 */
export function forwardableHeaders(rawHeaders: readonly string[], drop: ReadonlySet<string>): string[] {
  const named = connectionTokens(rawHeaders);
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named.has(lower) || drop.has(lower)) continue;
    out.push(name, rawHeaders[i + 1]!);
  }
  return out;
}

/** The same filtering for a response header object as undici returns it. */
export function forwardableResponseHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const named = new Set<string>();
  const conn = headers.connection;
  for (const v of Array.isArray(conn) ? conn : conn ? [conn] : []) {
    for (const t of v.split(',')) if (t.trim()) named.add(t.trim().toLowerCase());
  }
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named.has(lower)) continue;
    out[name] = value;
  }
  return out;
}

/** Every value of a header in `rawHeaders` (case-insensitive name). */
export function headerValues(rawHeaders: readonly string[], lowerName: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === lowerName) out.push(rawHeaders[i + 1]!);
  }
  return out;
}
