import { isIPv4 } from 'node:net';

// The WHATWG URL host parser's "ends in a number" test (URL Standard §3.5): such a host is an IPv4 address or nothing.
const NUMERIC_LABEL = /^(?:\d+|0x[0-9a-f]*)$/;
const IPV4_MAPPED = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/;

/**
 * The one spelling of a lower-case host that routes compare, or undefined for a bracketed IPv6 literal that is not
 * one. IP literals become what a resolver connects to: `127.1`, `0x7f.0.0.1`, `2130706433` and `0177.0.0.1` are
 * `127.0.0.1` (inet_aton(3) reads them so, as does the URL Standard's IPv4 parser), `[0:0::1]` is `[::1]`, and an
 * IPv4-mapped IPv6 address (`[::ffff:7f00:1]`) is the IPv4 address it reaches. A DNS name loses one trailing dot
 * and nothing else: it is never resolved, percent-decoded or IDNA-mapped (the authority grammar admits ASCII
 * letters, digits, `.` and `-` only, so an `xn--` label stays as written).
 */
export function canonicalHost(host: string): string | undefined {
  // Per request, so the common case is a char read: a name ending in g-w, y or z is neither an IP literal nor dotted.
  const end = host.charCodeAt(host.length - 1);
  if (end > 0x66 /* f */ && end !== 0x78 /* x */) return host;
  if (host.charCodeAt(0) === 0x5b /* [ */) return canonicalIpv6(host);
  const name = end === 0x2e /* . */ ? host.slice(0, -1) : host;
  let dot = name.length - 1;
  while (dot >= 0 && name.charCodeAt(dot) !== 0x2e) dot--;
  const first = name.charCodeAt(dot + 1);
  if (!(first >= 0x30 && first <= 0x39) || !NUMERIC_LABEL.test(name.slice(dot + 1))) return name;
  // Dotted decimal without leading zeros is already canonical (isIPv4 is that strict): no URL to parse.
  if (isIPv4(name)) return name;
  // A numeric last label the URL parser refuses as IPv4 (`1.2.3.256`, `foo.1`) is a name to a resolver too.
  const ipv4 = hostnameOf(name);
  return ipv4 !== undefined && isIPv4(ipv4) ? ipv4 : name;
}

function canonicalIpv6(host: string): string | undefined {
  const v6 = hostnameOf(host);
  if (v6 === undefined) return undefined;
  // An IPv4-mapped address is how a dual-stack socket reaches the IPv4 host (RFC 4291 §2.5.5.2): the same peer.
  const mapped = IPV4_MAPPED.exec(v6);
  if (!mapped) return v6;
  const hi = parseInt(mapped[1]!, 16);
  const lo = parseInt(mapped[2]!, 16);
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

function hostnameOf(host: string): string | undefined {
  try {
    return new URL(`http://${host}/`).hostname;
  } catch {
    return undefined;
  }
}
