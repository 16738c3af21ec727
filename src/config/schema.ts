import { isIPv6 } from 'node:net';
import * as z from '../zod.js';
import type { CaBundle } from './ca-bundle.js';
import { DEFAULTS } from './defaults.js';
import { compileGlob } from '../inbound/matcher.js';
import { SPACE_DELIMITED } from '../inbound/policy.js';
import { downgradesToCleartext } from '../oidc/discovery.js';
import { canonicalHost } from '../outbound/canonical-host.js';
import { parseAuthority, routeKey } from '../outbound/router.js';
import { isFileName } from '../outbound/sources/file.js';
import { CLIENT_INFO_HEADERS, cgiSpelling, isHopByHop } from '../proxy/headers.js';
import { MAX_TIMER_MS } from '../scheduler.js';

/**
 * The config schema: the single source for validation, defaults, TypeScript
 * types and the JSON Schema that `oidc-sidecar schema` prints. Every object is
 * strict, because a typo such as `rule:` for `rules:` must not silently turn a
 * security check off.
 */

const seconds = (what: string) => z.number().nonnegative().describe(`${what} (seconds)`);

/**
 * The longest timeout or interval a Node timer can hold, in seconds: 2^31 - 1 ms, about 24.8 days, less the second
 * Node 22 and later add to the keep-alive timeout (`keepAliveTimeoutBuffer`). Node turns a longer one into 1 ms (with
 * only a TimeoutOverflowWarning), so a keep-alive timeout of a month would close every idle connection at once, and a
 * drain timeout of a month would cut every request at SIGTERM.
 */
export const MAX_TIMER_SECONDS = Math.floor(MAX_TIMER_MS / 1000) - 1;
const fitsTimer = <T extends z.ZodNumber>(n: T) => n.max(MAX_TIMER_SECONDS, `must be at most ${MAX_TIMER_SECONDS} (about 24.8 days, the longest timer Node can set)`);
const positiveInt = z.number().int().positive();

/** The most verified tokens `inbound.cache.maxEntries` may keep; the default is 10,000. */
export const MAX_CACHE_ENTRIES = 1_000_000;

/** `host:port`, `:port` or `[v6]:port`; port 0 picks a free port (tests). */
export const listenAddress = z
  .string()
  // `abort`: a value of the wrong form gets this one message, not also "port must be 0-65535" for a port of "abc".
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):\d{1,5}$/, { message: 'must be "host:port", e.g. "0.0.0.0:15006"', abort: true })
  .superRefine((s, ctx) => {
    // A bracketed host that is no IPv6 address (`[1.2.3.4]`, `[:::]`) passed `validate` and stopped `run` with
    // ENOTFOUND. Unbracketed hosts are left to the resolver: `127.1` and `0` bind as 127.0.0.1 and 0.0.0.0.
    const [, v6, port] = /^(?:\[(.*)\]|.*):(\d+)$/.exec(s)!;
    if (v6 !== undefined && !isIPv6(v6)) ctx.addIssue({ code: 'custom', message: `"[${v6}]" is not an IPv6 address; write an IPv4 address or host name without brackets` });
    if (Number(port) > 65535) ctx.addIssue({ code: 'custom', message: 'port must be 0-65535' });
  });

// undici sends no `user:password@` of a URL (nor does fetch): a token endpoint, JWKS or discovery URL written with one
// was asked without those credentials, and failed as if the IdP refused them. Refused here, where it is clear why.
const NO_USERINFO = 'must not hold a user name or password (user:password@): the sidecar would not send them (a token source authenticates with clientSecret or privateKeyFile)';
function hasNoUserinfo(s: string): boolean {
  return !URL.canParse(s) || (new URL(s).username === '' && new URL(s).password === '');
}

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

/** The URL parser drops spaces at the edges, so "https://idp.example.com " parses: as an issuer it never equals a token's iss. */
const NO_EDGE_SPACE = 'must not begin or end with whitespace';
const hasNoEdgeSpace = (s: string) => s === s.trim();

const httpUrl = z
  .string()
  .refine(isHttpUrl, 'must be an absolute http(s) URL')
  .refine(hasNoEdgeSpace, NO_EDGE_SPACE)
  .refine(hasNoUserinfo, NO_USERINFO)
  // A fragment is never sent: `validate` would print an endpoint the sidecar does not use as written.
  .refine((s) => !s.includes('#'), 'must not have a fragment (#...): it is never sent with a request');

/**
 * Where a listener forwards to. A request's own path and query are put after the target's path, so a query in the
 * target would be dropped at run time while `validate` printed it as if it applied: refused here (a fragment, as in
 * every configured URL, by httpUrl).
 */
