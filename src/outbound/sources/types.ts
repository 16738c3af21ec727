import type { Dispatcher } from 'undici';
import type { Clock } from '../../clock.js';
import type { TokenSourceConfig } from '../../config/schema.js';

/** What a token is requested for: the called service's audience and optional scopes. */
export interface TokenRequest {
  audience: string;
  /** Sorted and de-duplicated by the caller; empty = none requested. */
  scopes: readonly string[];
}

/** A token as a source hands it over. Times are milliseconds since the epoch. */
export interface IssuedToken {
  token: string;
  expiresAt: number;
  /** The JWT's `jti`, for audit logs (never the token itself). */
  jti?: string;
  /** The JWT's `iss`, for audit logs: who issued the token we send (absent for an opaque token). */
  issuer?: string;
  /** Ask the cache to call the source again by this time, even if the token is young (file sources re-read at least every minute). */
  recheckAt?: number;
}

/** One way of getting tokens; every type in SPEC "Token sources" implements it. */
export interface TokenSource {
  readonly kind: TokenSourceConfig['type'];
  /**
   * The source hands over tokens issued elsewhere (a file the kubelet writes, a variable the CI runner set) rather
   * than asking an IdP: reading the token it already gave again is no issuance and no request, so it is neither
   * announced nor counted.
   */
  readonly readsIssuedTokens?: true;
  /** What its requests are made with that its config as written does not show: see ClientAuth.credentialDigest. */
  readonly credentialDigest?: string;
  /** Resolves with a fresh token or rejects with a TokenUnavailableError. */
  fetch(req: TokenRequest): Promise<IssuedToken>;
  /**
   * Sources whose token can change under them (a file): calls `onChange` when what `fetch` returns for `req` may
   * have changed, until the returned function is called. Unref'd timers only. Absent: the token changes only when
   * fetched.
   */
  watch?(req: TokenRequest, onChange: () => void): () => void;
  /** Releases connections and stops every watch; in-flight fetches may fail afterwards. */
  close(): Promise<void>;
}

/** Everything a source is built with: injected, never global. */
export interface SourceDeps {
  clock: Clock;
  /** Where the env and github_actions sources read their documented variables (at fetch time). */
  env: NodeJS.ProcessEnv;
  /** Bound on one IdP exchange (ms). */
  timeoutMs: number;
  /** The source's key path in the config (`outbound.routes.0.tokenSource`), for errors about its files. */
  configPath: string;
  /** Overrides the IdP dispatcher (tests and embedders); the source closes only dispatchers it created. */
  dispatcher?: Dispatcher;
}
