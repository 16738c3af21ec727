import type { Metrics } from '../admin/metrics.js';
import type { InboundConfig, RuleConfig } from '../config/schema.js';
import { INBOUND_REASONS, KeysUnavailableError, PolicyDeniedError, SidecarError, TokenRejectedError, type InboundReason } from '../errors.js';
import { audit, capped, loggedPath, unverifiedClaims, type Logger } from '../log.js';
import type { Authenticator } from './authenticator.js';
import type { ExtractedToken, Extractor } from './extractor.js';
import type { Identity } from './identity.js';
import type { CompiledRule, Matcher } from './matcher.js';
import { BadPathError, normalizeTarget, ruleSpelling } from './path.js';
import type { Policy } from './policy.js';
import { InternalError } from './rejection.js';

/** The parts of a request the decision needs, so HTTP requests, WebSocket upgrades and the verify command share it. */
export interface InboundRequest {
  method: string;
  /** The request-target as received (origin-form or absolute-form). */
  url: string;
  /** Node's flat [name, value, ...] list, duplicates kept. */
  rawHeaders: readonly string[];
  /** Remote address, for the audit log. */
  peer?: string | undefined;
}

/** A rule with its compiled allow list. */
export type InboundRule = RuleConfig & { policy?: Policy };

export type Decision =
  | {
      allowed: true;
      /** `ok` for a verified and allowed token, `public` for a public route. */
      reason: 'ok' | 'public';
      /** Normalised path plus the untouched query: what the app must receive. */
      target: string;
      identity?: Identity;
      rule?: CompiledRule<InboundRule>;
    }
  | {
      allowed: false;
      /** TokenRejectedError (401), PolicyDeniedError (403), KeysUnavailableError (503), BadPathError (400) or InternalError (500). */
      error: SidecarError;
      target?: string;
      identity?: Identity;
      rule?: CompiledRule<InboundRule>;
    };

/** The inbound decision, separate from any response writing. */
export interface Authorizer {
  /** Decides, counts the decision in `inbound_requests_total` and writes the audit event for refusals. Never rejects. */
  authorize(req: InboundRequest): Promise<Decision>;
  /**
   * The same decision, synchronous when no signature has to be checked (a public route, a cached token, an
   * early refusal): the request path's form, with no promise per request. May throw where authorize would reject.
   */
  decide(req: InboundRequest): Decision | Promise<Decision>;
}

export interface AuthorizerDeps {
  extractor: Extractor;
  authenticator: Authenticator;
  /** Undefined when no rules are configured (any valid token passes). */
  matcher: Matcher<InboundRule> | undefined;
  metrics: Metrics;
  logger: Logger;
}

const MAX_LOGGED_DETAIL = 200;

/**
 * normalise path → first matching rule → public? allow : extract + verify →
 * rule's allow list → allow. Fails closed at every step: anything unexpected
 * is a 500, never a pass. Metric decisions: allow (reason ok|public), reject
 * (401 reasons and bad_path), deny (policy_denied), error (keys_unavailable,
 * internal_error).
 */