const proxyTarget = httpUrl.refine(
  (s) => !s.includes('?'),
  "must not have a query (?...): each request's own path and query go after the target's path, and it would be dropped",
);

const isText = (v: unknown) => typeof v === 'string' && v !== '';
const stringOrList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)], {
  error: z.unionMessage('a string or a non-empty list of strings', isText),
});

/** Asymmetric JWS algorithms only: `none` and HS* are not even expressible (RFC 8725 §3.1, CVE-2015-9235). */
export const ALGORITHMS = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA', 'Ed25519',
] as const;

/**
 * Identity and token header names may hold letters, digits and `-` only: a name with other punctuation has a
 * cgiSpelling, another name a CGI-style app reads as the same variable (`X_Token`, `X.Token` and `X-Token` are one
 * HTTP_X_TOKEN), which the sidecar could not tell from its own (a forged copy beside a kept token, two identity
 * values read as one).
 */
const isPlainHeaderName = (name: string) => cgiSpelling(name.toLowerCase()) === undefined;
const PUNCTUATED_NAME_MESSAGE =
  'must be letters, digits and "-" only: CGI-style apps read "_" and other punctuation as "-" (HTTP_X_PEER_SUB), so another spelling would reach the app as the same header';

/** A token header name (see isPlainHeaderName). */
const headerName = z
  .string()
  .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name')
  .refine(isPlainHeaderName, PUNCTUATED_NAME_MESSAGE)
  .transform((s) => s.toLowerCase());

/**
 * Headers a token cannot travel in between sidecars (`outbound.tokenHeader` sends it, `inbound.tokenHeader` reads it), besides the hop-by-hop ones (and any `Proxy-*`), which are never
 * forwarded past a proxy: framing headers (undici refuses them, so every call failed 502), `Host` (the call's
 * routing, and the token would land in every access log), `Expect` (never forwarded), the `X-Forwarded-*` headers
 * the sidecar writes itself, and `Cookie`, the app's own session, which would be dropped for the token.
 */
