import { createPublicKey, type JsonWebKey } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import * as z from '../zod.js';
import type { JWK } from 'jose';
import { ConfigError, UsageError, summarizeIssues, type ConfigIssue } from '../errors.js';
import { describeFsError } from '../config/configured-files.js';
import { interpolateEnv } from '../config/interpolate.js';
import { parseYaml, readBoundedText } from '../config/yaml-file.js';
import { DEV_ALGORITHMS, type DevAlg } from './keys.js';
import type { DevClient } from './provider.js';

/**
 * The longest access token lifetime the dev issuer hands out: a year. Unbounded, `--ttl 1e300` passed as a whole
 * number and the start failed inside oidc-provider, in its words (`ttl.AccessToken must be a positive integer`).
 */
export const MAX_DEV_TOKEN_TTL_SECONDS = 365 * 24 * 3600;

/**
 * The dev issuer's clients file (YAML or JSON). Strict like the sidecar
 * config: a typo is an error, reported with its key path.
 */
const clientSchema = z
  .strictObject({
    clientId: z.string().min(1),
    clientSecret: z.string().min(1).optional(),
    authMethod: z.enum(['client_secret_basic', 'client_secret_post', 'private_key_jwt']).optional(),
    jwks: z.strictObject({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional().describe('Public keys for private_key_jwt'),
    publicKeyFile: z.string().min(1).optional().describe('PEM public key, JWK or JWKS file for private_key_jwt (relative to this file)'),
    jwksUri: z.url({ protocol: /^https?$/ }).optional(),
    subject: z.string().min(1).optional().describe('Overrides sub (default: clientId)'),
    claims: z.record(z.string().min(1), z.unknown()).optional().describe('Extra claims in every token, e.g. repository, ref, environment'),
    defaultAudience: z.string().min(1).optional().describe('Audience when the request names none'),
    allowAssertionReuse: z.boolean().optional().describe('Accept one client assertion many times (federated tokens)'),
  })
  .superRefine((c, ctx) => {
    const keySources = [c.jwks, c.publicKeyFile, c.jwksUri].filter((v) => v !== undefined).length;
    const method = c.authMethod ?? (c.clientSecret === undefined && keySources > 0 ? 'private_key_jwt' : 'client_secret_basic');
    if (method === 'private_key_jwt') {
      if (keySources !== 1) ctx.addIssue({ code: 'custom', message: 'private_key_jwt needs exactly one of jwks, publicKeyFile, jwksUri', path: ['jwks'] });
      if (c.clientSecret !== undefined) ctx.addIssue({ code: 'custom', message: 'a private_key_jwt client takes no clientSecret', path: ['clientSecret'] });
    } else if (c.clientSecret === undefined) {
      ctx.addIssue({ code: 'custom', message: `${method} needs a clientSecret (or give jwks/publicKeyFile/jwksUri for private_key_jwt)`, path: ['clientSecret'] });
    }
  });

export const devClientsFileSchema = z
  .strictObject({
    clients: z.array(clientSchema).min(1, 'at least one client is required'),
    accessTokenTtlSeconds: z
      .number()
      .refine((n) => Number.isInteger(n) && n > 0 && n <= MAX_DEV_TOKEN_TTL_SECONDS, `must be a whole number of seconds from 1 to ${MAX_DEV_TOKEN_TTL_SECONDS} (a year)`)
      .optional()
      .describe('Access token lifetime (seconds); default 300, at most a year'),
    alg: z.enum(DEV_ALGORITHMS).optional().describe('Signing algorithm of generated keys; default RS256'),
  })
  .superRefine((f, ctx) => {
    const seen = new Set<string>();
    f.clients.forEach((c, i) => {
      if (seen.has(c.clientId)) ctx.addIssue({ code: 'custom', message: `duplicate clientId "${c.clientId}"`, path: ['clients', i, 'clientId'] });
      seen.add(c.clientId);
    });
  });

export interface DevClientsFile {
  clients: DevClient[];
  accessTokenTtlSeconds?: number;
  alg?: DevAlg;
}

/**
 * The clients the dev issuer and the demo use when no file is given. Secrets
 * are well known on purpose: this is for a laptop or a compose network.
 * The two `github-*` clients get GitHub-Actions-shaped tokens (FIELD-NOTES).
 */
export const DEFAULT_DEV_CLIENTS: readonly DevClient[] = Object.freeze([
  { clientId: 'orders', clientSecret: 'orders-secret' },
  { clientId: 'payments', clientSecret: 'payments-secret' },
  { clientId: 'deployer', clientSecret: 'deployer-secret' },
  { clientId: 'analytics', clientSecret: 'analytics-secret' },
  {
    clientId: 'github-main',
    clientSecret: 'github-main-secret',
    subject: 'repo:acme/app:environment:production',
    extraClaims: {
      repository: 'acme/app',
      repository_id: '123456789',
      repository_owner: 'acme',
      repository_owner_id: '987654321',
      ref: 'refs/heads/main',
      environment: 'production',
      job_workflow_ref: 'acme/app/.github/workflows/deploy.yml@refs/heads/main',
    },
  },
  {
    clientId: 'github-feature',
    clientSecret: 'github-feature-secret',
    subject: 'repo:acme/app:ref:refs/heads/feature/login',
    extraClaims: {
      repository: 'acme/app',
      repository_id: '123456789',
      repository_owner: 'acme',
      repository_owner_id: '987654321',
      ref: 'refs/heads/feature/login',
      job_workflow_ref: 'acme/app/.github/workflows/deploy.yml@refs/heads/feature/login',
    },
  },
]);

/** Reads and validates a clients file; every problem is reported as `path.to.key: message` in one UsageError. */
export function loadDevClientsFile(path: string, env: NodeJS.ProcessEnv): DevClientsFile {
  let doc: unknown;
  try {
    // The config's own reader and parser: bounded (not /dev/zero to the end), and its messages never quote the file,
    // which holds client secrets.
    doc = parseYaml(readBoundedText(path, 1024 * 1024, 'no clients file needs'), path);
  } catch (err) {
    if (err instanceof ConfigError) fail(path, err.issues.map((i) => ({ path: '', message: i.message })));
    throw new UsageError(`cannot read clients file ${path}: ${describeFsError(err)}`);
  }
  const issues: ConfigIssue[] = [];
  const value = interpolateEnv(doc ?? {}, env, issues);
  const parsed = devClientsFileSchema.safeParse(value);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const base = issue.path.map(String);
      if (issue.code === 'unrecognized_keys') for (const key of issue.keys) issues.push({ path: [...base, key].join('.'), message: 'unknown key' });
      else issues.push({ path: base.join('.'), message: issue.message });
    }
  }
  if (issues.length > 0 || !parsed.success) fail(path, issues);
  const dir = dirname(resolve(path));
  const clients: DevClient[] = parsed.data.clients.map((c, i) => {
    const out: DevClient = { clientId: c.clientId };
    if (c.clientSecret !== undefined) out.clientSecret = c.clientSecret;
    if (c.authMethod !== undefined) out.authMethod = c.authMethod;
    if (c.jwks !== undefined) out.jwks = { keys: c.jwks.keys.map((k, j) => publicJwk(k as JsonWebKey, path, `clients.${i}.jwks.keys.${j}`)) };
    if (c.jwksUri !== undefined) out.jwksUri = c.jwksUri;
    if (c.publicKeyFile !== undefined) out.jwks = readPublicKeys(resolve(dir, c.publicKeyFile), path, `clients.${i}.publicKeyFile`);
    if (c.subject !== undefined) out.subject = c.subject;
    if (c.claims !== undefined) out.extraClaims = c.claims;
    if (c.defaultAudience !== undefined) out.defaultAudience = c.defaultAudience;
    if (c.allowAssertionReuse !== undefined) out.allowAssertionReuse = c.allowAssertionReuse;
    return out;
  });
  return {
    clients,
    ...(parsed.data.accessTokenTtlSeconds !== undefined ? { accessTokenTtlSeconds: parsed.data.accessTokenTtlSeconds } : {}),
    ...(parsed.data.alg !== undefined ? { alg: parsed.data.alg } : {}),
  };
}