export function createAuthorizer(config: InboundConfig, deps: AuthorizerDeps): Authorizer {
  const { extractor, authenticator, matcher, metrics, logger } = deps;
  // The audience a token of each configured issuer is checked against (its own, else inbound.audience), so a refusal
  // names the audience that was checked; a token of no configured issuer was checked against none, and gets the default.
  const audienceOf = new Map(config.issuers.map((i) => [i.issuer, i.audience ?? config.audience]));
  // A refused token's `iss` is the caller's word: it goes on the line's top-level `issuer` only when it names an
  // issuer of the config, and otherwise stays inside `claims`, marked unverified (SPEC: claims from an unverified
  // token are marked). An `unknown_issuer` line never states an attacker's URL as the issuer.
  const configuredIssuers = new Set(config.issuers.map((i) => i.issuer));
  // Every series of the contract's reason codes exists from the start, at 0: a series that first appears at 1 has no
  // earlier sample, so Prometheus' increase() and rate() miss that first request, and an alert on the first
  // bad_signature would not fire. Listener refusals (bad_request, request_timeout, ...) appear when they happen.
  metrics.inboundRequests.inc({ decision: 'allow', reason: 'ok' }, 0);
  if (config.rules?.some((r) => r.public)) metrics.inboundRequests.inc({ decision: 'allow', reason: 'public' }, 0);
  for (const reason of INBOUND_REASONS) metrics.inboundRequests.inc({ decision: decisionFor(reason), reason }, 0);

  const refuse = (
    req: InboundRequest,
    error: SidecarError,
    ctx: { target?: string; token?: ExtractedToken; identity?: Identity; rule?: CompiledRule<InboundRule> },
  ): Decision => {
    const decision = error instanceof PolicyDeniedError ? 'deny' : error instanceof TokenRejectedError || error instanceof BadPathError ? 'reject' : 'error';
    metrics.inboundRequests.inc({ decision, reason: error.code });
    const claims = !ctx.identity && ctx.token ? peekClaims(ctx.token) : undefined;
    const issuer = ctx.identity?.issuer ?? (typeof claims?.iss === 'string' && configuredIssuers.has(claims.iss) ? claims.iss : undefined);
    const fields = {
      reason: error.code,
      audience: (issuer !== undefined ? audienceOf.get(issuer) : undefined) ?? config.audience,
      path: loggedPath(ctx.target ?? req.url),
      method: capped(req.method, 16),
      peer: req.peer,
      detail: capped(error.message, MAX_LOGGED_DETAIL),
      ...(ctx.rule ? { rule: ctx.rule.index } : {}),
    };
    if (error instanceof BadPathError) {
      logger.warn({ event: 'request_rejected', ...fields }, 'request_rejected');
    } else if (error instanceof InternalError) {
      logger.error({ event: 'authorize_failed', ...fields, err: String((error.cause as Error)?.stack ?? error.cause) }, 'authorize_failed');
    } else if (ctx.identity) {
      audit(logger, 'policy_denied', { ...fields, issuer: ctx.identity.issuer, claims: { ...unverifiedClaims(ctx.identity.claims), verified: true } });
    } else {
      audit(logger, 'token_rejected', {
        ...fields,
        ...(issuer !== undefined ? { issuer } : {}),
        ...(claims ? { claims: unverifiedClaims(claims) } : {}),
      });
    }
    return { allowed: false, error, ...(ctx.target !== undefined ? { target: ctx.target } : {}), ...(ctx.identity ? { identity: ctx.identity } : {}), ...(ctx.rule ? { rule: ctx.rule } : {}) };
  };

  const refuseAuthentication = (req: InboundRequest, err: unknown, target: string, token: ExtractedToken | undefined, rule: CompiledRule<InboundRule> | undefined): Decision => {
    const error = err instanceof TokenRejectedError || err instanceof KeysUnavailableError ? err : new InternalError(err);
    return refuse(req, error, { target, ...(token ? { token } : {}), ...(rule ? { rule } : {}) });
  };

  /**
   * A verified identity against the matched rule's allow list, and against those of the earlier rules another
   * spelling of the path matches (`shadows`, see Matcher.shadows): an app that routes without regard to case or to a
   * trailing slash serves `/ADMIN/x` as `/admin/x` and `/secret/` as `/secret`, so a caller must pass the `/admin/**`
   * or `/secret` rule too, not only the `/**` after it.
   */
  const admit = (req: InboundRequest, target: string, rule: CompiledRule<InboundRule> | undefined, identity: Identity, shadows: readonly CompiledRule<InboundRule>[]): Decision => {
    if (matcher) {
      if (!rule) return refuse(req, new PolicyDeniedError('no rule matches this method and path'), { target, identity });
      const denies = (r: CompiledRule<InboundRule>) => !r.rule.public && (!r.rule.policy || !r.rule.policy(identity.claims));
      const denied = denies(rule) ? rule : shadows.find(denies);
      if (denied) {
        const which = denied === rule ? `rule ${denied.index}` : `rule ${denied.index} (${denied.pattern}), which matches this path spelt in other letter case, with the trailing slash toggled or with its escapes as sent,`;
        return refuse(req, new PolicyDeniedError(`no allow entry of ${which} matched this identity`), { target, identity, rule: denied });
      }
    }
    metrics.inboundRequests.inc({ decision: 'allow', reason: 'ok' });
    return { allowed: true, reason: 'ok', target, identity, ...(rule ? { rule } : {}) };
  };

  const decide = (req: InboundRequest): Decision | Promise<Decision> => {
    let target: string;
    let path: string;
    try {
      const t = normalizeTarget(req.url);
      path = t.path;
      target = t.path + t.query;
    } catch (err) {
      return refuse(req, err instanceof SidecarError ? err : new InternalError(err), {});
    }
    const method = req.method.toUpperCase();
    const spelt = matcher ? ruleSpelling(path) : path;
    const rule = matcher?.match(method, spelt);
    let shadows = matcher ? matcher.shadows(method, spelt, rule) : NO_SHADOWS;
    // An app that routes on the escapes as sent reads `/api/a%3Ab` as another path than `/api/a:b`: the rule that
    // spelling meets judges the request too, so neither spelling passes on the other's looser rule.
    if (matcher && spelt !== path) shadows = withSpellingAsSent(matcher, method, path, rule, shadows);
    // Public only when every rule another spelling of the path would meet first is public too.
    if (rule?.rule.public && shadows.every((s) => s.rule.public)) {
      metrics.inboundRequests.inc({ decision: 'allow', reason: 'public' });
      return { allowed: true, reason: 'public', target, rule };
    }

    let token: ExtractedToken | undefined;
    let identity: Identity | undefined;
    try {
      token = extractor(req.rawHeaders);
      identity = authenticator.cached(token);
    } catch (err) {
      // The token, when there is one, goes to the audit log as unverified claims.
      return refuseAuthentication(req, err, target, token, rule);
    }
    if (identity) return admit(req, target, rule, identity, shadows);
    // A miss: verify without probing the cache a second time (one lookup, one miss counted).
    return authenticator.verify(token).then(
      (verified) => admit(req, target, rule, verified, shadows),
      (err: unknown) => refuseAuthentication(req, err, target, token, rule),
    );
  };

  return {
    decide,
    async authorize(req) {
      return decide(req);
    },
  };
}