const RESERVED_TOKEN_HEADERS = new Set(['host', 'content-length', 'expect', 'cookie', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);

const tokenHeaderName = headerName.superRefine((name, ctx) => {
  if (RESERVED_TOKEN_HEADERS.has(name) || isHopByHop(name)) {
    ctx.addIssue({ code: 'custom', message: `"${name}" cannot carry the token between sidecars (HTTP framing, connection, routing or the app's own header); use authorization or e.g. x-workload-token` });
  }
});

const issuerSchema = z
  .strictObject({
    issuer: z.string().min(1).refine(hasNoUserinfo, NO_USERINFO).refine(hasNoEdgeSpace, `${NO_EDGE_SPACE}: a token's iss is compared exactly`).describe('Exact `iss` value; discovery at {issuer}/.well-known/openid-configuration'),
    jwksUri: httpUrl.optional().describe('Skip discovery and fetch keys from here (https when the issuer is https)'),
    algorithms: z.array(z.enum(ALGORITHMS)).min(1).default([...DEFAULTS.inbound.algorithms]),
    audience: stringOrList.optional().describe('Overrides inbound.audience for tokens of this issuer'),
    caFile: z.string().min(1).optional().describe('PEM CA bundle for an IdP behind a private CA; read when the config loads'),
  })
  .superRefine((i, ctx) => {
    // Without jwksUri the issuer is where the keys are discovered; an issuer that is no URL (`idp.example.com`) only
    // failed at run time, every key fetch "Invalid URL" and /readyz 503 for good. With jwksUri any exact iss will do.
    if (i.jwksUri === undefined && !isHttpUrl(i.issuer)) {
      ctx.addIssue({ code: 'custom', message: 'must be an absolute http(s) URL: the keys are discovered at {issuer}/.well-known/openid-configuration (an issuer that is no URL needs jwksUri)', path: ['issuer'] });
    } else if (i.jwksUri === undefined && /[?#]/.test(i.issuer)) {
      // OpenID Connect Discovery 1.0 §3: an issuer has no query or fragment; appending the well-known path to one
      // would ask another URL (`…#x/.well-known/…` is the issuer's root).
      ctx.addIssue({ code: 'custom', message: 'must not have a query or fragment: the keys are discovered at {issuer}/.well-known/openid-configuration (or give jwksUri)', path: ['issuer'] });
    }
    // Keys fetched over cleartext can be swapped on the way: an https issuer's keys come over https too. A jwksUri the
    // operator wrote for this host's loopback (a node-local agent or key mirror) never crosses a network.
    if (i.jwksUri !== undefined && downgradesToCleartext(i.issuer, i.jwksUri) && !isLoopbackUrl(i.jwksUri)) {
      ctx.addIssue({ code: 'custom', message: 'must be an https URL: the issuer is https, and keys fetched over http could be replaced on the way (http is allowed on loopback only: 127.0.0.1, [::1], localhost)', path: ['jwksUri'] });
    }
  });

/** An http(s) URL whose host is this machine's loopback: 127.0.0.0/8, [::1] or localhost. */
function isLoopbackUrl(url: string): boolean {
  if (!URL.canParse(url)) return false;
  const host = new URL(url).hostname;
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

const isScalar = (v: unknown) => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
const CLAIM_VALUE = 'a string, number or boolean, or a non-empty list of them';
/**
 * A number in a claim rule. YAML reads numbers as doubles, so a whole number past 2^53 (an unquoted numeric ID,
 * `google_sub: 112233445566778899001`) has already lost digits by the time it is checked: the rule would match a
 * different ID, or (as most such IDs are strings in a token) none. Refused, with the fix.
 */
const claimNumber = z
  .number()
  .refine((n) => !Number.isInteger(n) || Number.isSafeInteger(n), 'a whole number this large loses digits (past 2^53); quote it ("...") to match the claim as a string');
const claimValue = z.union([z.string(), claimNumber, z.boolean(), z.array(z.union([z.string(), claimNumber, z.boolean()], { error: z.unionMessage(CLAIM_VALUE, isScalar) })).min(1)], {
  error: z.unionMessage(CLAIM_VALUE, isScalar),
});

const allowEntrySchema = z
  .strictObject({
    sub: stringOrList.optional(),
    iss: stringOrList.optional(),
    azp: stringOrList.optional(),
    client_id: stringOrList.optional(),
    claims: z
      .record(z.string().min(1), claimValue)
      // `claims: {}` (say a template's empty map) would be an entry with nothing to check, which every verified token matches.
      .refine((c) => Object.keys(c).length > 0, 'needs at least one claim: an empty map checks nothing, so the entry would allow every valid token')
      .superRefine((c, ctx) => {
        // A scope value is read as the token's is, a list of scopes split at spaces: a blank one names none, and
        // "all of none" would be granted to every token.
        for (const name of Object.keys(c).filter((n) => SPACE_DELIMITED.has(n))) {
          const values = Array.isArray(c[name]) ? c[name] : [c[name]];
          if (values.some((v) => typeof v === 'string' && v.trim() === '')) {
            ctx.addIssue({ code: 'custom', path: [name], message: 'names no scope: a scope value is one or more scopes separated by spaces' });
          }
        }
      })
      .optional(),
  })
  .refine((e) => Object.values(e).some((v) => v !== undefined), 'an allow entry needs at least one of sub, iss, azp, client_id, claims');

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT'] as const;

const ruleSchema = z
  .strictObject({
    match: z.strictObject({
      path: z
        .string()
        // A regex, not .startsWith(): that becomes `format: starts_with` in the JSON Schema, which no validator knows (ajv refuses to compile it).
        .regex(/^\//, 'must start with "/"')
        .superRefine((glob, ctx) => {
          // The same compilation the inbound matcher does, so `validate` catches a glob no request path could match.
          if (!glob.startsWith('/')) return;
          try {
            compileGlob(glob);
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: (err as Error).message });
          }
        })
        .describe('Glob: * matches one segment, ** any number'),
      methods: z
        .array(z.string().transform((m) => m.toUpperCase()).pipe(z.enum(METHODS)))
        .min(1)
        .optional()
        .describe('Default: every method'),
    }),
    public: z.boolean().default(false).describe('No token needed on this route'),
    allow: z.array(allowEntrySchema).min(1).optional().describe('Any entry matching allows; every key of an entry must match'),
  })
  .refine((r) => r.public || r.allow !== undefined, {
    message: 'a rule needs `public: true` or an `allow` list',
    path: ['allow'],
  })
  .refine((r) => !(r.public && r.allow), { message: 'a public rule takes no `allow` list', path: ['public'] });

/**
 * Headers that frame the message (`expect` too: undici refuses it, so every allowed request failed 502), carry the
 * caller's own credentials, or that the sidecar writes itself (X-Forwarded-*): never an identity header. Hop-by-hop
 * headers (and any `Proxy-*`), which belong to one connection, are refused too (isHopByHop).
 */
const RESERVED_FORWARD_HEADERS = new Set(['host', 'content-length', 'expect', 'cookie', 'authorization', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);

/** A header the sidecar sets for the app: not a reserved name, and letters, digits and `-` only (see isPlainHeaderName). */
const checkedForwardHeaderName = z
  .string()
  .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name')
  .superRefine((name, ctx) => {
    const lower = name.toLowerCase();
    if (RESERVED_FORWARD_HEADERS.has(lower) || isHopByHop(lower)) {
      ctx.addIssue({ code: 'custom', message: `"${lower}" is reserved (HTTP framing, connection, credentials or the sidecar's own X-Forwarded-*); name identity headers e.g. x-peer-*` });
    }
    if (!isPlainHeaderName(lower)) ctx.addIssue({ code: 'custom', message: PUNCTUATED_NAME_MESSAGE });
  });
const forwardHeaderName = checkedForwardHeaderName.transform((s) => s.toLowerCase());
// Header names take their defaults with `prefault` (a default input, parsed like one written) rather than `default`:
// the JSON Schema is of the input, and zod leaves a transformed field's `default` out of it, so editors showed none.

const forwardSchema = z
  .strictObject({
    subjectHeader: forwardHeaderName.prefault(DEFAULTS.inbound.forward.subjectHeader),
    issuerHeader: forwardHeaderName.prefault(DEFAULTS.inbound.forward.issuerHeader),
    claimsHeader: forwardHeaderName.prefault(DEFAULTS.inbound.forward.claimsHeader),
    // Keys as written, so two spellings of one name can be told apart below; lower-cased after that.
    claimHeaders: z.record(checkedForwardHeaderName, z.string().min(1)).default({}).describe('header name -> claim name'),
    keepToken: z.boolean().default(DEFAULTS.inbound.forward.keepToken),
  })
  .superRefine((f, ctx) => {
    // Header names are case-insensitive: two identity values under one name would reach the app as one header whose
    // value depends on which the sidecar wrote last, or as a list the app does not expect.
    const owner = new Map<string, string>();
    for (const key of ['subjectHeader', 'issuerHeader', 'claimsHeader'] as const) {
      const taken = owner.get(f[key]);
      if (taken) ctx.addIssue({ code: 'custom', message: `"${f[key]}" is already set by ${taken}`, path: [key] });
      else owner.set(f[key], `inbound.forward.${key}`);
    }
    for (const name of Object.keys(f.claimHeaders)) {
      const lower = name.toLowerCase();
      const taken = owner.get(lower);
      if (taken) ctx.addIssue({ code: 'custom', message: `"${lower}" is already set by ${taken}`, path: ['claimHeaders', name] });
      else owner.set(lower, `inbound.forward.claimHeaders.${name}`);
    }
  })
  .transform((f) => ({ ...f, claimHeaders: Object.fromEntries(Object.entries(f.claimHeaders).map(([name, claim]) => [name.toLowerCase(), claim])) }))
  .prefault({});

const tlsSchema = z.strictObject({
  certFile: z.string().min(1),
  keyFile: z.string().min(1),
});

/**
 * The shortest `jwks.maxStaleSeconds` (seconds) that lets keys outlive the next scheduled refresh and one retry after
 * it (the key store retries after retryMinSeconds, never later than the refresh interval), each attempt taking up to
 * two requests (discovery and JWKS) of timeoutSeconds each.
 */
export function minMaxStaleSeconds(j: { refreshIntervalSeconds: number; timeoutSeconds: number; retryMinSeconds: number }): number {
  const attempt = 2 * j.timeoutSeconds;
  return j.refreshIntervalSeconds + attempt + Math.min(j.retryMinSeconds, j.refreshIntervalSeconds) + attempt;
}

/** A duration for a message: at most three decimals, so 0.1 + 0.2 reads 0.3. */
const secondsText = (s: number) => String(Math.round(s * 1000) / 1000);

const inboundSchema = z
  .strictObject({
    listen: listenAddress.default(DEFAULTS.inbound.listen),
    target: proxyTarget.describe('The app, e.g. http://127.0.0.1:8080'),
    audience: stringOrList.describe("The token's aud must contain one of these"),
    issuers: z
      .array(issuerSchema)
      .min(1, 'at least one trusted issuer is required')
      .superRefine((list, ctx) => {
        // A token's iss picks its entry by exact match (authenticator, key store): of two entries for one issuer the
        // last silently won, while both were fetched and a dead jwksUri in the ignored one kept /readyz 503. Compared
        // exactly as iss is, so "https://idp/" and "https://idp" stay two issuers, as they are to a token.
        const first = new Map<string, number>();
        list.forEach((entry, i) => {
          const at = first.get(entry.issuer);
          if (at === undefined) first.set(entry.issuer, i);
          else {
            ctx.addIssue({
              code: 'custom',
              path: [i, 'issuer'],
              message: `"${entry.issuer}" is already trusted by inbound.issuers.${at}: one entry per issuer (a token's iss selects exactly one); give that entry every audience, as a list`,
            });
          }
        });
      }),
    clockSkewSeconds: seconds('Allowed clock difference for exp/nbf/iat').max(300).default(DEFAULTS.inbound.clockSkewSeconds),
    maxTokenLifetimeSeconds: z.number().positive().optional().describe('Reject tokens whose exp - iat is longer'),
    requiredClaims: z.array(z.string().min(1)).optional().describe('Claims every token must carry'),
    typ: z.string().min(1).optional().describe('Required JWT `typ` header, e.g. at+jwt (RFC 9068)'),
    tokenHeader: tokenHeaderName.prefault(DEFAULTS.inbound.tokenHeader),
    maxTokenBytes: positiveInt.default(DEFAULTS.inbound.maxTokenBytes),
    jwks: z
      .strictObject({
        refreshIntervalSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.inbound.jwks.refreshIntervalSeconds),
        maxStaleSeconds: z.number().positive().default(DEFAULTS.inbound.jwks.maxStaleSeconds),
        cooldownSeconds: fitsTimer(seconds('Minimum gap between unknown-kid refetches'))
          .min(1, 'must be at least 1: with 0 every token with an unknown kid would trigger a JWKS fetch')
          .default(DEFAULTS.inbound.jwks.cooldownSeconds),
        timeoutSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.inbound.jwks.timeoutSeconds),
        retryMinSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.inbound.jwks.retryMinSeconds),
        retryMaxSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.inbound.jwks.retryMaxSeconds),
      })
      .superRefine(
        (j, ctx) => {
          // Keys that go stale before the next refresh could have succeeded make a periodic outage with a healthy
          // IdP: every token 503 keys_unavailable and /readyz 503 from the moment they go stale until the refresh.
          const min = minMaxStaleSeconds(j);
          if (Math.round(j.maxStaleSeconds * 1000) >= Math.round(min * 1000)) return;
          const retry = j.retryMinSeconds <= j.refreshIntervalSeconds ? `retryMinSeconds ${secondsText(j.retryMinSeconds)}` : `refreshIntervalSeconds ${secondsText(j.refreshIntervalSeconds)} (the first retry's delay)`;
          ctx.addIssue({
            code: 'custom',
            path: ['maxStaleSeconds'],
            message:
              `must be at least ${secondsText(min)} (refreshIntervalSeconds ${secondsText(j.refreshIntervalSeconds)} + ${retry} + 4 × timeoutSeconds ${secondsText(j.timeoutSeconds)}): ` +
              'the keys must outlive the next refresh and one retry, each up to two requests (discovery, JWKS); shorter, they go stale ' +
              'before a refresh can succeed and every token gets 503 keys_unavailable while the IdP is healthy',
          });
        },
        // Only once each value is valid on its own: a refresh interval that is already refused needs no second message.
        { when: (payload) => payload.issues.length === 0 },
      )
      .prefault({}),
    cache: z
      .strictObject({
        maxEntries: z
          .number()
          .int()
          .nonnegative()
          // The LRU allocates its index for every entry when it is created: 1e8 took 2.8 GB before the first request,
          // and 2^32 stopped `run` with "Invalid array length" (validate accepted both).
          .max(MAX_CACHE_ENTRIES, `must be at most ${MAX_CACHE_ENTRIES}: the cache sets aside room for every entry when it starts (about 16 MB for a million)`)
          .default(DEFAULTS.inbound.cache.maxEntries),
        maxBytes: z
          .number()
          .int()
          .min(64 * 1024, 'must be at least 65536 (64 KiB): a budget smaller than a few identities caches nothing')
          .max(Number.MAX_SAFE_INTEGER)
          .describe('About how much memory the cached identities may take, in bytes (default 32 MiB): a flood of large, distinct valid tokens stops here before maxEntries')
          .default(DEFAULTS.inbound.cache.maxBytes),
      })
      .prefault({}),
    rules: z.array(ruleSchema).optional().describe('First match wins; when present, no match = deny'),
    forward: forwardSchema,
    forwardedHeaders: z
      .enum(['append', 'replace'])
      .default(DEFAULTS.inbound.forwardedHeaders)
      .describe("append: this hop is added to the caller's X-Forwarded-For/-Proto/-Host; replace: the app gets this hop's alone, and none of the caller's Forwarded, X-Real-IP and the like"),
    tls: tlsSchema.optional().describe('Serve the inbound listener over HTTPS'),
  })
  .superRefine((inb, ctx) => {
    // `replace` removes these from every request; a token kept under one of their names would never reach the app.
    if (inb.forwardedHeaders === 'replace' && inb.forward.keepToken && CLIENT_INFO_HEADERS.includes(inb.tokenHeader)) {
      ctx.addIssue({ code: 'custom', message: `"${inb.tokenHeader}" is removed from every request with forwardedHeaders: replace, so keepToken could not pass it on; use another token header`, path: ['tokenHeader'] });
    }
    // The token header holds the caller's credential and is removed before the app (unless keepToken): identity must not share its name.
    const f = inb.forward;
    const named: Array<[string, (string | number)[]]> = [
      [f.subjectHeader, ['forward', 'subjectHeader']],
      [f.issuerHeader, ['forward', 'issuerHeader']],
      [f.claimsHeader, ['forward', 'claimsHeader']],
      ...Object.keys(f.claimHeaders).map((k): [string, (string | number)[]] => [k, ['forward', 'claimHeaders', k]]),
    ];
    for (const [name, path] of named) {
      if (name === inb.tokenHeader) ctx.addIssue({ code: 'custom', message: `must not be the token header "${name}" (inbound.tokenHeader)`, path });
    }
  });