function fail(path: string, issues: ConfigIssue[]): never {
  throw new UsageError(summarizeIssues(`invalid clients file ${path}`, issues));
}

/** A PEM (public or private: only the public half is kept), a JWK or a JWKS, as a JWKS of public keys. */
function readPublicKeys(file: string, clientsPath: string, keyPath: string): { keys: JWK[] } {
  let text: string;
  try {
    text = readBoundedText(file, 1024 * 1024, 'no public key needs');
  } catch (err) {
    if (err instanceof ConfigError) fail(clientsPath, [{ path: keyPath, message: `${file}: ${err.issues[0]!.message}` }]);
    fail(clientsPath, [{ path: keyPath, message: `cannot read ${file}: ${describeFsError(err)}` }]);
  }
  try {
    if (text.trimStart().startsWith('{')) {
      const doc = JSON.parse(text) as { keys?: JsonWebKey[] } & JsonWebKey;
      const jwks = Array.isArray(doc.keys) ? doc.keys : [doc];
      return { keys: jwks.map((k) => publicHalf(k)) };
    }
    return { keys: [createPublicKey(text).export({ format: 'jwk' }) as JWK] };
  } catch (err) {
    fail(clientsPath, [{ path: keyPath, message: `${file} is not a PEM key, JWK or JWKS (${(err as Error).message})` }]);
  }
}

/**
 * A client's inline JWK as the key oidc-provider is given: checked here as a key file's are, so a broken one fails
 * the start with its key path, not every request later as an unexplained invalid_client. A symmetric key (`oct`) is
 * no public key at all, and a private one would put the client's secret half in a file meant for public keys: both
 * are refused, where a key file's private half is reduced to its public one (a key file may well be the client's own).
 */
function publicJwk(k: JsonWebKey, clientsPath: string, keyPath: string): JWK {
  if (k.kty === 'oct') fail(clientsPath, [{ path: keyPath, message: 'a symmetric (oct) key is no public key; private_key_jwt needs the public key of an RSA, EC or OKP pair' }]);
  if (k.d !== undefined) fail(clientsPath, [{ path: keyPath, message: 'a private key (it has "d"): give only its public half here' }]);
  try {
    return publicHalf(k);
  } catch (err) {
    fail(clientsPath, [{ path: keyPath, message: `not a usable public key (${(err as Error).message})` }]);
  }
}

/** A JWK's public key as node:crypto reads it, with its kid and alg. Throws for a key it cannot read. */
function publicHalf(k: JsonWebKey): JWK {
  return { ...(createPublicKey({ key: k, format: 'jwk' }).export({ format: 'jwk' }) as JWK), ...pick(k) };
}

function pick(k: JsonWebKey): Partial<JWK> {
  const out: Partial<JWK> = {};
  if (typeof k.kid === 'string') out.kid = k.kid;
  if (typeof k.alg === 'string') out.alg = k.alg;
  return out;
}
