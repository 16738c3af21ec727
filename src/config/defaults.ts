/**
 * Every default of the sidecar, in one place. The schema applies them; nothing
 * else in `src/` invents its own. Durations are seconds, sizes are bytes.
 */
export const DEFAULTS = Object.freeze({
  inbound: Object.freeze({
    listen: '0.0.0.0:15006',
    /** RFC 8725 §3.1: pin algorithms. `none` and HS* are never accepted whatever the config says. */
    algorithms: Object.freeze(['RS256', 'PS256', 'ES256', 'EdDSA'] as const),
    clockSkewSeconds: 30,
    tokenHeader: 'authorization',
    /** A token larger than this is refused before it is parsed (CVE-2025-30204 class). */
    maxTokenBytes: 8192,
    jwks: Object.freeze({
      refreshIntervalSeconds: 300,
      /** Last good keys keep verifying this long through IdP outages (Istio keeps up to 7 days). */
      maxStaleSeconds: 86_400,
      /** An unknown `kid` refetches at most once per cooldown per issuer. */
      cooldownSeconds: 30,
      timeoutSeconds: 5,
      /** Startup and failure retry backoff: starts here, doubles, capped at the max. */
      retryMinSeconds: 1,
      retryMaxSeconds: 60,
    }),
    /** maxBytes: 32 MiB. Tokens of about 1 KB fill maxEntries first; a flood of large distinct tokens stops here. */
    cache: Object.freeze({ maxEntries: 10_000, maxBytes: 32 * 1024 * 1024 }),
    forward: Object.freeze({
      subjectHeader: 'x-peer-sub',
      issuerHeader: 'x-peer-iss',
      claimsHeader: 'x-peer-claims',
      keepToken: false,
    }),
    /** The caller's X-Forwarded-* and the like reach the app with this hop appended (`replace`: only this hop's). */
    forwardedHeaders: 'append' as const,
  }),
  outbound: Object.freeze({
    listen: '127.0.0.1:15001',
    tokenHeader: 'authorization',
    unknownHosts: 'deny' as const,
    /** Long-lived tokens renew no later than this before `exp`. */
    refreshMarginSeconds: 60,
    audienceParam: 'resource' as const,
    authMethod: 'client_secret_basic' as const,
    subjectTokenType: 'urn:ietf:params:oauth:token-type:jwt',
    tokenRequestTimeoutSeconds: 10,
    retryMinSeconds: 1,
    retryMaxSeconds: 60,
    /** Retry ceiling while no valid token is held (calls are failing meanwhile). */
    retryMaxWithoutTokenSeconds: 5,
  }),
  admin: Object.freeze({ listen: '0.0.0.0:15020' }),
  log: Object.freeze({ level: 'info' as const }),
  limits: Object.freeze({
    /** Node's own default; a larger header block gets 431. */
    maxHeaderBytes: 16_384,
    maxHeaderCount: 100,
    /** Slowloris guard: the whole header block must arrive within this. */
    headersTimeoutSeconds: 10,
    /** Whole request (headers and body) from the client. 0 disables. */
    requestTimeoutSeconds: 300,
    keepAliveTimeoutSeconds: 5,
    /** Waiting for the upstream's response headers. */
    upstreamTimeoutSeconds: 30,
    upstreamConnectTimeoutSeconds: 5,
    /** Keep-alive connections per upstream origin. */
    upstreamConnections: 128,
    /**
     * Open tunnels (WebSocket, CONNECT) per listener; one more is refused with 503. Each holds two sockets and their
     * buffers, and they bypass `upstreamConnections`, so without a cap one caller (or the app) could hold any number.
     */
    maxTunnels: 1024,
    /** A tunnel with no bytes either way for this long is closed. 0 disables. */
    tunnelIdleTimeoutSeconds: 3600,
  }),
  lifecycle: Object.freeze({
    drainTimeoutSeconds: 20,
    /** Reload when a config file changes on disk. */
    watchConfig: true,
    /** How long a reload waits for new components (keys, tokens) before swapping them in anyway. */
    reloadWarmupSeconds: 10,
  }),
});