const clientAuthFields = {
  clientId: z.string().min(1),
  clientSecret: z.string().min(1).optional(),
  clientSecretFile: z.string().min(1).optional(),
  authMethod: z.enum(['client_secret_basic', 'client_secret_post']).optional().describe('For clientSecret; default client_secret_basic'),
  privateKeyFile: z.string().min(1).optional().describe('PEM or JWK private key for private_key_jwt (RFC 7523)'),
  privateKeyAlg: z.enum(ALGORITHMS).optional().describe('Default: from the key'),
  clientAssertionFile: z.string().min(1).optional().describe('A federated JWT used as jwt-bearer client assertion, re-read each time'),
};

const tokenEndpointFields = {
  issuer: httpUrl.optional().describe('Discover the token endpoint from this issuer'),
  tokenEndpoint: httpUrl.optional(),
  audienceParam: z.enum(['resource', 'audience', 'none']).default(DEFAULTS.outbound.audienceParam),
  params: z.record(z.string().min(1), z.string()).optional().describe('Extra form fields for the token request'),
  caFile: z.string().min(1).optional().describe('PEM CA bundle for a token endpoint behind a private CA; read when the config loads'),
  ...clientAuthFields,
};

type EndpointSource = { issuer?: string | undefined; tokenEndpoint?: string | undefined; clientSecret?: string | undefined; clientSecretFile?: string | undefined; privateKeyFile?: string | undefined; clientAssertionFile?: string | undefined; authMethod?: string | undefined };

