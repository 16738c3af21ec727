import { isSecretName } from '../../config/redact.js';
import { maskJwts } from '../../log.js';

/** Credentials shorter than this are masked only where they stand alone: see withoutSecrets. */
const SHORT_SECRET_LENGTH = 4;

/** What one token request carried that an answer quoting it must not repeat. */
export interface SentSecrets {
  /** Every spelling of a credential as sent, masked where it appears whole. */
  readonly whole: readonly string[];
  /** The credentials themselves, masked in pieces too (withoutPieces): not the Basic value or pair, whose pieces would also be the client id's. */
  readonly pieces: readonly string[];
}

/**
 * The credentials one token request carries, for masking an answer that quotes them: the values of the form's
 * credential fields (`client_secret`, `client_assertion`, `subject_token`, `actor_token`, and any secret-looking
 * field from `params`), the `Authorization` header, with a Basic pair's secret decoded too, and every value of the
 * endpoint URL's query (`/token?api_key=…`): the sidecar never shows that query itself (shownUrl), so an IdP or a
 * gateway quoting the request target back must not show it either.
 */
export function sentSecrets(form: URLSearchParams, headers: Readonly<Record<string, string>>, endpoint?: string): SentSecrets {
  const credentials: string[] = [];
  const spellings: string[] = [];
  // `subject_token_type` and the like name a kind of token; their values are URNs, not credentials.
  for (const [name, value] of form) if (isSecretName(name) && !name.endsWith('_type')) credentials.push(value);
  const query = endpoint !== undefined && URL.canParse(endpoint) ? new URL(endpoint).search.slice(1) : '';
  if (query !== '') {
    spellings.push(query);
    for (const value of new URLSearchParams(query).values()) credentials.push(value);
  }
  const authorization = headers.authorization;
  if (authorization) {
    spellings.push(authorization);
    const basic = /^basic\s+(\S+)/i.exec(authorization)?.[1];
    if (basic) {
      const pair = Buffer.from(basic, 'base64').toString('utf8');
      const secret = pair.slice(pair.indexOf(':') + 1);
      spellings.push(basic, pair);
      credentials.push(secret, formDecode(secret));
    }
  }
  const given = (s: string) => s.length > 0;
  return { whole: [...credentials, ...spellings].filter(given), pieces: credentials.filter(given) };
}

/**
 * `text` (an IdP's `error_description`, say) with every credential of the request it answers masked, in each
 * spelling an IdP echoing the request back would use (as sent, form-encoded, percent-encoded), and any JWT-like
 * text (a header or payload segment alone is enough to leak a token) masked: SPEC says a secret never reaches a
 * log line, and this text does, and the app's 503 body too. Mask before cutting, so a cut cannot split a secret.
 * A credential of any length is masked: one shorter than four characters (a weak secret, but still the secret)
 * wherever no letter or digit touches it on either side, which is how an echoed request shows it (`client_secret=ab&`,
 * `'ab'`), rather than everywhere, which would mask letters of every word ("s" in "invalid_scope").
 */
export function withoutSecrets(text: string, secrets: SentSecrets): string {
  const spellings = new Set<string>();
  for (const s of secrets.whole) for (const v of [s, new URLSearchParams({ v: s }).toString().slice(2), encodeURIComponent(s), s.replaceAll(' ', '+')]) spellings.add(v);
  let out = text;
  // Longest first, so a secret that contains another is masked whole.
  for (const s of [...spellings].sort((a, b) => b.length - a.length)) {
    out = s.length >= SHORT_SECRET_LENGTH ? out.split(s).join('[redacted]') : out.replace(standingAlone(s), '[redacted]');
  }
  return maskJwts(withoutPieces(out, secrets.pieces));
}

/** How long a run of a credential's characters must be for withoutPieces to mask it. */
const PIECE_LENGTH = 8;

/**
 * `text` with every run of PIECE_LENGTH or more characters of a credential masked, in any letter case: an IdP or a
 * gateway that quotes the request shortened (`secret is Sup3r:Secr…`) or re-cased would otherwise pass part of it on.
 * Masking a common word that happens to be in a secret is the price, and it only ever hides text.
 */
function withoutPieces(text: string, secrets: readonly string[]): string {
  const lower = text.toLowerCase();
  // A case mapping that changes the length (some non-ASCII letters) would shift every position found below.
  if (lower.length !== text.length) return text;
  const masked = new Uint8Array(text.length);
  let any = false;
  for (const secret of secrets) {
    const s = secret.toLowerCase();
    for (let i = 0; i + PIECE_LENGTH <= s.length; i++) {
      const piece = s.slice(i, i + PIECE_LENGTH);
      for (let at = lower.indexOf(piece); at !== -1; at = lower.indexOf(piece, at + 1)) {
        masked.fill(1, at, at + PIECE_LENGTH);
        any = true;
      }
    }
  }
  if (!any) return text;
  let out = '';
  for (let i = 0; i < text.length; i++) {
    if (masked[i] !== 1) out += text[i];
    else if (i === 0 || masked[i - 1] !== 1) out += '[redacted]';
  }
  return out;
}

/** Every occurrence of `s` with no letter or digit right before or after it. */
function standingAlone(s: string): RegExp {
  return new RegExp(`(?<![A-Za-z0-9])${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?![A-Za-z0-9])`, 'g');
}

function formDecode(s: string): string {
  try {
    return decodeURIComponent(s.replaceAll('+', ' '));
  } catch {
    return s;
  }
}
