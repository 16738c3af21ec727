import type { Dispatcher } from 'undici';
import { capped } from '../log.js';
import { IdpHttpError, requestJson, shownUrl } from './http.js';

/** The longest part of a discovery document's own `issuer` an error quotes: the document can hold any text there. */
const MAX_SHOWN_ISSUER = 256;

/** The subset of OpenID Provider Metadata (OIDC Discovery 1.0 §3) the sidecar uses. */
export interface ProviderMetadata {
  issuer: string;
  jwks_uri: string;
  token_endpoint?: string;
  [key: string]: unknown;
}

/** `{issuer}/.well-known/openid-configuration` (OIDC Discovery §4.1: appended, keeping any path). */
export function discoveryUrl(issuer: string): string {
  return `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
}

/**
 * True when `url` is not https although `issuer` is: following it would fetch
 * keys, or send client credentials, in cleartext on the word of a TLS-protected
 * issuer (OIDC Discovery §3 requires https for these URLs). Checked for every
 * configured and discovered `jwks_uri` and `token_endpoint`.
 */
export function downgradesToCleartext(issuer: string, url: string): boolean {
  if (!URL.canParse(issuer) || new URL(issuer).protocol !== 'https:') return false;
  return !URL.canParse(url) || new URL(url).protocol !== 'https:';
}

/**
 * Fetches and checks the issuer's metadata. The `issuer` it returns must be
 * exactly the configured one (OIDC Discovery §4.3), otherwise a compromised
 * or misconfigured endpoint could point us at someone else's keys; an https
 * issuer's `jwks_uri` must be https too.
 */
export async function discover(issuer: string, dispatcher: Dispatcher, timeoutMs: number): Promise<ProviderMetadata> {
  const url = discoveryUrl(issuer);
  const res = await requestJson(dispatcher, url, { timeoutMs });
  if (res.status !== 200) {
    throw new IdpHttpError('discovery_failed', `${shownUrl(url)}: HTTP ${res.status}`, res.status, res.body, { retryAfter: res.headers['retry-after'] });
  }
  const meta = res.body as Partial<ProviderMetadata> | undefined;
  if (!meta || typeof meta !== 'object') throw new IdpHttpError('discovery_failed', `${shownUrl(url)}: not a JSON object`);
  if (meta.issuer !== issuer) {
    throw new IdpHttpError('discovery_failed', `${shownUrl(url)}: metadata names issuer "${capped(String(meta.issuer), MAX_SHOWN_ISSUER)}", expected exactly "${issuer}"`);
  }
  if (typeof meta.jwks_uri !== 'string' || !/^https?:\/\//.test(meta.jwks_uri)) {
    throw new IdpHttpError('discovery_failed', `${shownUrl(url)}: no usable jwks_uri`);
  }
  if (downgradesToCleartext(issuer, meta.jwks_uri)) {
    throw new IdpHttpError('discovery_failed', `${shownUrl(url)}: jwks_uri ${shownUrl(meta.jwks_uri)} is not https although the issuer is; keys are never fetched over cleartext`);
  }
  return meta as ProviderMetadata;
}