function checkEndpointSource(s: EndpointSource, ctx: z.RefinementCtx): void {
  if (!s.issuer === !s.tokenEndpoint) {
    ctx.addIssue({ code: 'custom', message: 'set exactly one of `issuer` (discovery) or `tokenEndpoint`', path: ['tokenEndpoint'] });
  }
  const auth = [s.clientSecret, s.clientSecretFile, s.privateKeyFile, s.clientAssertionFile].filter((v) => v !== undefined);
  if (auth.length !== 1) {
    ctx.addIssue({
      code: 'custom',
      message: 'set exactly one client credential: clientSecret, clientSecretFile, privateKeyFile or clientAssertionFile',
      path: ['clientSecret'],
    });
  }
  if (s.authMethod && !(s.clientSecret || s.clientSecretFile)) {
    ctx.addIssue({ code: 'custom', message: 'authMethod applies only to clientSecret/clientSecretFile', path: ['authMethod'] });
  }
}

const clientCredentialsSource = z
  .strictObject({ type: z.literal('client_credentials'), ...tokenEndpointFields })
  .superRefine(checkEndpointSource);

const tokenExchangeSource = z
  .strictObject({
    type: z.literal('token_exchange'),
    ...tokenEndpointFields,
    subjectTokenFile: z.string().min(1),
    subjectTokenType: z.string().min(1).default(DEFAULTS.outbound.subjectTokenType),
    requestedTokenType: z.string().min(1).optional(),
  })
  .superRefine(checkEndpointSource);

