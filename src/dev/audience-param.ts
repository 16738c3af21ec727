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
 * absolute URI both become `resource=<URN>`. Everything else is kept as sent.
 */
export function normalizeTokenForm(body: string): string {
  const form = new URLSearchParams(body);
  const resources = [...form.getAll('resource'), ...form.getAll('audience')];
  if (resources.length === 0) return body;
  form.delete('resource');
  form.delete('audience');
  for (const r of resources) form.append('resource', resourceForAudience(r));
  return form.toString();
}

/** Token request bodies above this are refused by oidc-provider anyway (it caps at 56 KiB). */
const MAX_FORM_BYTES = 64 * 1024;

/**
 * Reads a urlencoded token request, rewrites its audience parameters and
 * returns an equivalent request to hand to the provider. Any other request is
 * returned as is. Resolves undefined when the body is too large (the caller answers 413).
 */
export async function withNormalizedAudience(req: IncomingMessage, tokenPath: string): Promise<IncomingMessage | undefined> {
  const path = (req.url ?? '').split('?')[0];
  const isForm = (req.headers['content-type'] ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded');
  if (req.method !== 'POST' || path !== tokenPath || !isForm) return req;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_FORM_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  const body = Buffer.from(normalizeTokenForm(Buffer.concat(chunks).toString('utf8')), 'utf8');
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
