/**
 * The address a connection came from, in one spelling: on a listener bound to `[::]` (every address, IPv6 and IPv4)
 * an IPv4 peer reads `::ffff:10.1.2.3`, which is `10.1.2.3` to anyone reading X-Forwarded-For or the log, and to an
 * app's IPv4 allowlist. Undefined where the socket has none (it is closed).
 */
export function peerAddress(socket: { remoteAddress?: string | undefined }): string | undefined {
  return unmapped(socket.remoteAddress);
}

/**
 * An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as its IPv4 address; any other as it is. X-Forwarded-For takes it on
 * every forwarded request: the regex runs only for an address that starts with `::`.
 */
export function unmapped<T extends string | undefined>(address: T): T {
  return (address?.startsWith('::') && IPV4_MAPPED.test(address) ? address.slice(7) : address) as T;
}

const IPV4_MAPPED = /^::ffff:\d+\.\d+\.\d+\.\d+$/i;