const fileSource = z.strictObject({
  type: z.literal('file'),
  path: z.string().min(1).describe('May contain {audience}'),
});

const githubActionsSource = z.strictObject({ type: z.literal('github_actions') });

const envSource = z.strictObject({
  type: z.literal('env'),
  variable: z.string().min(1).describe('May contain {audience}'),
});

export const tokenSourceSchema = z.discriminatedUnion('type', [
  clientCredentialsSource,
  tokenExchangeSource,
  fileSource,
  githubActionsSource,
  envSource,
]);

const routeSchema = z.strictObject({
  // The router's own parser, so `validate` refuses exactly what `run` would (a port of 0 or over 65535, say).
  host: z
    .string()
    .min(1)
    .refine((s) => parseAuthority(s, 0) !== undefined, 'must be a host name, optionally with a port 1-65535')
    .transform((s) => s.toLowerCase()),
  target: proxyTarget.optional().describe('Default http://{host}'),
  audience: z.string().min(1),
  scopes: z.array(z.string().min(1)).optional(),
  tokenSource: tokenSourceSchema.optional(),
  caFile: z.string().min(1).optional().describe('PEM CA bundle for an https target; read when the config loads'),
});

const outboundSchema = z
  .strictObject({
    listen: listenAddress.default(DEFAULTS.outbound.listen),
    tokenSource: tokenSourceSchema.optional().describe('Default for every route'),
    tokenHeader: tokenHeaderName.prefault(DEFAULTS.outbound.tokenHeader),
    routes: z.array(routeSchema).default([]),
    unknownHosts: z.enum(['deny', 'passthrough']).default(DEFAULTS.outbound.unknownHosts),
    refreshMarginSeconds: seconds('Renew long-lived tokens no later than this before exp').default(DEFAULTS.outbound.refreshMarginSeconds),
    tokenRequestTimeoutSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.outbound.tokenRequestTimeoutSeconds),
  })
  .superRefine((o, ctx) => {
    // Routes are keyed as the router compares hosts, so `127.1` and `127.0.0.1`, or `orders.` and `orders`, are one.
    const seen = new Map<string, number>();
    o.routes.forEach((r, i) => {
      const source = r.tokenSource ?? o.tokenSource;
      if (!source) {
        ctx.addIssue({ code: 'custom', message: 'no tokenSource here and no outbound.tokenSource default', path: ['routes', i, 'tokenSource'] });
      }
      // `/var/run/secrets/tokens/{audience}` with the audience `https://payments.example` reads a file in a directory
      // `https:`: it can only be a mistake, caught here rather than as a missing file at run time.
      if (source?.type === 'file' && source.path.includes('{audience}') && !isFileName(r.audience)) {
        const from = r.tokenSource ? `outbound.routes.${i}.tokenSource.path` : 'outbound.tokenSource.path';
        ctx.addIssue({
          code: 'custom',
          message: `"${r.audience}" cannot fill {audience} in ${from}: it is put in a file path as one file name, so it may not contain "/" or be "." or ".."; give this route its own tokenSource with the file's path`,
          path: ['routes', i, 'audience'],
        });
      }
      const a = parseAuthority(r.host, 0);
      if (!a) return; // refused by the host check above
      // The router builds the default target from the host when it starts: a host no URL accepts would fail `run` only.
      if (!r.target && !URL.canParse(`http://${r.host}`)) {
        ctx.addIssue({ code: 'custom', message: `no target, and the default http://${r.host} is not a URL (a last label of digits must make an IPv4 address): set target`, path: ['routes', i, 'host'] });
      }
      const key = routeKey(a);
      const first = seen.get(key);
      if (first === undefined) seen.set(key, i);
      else {
        const other = o.routes[first]!.host;
        const same = other === r.host ? '' : `: the same host as outbound.routes.${first}.host "${other}"`;
        ctx.addIssue({ code: 'custom', message: `duplicate route for host "${r.host}"${same}`, path: ['routes', i, 'host'] });
      }
    });
  });

