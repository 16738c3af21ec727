import { IncomingMessage } from 'node:http';

/**
 * oidc-provider accepts only absolute URIs as resource indicators (RFC 8707
 * §2), while sidecar routes name audiences like `payments`. A bare audience is
 * carried through the provider as this URN and turned back into the bare name
 * in the token's `aud`.
 */
export const AUDIENCE_URN_PREFIX = 'urn:oidc-sidecar:audience:';

/** The resource indicator oidc-provider sees for an audience value (absolute URIs pass unchanged). */
export function resourceForAudience(audience: string): string {
  return URL.canParse(audience) ? audience : `${AUDIENCE_URN_PREFIX}${encodeURIComponent(audience)}`;
}

/** The `aud` a token for this resource indicator carries. */
export function audienceForResource(resource: string): string {
  return resource.startsWith(AUDIENCE_URN_PREFIX) ? decodeURIComponent(resource.slice(AUDIENCE_URN_PREFIX.length)) : resource;
}

/**
 * Rewrites a token request form: `audience=X` (the parameter many IdPs use,
 * e.g. Auth0, Okta; also RFC 8693 §2.1) and a `resource` that is not an
 * absolute URI both become `resource=<URN>`. Everything else is kept as sent. Undefined when one of them is empty or
 * blank (`audience=$AUD` with AUD unset): as a URN that was a token for the audience "" or " ", and the provider
 * itself drops an empty `resource`, which gave a client with a default audience its default instead.
 */
export function normalizeTokenForm(body: string): string | undefined {
  const form = new URLSearchParams(body);
  const resources = [...form.getAll('resource'), ...form.getAll('audience')];
  if (resources.length === 0) return body;
  if (resources.some((r) => r.trim() === '')) return undefined;
  form.delete('resource');
  form.delete('audience');
  for (const r of resources) form.append('resource', resourceForAudience(r));
  return form.toString();
}

/**
 * Whether a request path reaches the token endpoint at `tokenPath`: oidc-provider's router takes it in any letter
 * case and with a trailing slash (`/Token`, `/token/`), and a request it routes there unrewritten would have its
 * `audience` ignored (a client's default given instead) or refused.
 */
function isTokenPath(path: string, tokenPath: string): boolean {
  return path.toLowerCase().replace(/\/$/, '') === tokenPath.toLowerCase();
}

/** The path of a request target, origin-form (`/token?x`) or absolute-form (`http://host/token`), as a router reads it. */
function requestPath(target: string): string {
  return URL.canParse(target) ? new URL(target).pathname : target.split('?')[0]!;
}

/** Token request bodies above this are refused by oidc-provider anyway (it caps at 56 KiB). */
const MAX_FORM_BYTES = 64 * 1024;

/** A token request answered without the provider: status and OAuth error body (RFC 6749 §5.2). */
export interface TokenRefusal {
  status: number;
  body: { error: string; error_description: string };
}

/**
 * Reads a urlencoded token request, rewrites its audience parameters and
 * returns an equivalent request to hand to the provider. Any other request is
 * returned as is. Resolves to a refusal for a body that is too large, or an empty audience.
 */
export async function withNormalizedAudience(req: IncomingMessage, tokenPath: string): Promise<IncomingMessage | TokenRefusal> {
  const isForm = (req.headers['content-type'] ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded');
  if (req.method !== 'POST' || !isTokenPath(requestPath(req.url ?? '/'), tokenPath) || !isForm) return req;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_FORM_BYTES) return { status: 413, body: { error: 'invalid_request', error_description: 'request body too large' } };
    chunks.push(chunk as Buffer);
  }
  const form = normalizeTokenForm(Buffer.concat(chunks).toString('utf8'));
  if (form === undefined) return { status: 400, body: { error: 'invalid_target', error_description: 'the audience (or resource) is empty' } };
  const body = Buffer.from(form, 'utf8');
  // A fresh IncomingMessage on the same socket: the provider reads it like the original
  // (headers, peer address), with the rewritten body and a matching content-length.
  const copy = new IncomingMessage(req.socket);
  copy.method = req.method;
  copy.url = req.url!;
  // Where the issuer is served under a path (issuer.ts), the full URL the provider writes its endpoint URLs from.
  const { originalUrl } = req as IncomingMessage & { originalUrl?: string };
  if (originalUrl !== undefined) (copy as IncomingMessage & { originalUrl?: string }).originalUrl = originalUrl;
  copy.httpVersion = req.httpVersion;
  copy.httpVersionMajor = req.httpVersionMajor;
  copy.httpVersionMinor = req.httpVersionMinor;
  copy.headers = { ...req.headers, 'content-length': String(body.length) };
  delete copy.headers['transfer-encoding'];
  copy.rawHeaders = Object.entries(copy.headers).flatMap(([k, v]) => [k, Array.isArray(v) ? v.join(', ') : String(v)]);
  copy.complete = true;
  copy.push(body);
  copy.push(null);
  return copy;
}
