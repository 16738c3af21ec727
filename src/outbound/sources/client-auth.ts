import { createPrivateKey, hash, randomUUID, type KeyObject } from 'node:crypto';
import { SignJWT } from 'jose';
import type { Clock } from '../../clock.js';
import { FILE_LIMITS, readConfiguredFile } from '../../config/configured-files.js';
import { ConfigError } from '../../errors.js';
import { readRuntimeFile } from './files.js';
import { ENCRYPTED_KEY_MESSAGE, isEncryptedPrivateKeyPem } from '../../encrypted-pem.js';

/** The client-authentication fields shared by client_credentials and token_exchange sources. */
export interface ClientAuthConfig {
  clientId: string;
  clientSecret?: string | undefined;
  clientSecretFile?: string | undefined;
  authMethod?: 'client_secret_basic' | 'client_secret_post' | undefined;
  privateKeyFile?: string | undefined;
  privateKeyAlg?: string | undefined;
  clientAssertionFile?: string | undefined;
}

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'client_assertion_file';

/** How a token request proves the client's identity (RFC 6749 §2.3, RFC 7523 §2.2). */
export interface ClientAuth {
  readonly method: ClientAuthMethod;
  /** SHA-256 of the secret or private key read from config (hex), so two configs can tell theirs apart without holding each other's. */
  readonly credentialDigest: string;
  /** Adds the credentials for a request to `tokenEndpoint` to the form and headers. */
  apply(form: URLSearchParams, headers: Record<string, string>, tokenEndpoint: string): Promise<void>;
}

/** RFC 7521 §4.2 / RFC 7523 §2.2: the client assertion type for a JWT. */
export const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

/** Lifetime of a private_key_jwt client assertion (seconds): one request, so short. */
const ASSERTION_TTL_SECONDS = 60;

/**
 * Builds the client authentication from config. Secrets and keys are read
 * here, once, so a missing file stops startup with the key path named; the
 * assertion file is the exception: it is rotated by its issuer and re-read
 * at every request.
 */
export function createClientAuth(cfg: ClientAuthConfig, deps: { clock: Clock; configPath: string }): ClientAuth {
  if (cfg.privateKeyFile !== undefined) {
    const keyText = readConfiguredFile(cfg.privateKeyFile, `${deps.configPath}.privateKeyFile`, FILE_LIMITS.privateKey);
    const signing = loadSigningKey(keyText, cfg.privateKeyAlg, deps.configPath);
    return {
      method: 'private_key_jwt',
      credentialDigest: hash('sha256', keyText),
      async apply(form, _headers, tokenEndpoint) {
        const now = Math.floor(deps.clock.now() / 1000);
        // RFC 7523 §3: iss = sub = client_id, aud = the token endpoint, a unique jti and a short exp.
        const assertion = await new SignJWT({})
          .setProtectedHeader({ alg: signing.alg, ...signing.header })
          .setIssuer(cfg.clientId)
          .setSubject(cfg.clientId)
          .setAudience(tokenEndpoint)
          .setIssuedAt(now)
          .setExpirationTime(now + ASSERTION_TTL_SECONDS)
          .setJti(randomUUID())
          .sign(signing.key);
        setAssertion(form, cfg.clientId, assertion);
      },
    };
  }
  if (cfg.clientAssertionFile !== undefined) {
    const path = cfg.clientAssertionFile;
    return {
      method: 'client_assertion_file',
      // Read at every request: nothing held to tell apart.
      credentialDigest: '',
      async apply(form) {
        setAssertion(form, cfg.clientId, await readRuntimeFile(path, 'clientAssertionFile'));
      },
    };
  }
  const secret = cfg.clientSecret ?? readConfiguredFile(cfg.clientSecretFile ?? '', `${deps.configPath}.clientSecretFile`, FILE_LIMITS.clientSecret);
  // Only blanks is as empty (a file of spaces, a placeholder's default of one): sent, every token request would fail.
  if (secret.trim().length === 0) {
    throw new ConfigError([{ path: `${deps.configPath}.${cfg.clientSecret !== undefined ? 'clientSecret' : 'clientSecretFile'}`, message: 'the client secret is empty' }]);
  }
  if (cfg.authMethod === 'client_secret_post') {
    return {
      method: 'client_secret_post',
      credentialDigest: hash('sha256', secret),
      async apply(form) {
        form.set('client_id', cfg.clientId);
        form.set('client_secret', secret);
      },
    };
  }
  const authorization = basicAuthorization(cfg.clientId, secret);
  return {
    method: 'client_secret_basic',
    credentialDigest: hash('sha256', secret),
    async apply(_form, headers) {
      headers.authorization = authorization;
    },
  };
}

function setAssertion(form: URLSearchParams, clientId: string, assertion: string): void {
  form.set('client_id', clientId);
  form.set('client_assertion_type', JWT_BEARER_ASSERTION);
  form.set('client_assertion', assertion);
}

