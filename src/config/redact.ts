import { isPlainObject } from './interpolate.js';

/** What a redacted value reads as; a config holding it is refused (load.ts): it is validate's output fed back. */
export const REDACTED = '[redacted]';

/** Keys whose values are secrets and never printed (validate output, logs). */
const SECRET_KEYS = new Set(['clientSecret']);

/**
 * Names of extra form fields (`params`) and URL query parameters that carry a credential: their values are
 * redacted too. `params` is free-form, so it can carry a `client_secret` or an API key as easily as a `resource`,
 * and a URL a signed query (`sig=`, as Azure SAS URLs carry). A `key` word at the end of a name (`api_key`, `apikey`,
 * `subscription-key`, `Ocp-Apim-Subscription-Key`, `x-functions-key`), a `passphrase`, and `code` (an Azure Functions
 * key, an OAuth authorization code) too. Not more: a value printed as `[redacted]` makes validate's output a config
 * that is refused, so a name that is plainly no secret (`public_key`, `monkey`) is printed as written.
 */
const SECRET_NAME = /secret|passw|passphrase|pwd|token|assertion|credential|(^|[-_])key$|apikey$|private|authoriz|^auth$|signature|^sig$|^code$/i;
/** Names SECRET_NAME would take that hold nothing secret: redacted, validate's output would no longer load. */
const PLAIN_NAME = /^(public|idempotency)[-_]?key$/i;

/** Whether a form field or query parameter of this name carries a credential (see SECRET_NAME). */
export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name) && !PLAIN_NAME.test(name);
}

/**
 * A copy of the config with every secret value replaced by `[redacted]`: the
 * secret keys, the secret-looking entries of `params`, and the password and
 * secret-looking query values of any URL (`https://user:[redacted]@idp/token`).
 * Without the CA bundles loaded beside each `caFile` (`ca`): the path is what
 * the user wrote and what they want to see.
 */
export function redactConfig<T>(config: T): T {
  return walk(config) as T;
}

function walk(v: unknown, secretNames = false): unknown {
  if (typeof v === 'string') return redactUrl(v);
  if (Array.isArray(v)) return v.map((item) => walk(item));
  if (isPlainObject(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, val] of Object.entries(v)) {
      if (k === 'ca' && typeof v.caFile === 'string') continue;
      const secret = SECRET_KEYS.has(k) || (secretNames && isSecretName(k));
      out[k] = secret && val !== undefined ? REDACTED : walk(val, k === 'params');
    }
    return out;
  }
  return v;
}

/**
 * An http(s) URL with its password and the secret-looking values of its query and fragment redacted; any other string
 * as it is. The config's endpoints refuse a fragment (it is never sent), but a free-form value may hold one
 * (`#access_token=...`, pasted from a browser). A plain fragment (`#tenant`, in an issuer or a claim value) stays.
 */
function redactUrl(s: string): string {
  if (!/^https?:\/\//i.test(s) || !URL.canParse(s)) return s;
  const u = new URL(s);
  let changed = false;
  if (u.password) {
    u.password = REDACTED;
    changed = true;
  }
  if (u.hash) {
    const hash = u.hash.replace(/([#&])([^=&#]+)=([^&]*)/g, (pair, sep: string, name: string) => (isSecretName(safeDecode(name)) ? `${sep}${name}=${REDACTED}` : pair));
    if (hash !== u.hash) {
      u.hash = hash;
      changed = true;
    }
  }
  for (const name of [...u.searchParams.keys()]) {
    if (isSecretName(name)) {
      u.searchParams.set(name, REDACTED);
      changed = true;
    }
  }
  // Only a URL that held a secret is rewritten (URL serialisation would otherwise respell what the user wrote), and
  // the marker is shown as written rather than percent-encoded.
  return changed ? u.href.replaceAll(encodeURIComponent(REDACTED), REDACTED) : s;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
