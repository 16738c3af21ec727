import type { TokenRequest } from './types.js';

export type AudienceParam = 'resource' | 'audience' | 'none';

/**
 * The form fields every OAuth source sends besides its grant: extra `params`
 * first, then the audience and scopes, so config `params` can add fields but
 * never silently replace the grant or the audience binding.
 *
 * - `resource`: RFC 8707 §2 resource indicator (Keycloak, oidc-provider, RFC 8693 §2.1).
 * - `audience`: the Auth0 / RFC 8693 logical name.
 * - `none`: audience expressed by scopes only (Azure AD/Entra `api://…/.default`).
 */
export function oauthForm(
  grantType: string,
  req: TokenRequest,
  audienceParam: AudienceParam,
  params: Readonly<Record<string, string>> | undefined,
): URLSearchParams {
  const form = new URLSearchParams();
  for (const [k, v] of Object.entries(params ?? {})) form.set(k, v);
  form.set('grant_type', grantType);
  if (audienceParam !== 'none') form.set(audienceParam, req.audience);
  // RFC 6749 §3.3: scopes are space-delimited.
  if (req.scopes.length > 0) form.set('scope', req.scopes.join(' '));
  return form;
}

/** The audience the form names, which the issued token must then be for; undefined with `none` (the IdP decides). */
export function askedAudience(req: TokenRequest, audienceParam: AudienceParam): string | undefined {
  return audienceParam === 'none' ? undefined : req.audience;
}