/**
 * `Basic` credentials per RFC 6749 §2.3.1: client id and secret are each
 * application/x-www-form-urlencoded (Appendix B) before the RFC 7617 base64,
 * so a secret containing `:` or non-ASCII survives the trip.
 */
export function basicAuthorization(clientId: string, secret: string): string {
  return `Basic ${Buffer.from(`${formEncode(clientId)}:${formEncode(secret)}`, 'utf8').toString('base64')}`;
}

/** The WHATWG application/x-www-form-urlencoded serializer for one value (space becomes `+`). */
export function formEncode(value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2);
}

export interface SigningKey {
  key: KeyObject;
  alg: string;
  /** JOSE header parameters naming the key: `kid`, and the certificate thumbprints `x5t`/`x5t#S256` (Entra ID requires one). */
  header: Record<string, string>;
}

/** JWK members copied into the assertion's header so the IdP can pick the right registered key or certificate. */
const KEY_ID_MEMBERS = ['kid', 'x5t', 'x5t#S256'] as const;

/** Which JWS algorithms a key type can sign with (RFC 7518 §3, RFC 8037). */
function algorithmsFor(key: KeyObject): readonly string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      if (curve === 'prime256v1') return ['ES256'];
      if (curve === 'secp384r1') return ['ES384'];
      if (curve === 'secp521r1') return ['ES512'];
      return [];
    }
    case 'ed25519':
      return ['EdDSA', 'Ed25519'];
    default:
      return [];
  }
}

/**
 * Parses a private key given as PEM (PKCS#8, PKCS#1 or SEC1) or as a JWK
 * (or a JWK Set holding exactly one private key). The algorithm is
 * `privateKeyAlg`, else the JWK's `alg`, else the natural one for the key
 * type (RS256, ES256/384/512, EdDSA). A JWK's `kid`, `x5t` and `x5t#S256`
 * go into the assertion header.
 */
export function loadSigningKey(text: string, alg: string | undefined, configPath: string): SigningKey {
  const fail = (key: string, message: string): never => {
    throw new ConfigError([{ path: `${configPath}.${key}`, message }]);
  };
  let key: KeyObject;
  let jwkAlg: string | undefined;
  const header: Record<string, string> = {};
  const trimmed = text.trim();
  try {
    if (trimmed.startsWith('{')) {
      let jwk = JSON.parse(trimmed) as Record<string, unknown>;
      if (Array.isArray(jwk.keys)) {
        const privates = (jwk.keys as Record<string, unknown>[]).filter((k) => k && typeof k === 'object' && 'd' in k);
        if (privates.length !== 1) return fail('privateKeyFile', `the JWK Set must hold exactly one private key, found ${privates.length}`);
        jwk = privates[0]!;
      }
      if (!('d' in jwk)) return fail('privateKeyFile', 'the JWK is a public key; private_key_jwt needs the private key');
      key = createPrivateKey({ key: jwk as never, format: 'jwk' });
      if (typeof jwk.alg === 'string') jwkAlg = jwk.alg;
      for (const m of KEY_ID_MEMBERS) if (typeof jwk[m] === 'string') header[m] = jwk[m] as string;
    } else {
      key = createPrivateKey(trimmed);
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    if (isEncryptedPrivateKeyPem(trimmed)) return fail('privateKeyFile', ENCRYPTED_KEY_MESSAGE);
    return fail('privateKeyFile', 'not a private key in PEM (PKCS#8, PKCS#1, SEC1) or JWK form');
  }
  // Both would read and validate, then fail every signing in jose (and so every token request), also after a reload
  // that swapped in such a key while the old one served.
  if (key.asymmetricKeyType === 'rsa-pss') {
    return fail('privateKeyFile', 'an RSA-PSS key (id-RSASSA-PSS) cannot sign here; use an RSA key (rsaEncryption, e.g. openssl genpkey -algorithm RSA) with privateKeyAlg: PS256 to sign with PSS');
  }
  const bits = key.asymmetricKeyType === 'rsa' ? key.asymmetricKeyDetails?.modulusLength : undefined;
  if (bits !== undefined && bits < 2048) return fail('privateKeyFile', `the RSA key has ${bits} bits; RS256 and PS256 need at least 2048 (RFC 7518 §3.3)`);
  const supported = algorithmsFor(key);
  if (supported.length === 0) return fail('privateKeyFile', `unsupported key type ${key.asymmetricKeyType ?? 'unknown'} (use RSA, EC P-256/384/521 or Ed25519)`);
  const chosen = alg ?? jwkAlg ?? supported[0]!;
  if (!supported.includes(chosen)) {
    return fail(alg ? 'privateKeyAlg' : 'privateKeyFile', `${chosen} cannot be used with this ${key.asymmetricKeyType} key (possible: ${supported.join(', ')})`);
  }
  return { key, alg: chosen, header };
}