export const configSchema = z
  .strictObject({
    service: z.string().min(1).describe("This workload's name, used in logs and metrics"),
    inbound: inboundSchema.optional(),
    outbound: outboundSchema.optional(),
    admin: z.strictObject({ listen: listenAddress.default(DEFAULTS.admin.listen) }).prefault({}),
    log: z
      .strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default(DEFAULTS.log.level) })
      .prefault({}),
    limits: z
      .strictObject({
        maxHeaderBytes: positiveInt.default(DEFAULTS.limits.maxHeaderBytes),
        maxHeaderCount: positiveInt.default(DEFAULTS.limits.maxHeaderCount),
        headersTimeoutSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.limits.headersTimeoutSeconds),
        requestTimeoutSeconds: fitsTimer(seconds('Whole request from the client; 0 disables')).default(DEFAULTS.limits.requestTimeoutSeconds),
        keepAliveTimeoutSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.limits.keepAliveTimeoutSeconds),
        upstreamTimeoutSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.limits.upstreamTimeoutSeconds),
        upstreamConnectTimeoutSeconds: fitsTimer(z.number().positive()).default(DEFAULTS.limits.upstreamConnectTimeoutSeconds),
        upstreamConnections: positiveInt.default(DEFAULTS.limits.upstreamConnections),
        maxConnections: positiveInt
          .optional()
          .describe('Client connections each traffic listener holds at once; one more is closed as it is accepted. Default: a quarter of the open-file limit'),
        maxTunnels: positiveInt.describe('Open WebSocket and CONNECT tunnels per listener; one more gets 503 too_many_tunnels').default(DEFAULTS.limits.maxTunnels),
        tunnelIdleTimeoutSeconds: fitsTimer(seconds('A tunnel with no bytes either way for this long is closed; 0 disables')).default(DEFAULTS.limits.tunnelIdleTimeoutSeconds),
      })
      // Node refuses to start a server whose headers timeout outlasts its request timeout.
      .refine((l) => l.requestTimeoutSeconds === 0 || l.headersTimeoutSeconds <= l.requestTimeoutSeconds, {
        message: 'must be <= limits.requestTimeoutSeconds (or set requestTimeoutSeconds to 0)',
        path: ['headersTimeoutSeconds'],
      })
      // Each tunnel holds its client connection: at or under maxTunnels, WebSockets alone could take every place, and
      // a plain request would then find its connection closed unanswered instead of the tunnel getting its 503.
      .refine((l) => l.maxConnections === undefined || l.maxConnections > l.maxTunnels, {
        message: 'must be more than limits.maxTunnels: each tunnel holds one of these connections, and tunnels alone would take them all',
        path: ['maxConnections'],
      })
      .prefault({}),
    lifecycle: z
      .strictObject({
        drainTimeoutSeconds: fitsTimer(seconds('How long in-flight requests may take after SIGTERM')).default(DEFAULTS.lifecycle.drainTimeoutSeconds),
        watchConfig: z.boolean().default(DEFAULTS.lifecycle.watchConfig),
      })
      .prefault({}),
  })
  .refine((c) => c.inbound !== undefined || c.outbound !== undefined, {
    message: 'configure `inbound`, `outbound` or both',
    path: ['inbound'],
  })
  .superRefine((c, ctx) => {
    // Two listeners on one port would pass `validate` and stop `run` with EADDRINUSE when the second binds. A wildcard
    // host (0.0.0.0, ::) takes the port on every address, so it clashes with any host; port 0 picks a free one.
    const listeners: Array<[string, string | undefined]> = [
      ['inbound', c.inbound?.listen],
      ['outbound', c.outbound?.listen],
      ['admin', c.admin.listen],
    ];
    // Hosts are compared as the addresses they bind: `127.1` and `localhost` are 127.0.0.1 too.
    const bound: Array<[string, { addresses: string[]; port: number }]> = [];
    for (const [side, listen] of listeners) {
      if (listen === undefined) continue;
      const at = splitListen(listen);
      const clash = at.port !== 0 && bound.find(([, b]) => b.port === at.port && sharesAnAddress(b.addresses, at.addresses));
      if (clash) ctx.addIssue({ code: 'custom', path: [side, 'listen'], message: `port ${at.port} is already taken by ${clash[0]}.listen; each listener needs its own port` });
      bound.push([side, at]);
    }
  });