const NO_SHADOWS: readonly CompiledRule<InboundRule>[] = [];

/** `shadows` plus the rule the path as sent meets (its escapes kept) and that spelling's own shadows, once each. */
function withSpellingAsSent(
  matcher: Matcher<InboundRule>,
  method: string,
  sent: string,
  rule: CompiledRule<InboundRule> | undefined,
  shadows: readonly CompiledRule<InboundRule>[],
): readonly CompiledRule<InboundRule>[] {
  const asSent = matcher.match(method, sent);
  if (!asSent) return shadows;
  const out = [...shadows];
  for (const r of [asSent, ...matcher.shadows(method, sent, asSent)]) {
    if (r.index !== rule?.index && !out.some((o) => o.index === r.index)) out.push(r);
  }
  return out;
}

/** The unverified payload of a rejected token, for the audit log only (marked unverified by unverifiedClaims). */
function peekClaims(token: ExtractedToken): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(Buffer.from(token.token.slice(token.dot1 + 1, token.dot2), 'base64url').toString('utf8'));
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The decision label a contract reason code is counted under, as `refuse` counts it. */
function decisionFor(reason: InboundReason): 'deny' | 'error' | 'reject' {
  return reason === 'policy_denied' ? 'deny' : reason === 'keys_unavailable' ? 'error' : 'reject';
}