const WILDCARDS = new Set(['', '0.0.0.0', '[::]']);

/** The port, and the addresses a listener on the host may bind: an IP literal's one spelling, both loopbacks for `localhost`. */
function splitListen(listen: string): { addresses: string[]; port: number } {
  const i = listen.lastIndexOf(':');
  const host = listen.slice(0, i).toLowerCase();
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  // Node binds `localhost` to whichever loopback address the resolver lists first (/etc/hosts: 127.0.0.1 or ::1).
  const addresses = name === 'localhost' ? ['127.0.0.1', '[::1]'] : [canonicalHost(host) ?? host];
  return { addresses, port: Number(listen.slice(i + 1)) };
}

function sharesAnAddress(a: string[], b: string[]): boolean {
  return a.some((x) => WILDCARDS.has(x) || b.includes(x)) || b.some((x) => WILDCARDS.has(x));
}

/** The validated, fully defaulted config. */
export type Config = z.output<typeof configSchema>;
/** Beside each `caFile`, parseConfig puts the bundle it read (config/ca-bundle.ts); TLS clients take it from there. */
type WithCaBundle = { readonly ca?: CaBundle };
export type InboundConfig = NonNullable<Config['inbound']>;
export type IssuerConfig = InboundConfig['issuers'][number] & WithCaBundle;
export type RuleConfig = NonNullable<InboundConfig['rules']>[number];
export type AllowEntry = NonNullable<RuleConfig['allow']>[number];
export type ForwardConfig = InboundConfig['forward'];
export type OutboundConfig = NonNullable<Config['outbound']>;
export type RouteConfig = OutboundConfig['routes'][number] & WithCaBundle;
export type TokenSourceConfig = z.output<typeof tokenSourceSchema> & WithCaBundle;
export type LimitsConfig = Config['limits'];
