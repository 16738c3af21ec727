import { generateKeyPairSync, createPrivateKey, createPublicKey, type KeyObject, type JsonWebKey } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { UsageError } from '../errors.js';
import { describeFsError } from '../config/configured-files.js';

/** Signing algorithms the dev issuer can use (all asymmetric; RFC 8725 §3.1). */
export const DEV_ALGORITHMS = ['RS256', 'PS256', 'ES256', 'EdDSA'] as const;
export type DevAlg = (typeof DEV_ALGORITHMS)[number];

/** One signing key of the dev issuer: the private JWK it hands to oidc-provider plus a KeyObject for minting. */
export interface DevSigningKey {
  kid: string;
  alg: DevAlg;
  /** Private JWK with `kid`, `alg` and `use: sig` set. */
  privateJwk: JWK;
  /** The same key as a node KeyObject (tests sign their own tokens with it). */
  privateKey: KeyObject;
  /** The public half, exactly as the JWKS publishes it. */
  publicJwk: JWK;
}

/** Generates a fresh signing key (RSA 2048, P-256 or Ed25519); `kid` is its RFC 7638 thumbprint. */
export async function generateSigningKey(alg: DevAlg = 'RS256'): Promise<DevSigningKey> {
  const { privateKey } =
    alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : alg === 'EdDSA'
        ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return signingKeyFromJwk({ ...(privateKey.export({ format: 'jwk' }) as JWK), alg });
}

/** Builds a DevSigningKey from a private JWK (as stored in a key file); throws UsageError when it is not usable. */
export async function signingKeyFromJwk(jwk: JWK): Promise<DevSigningKey> {
  const alg = jwk.alg as DevAlg;
  if (!DEV_ALGORITHMS.includes(alg)) throw new UsageError(`signing key: alg must be one of ${DEV_ALGORITHMS.join(', ')}, got ${String(jwk.alg)}`);
  const expectedKty = alg === 'ES256' ? 'EC' : alg === 'EdDSA' ? 'OKP' : 'RSA';
  if (jwk.kty !== expectedKty) throw new UsageError(`signing key: alg ${alg} needs a ${expectedKty} key, got kty ${String(jwk.kty)}`);
  if (jwk.d === undefined) throw new UsageError('signing key: a private key is needed (the JWK has no "d")');
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: jwk as JsonWebKey, format: 'jwk' });
  } catch (err) {
    throw new UsageError(`signing key: not a valid private JWK (${(err as Error).message})`);
  }
  const bare = createPublicKey(privateKey).export({ format: 'jwk' }) as JWK;
  const kid = jwk.kid ?? (await calculateJwkThumbprint(bare));
  const publicJwk: JWK = { ...bare, kid, alg, use: 'sig' };
  return { kid, alg, privateJwk: { ...jwk, kid, alg, use: 'sig' }, privateKey, publicJwk };
}

/**
 * Reads the dev issuer's signing keys from a JWKS file of private keys, or
 * creates the file (mode 0600) with one new key when it does not exist, so
 * tokens stay verifiable across restarts.
 */
export async function loadOrCreateKeyFile(path: string, alg: DevAlg = 'RS256'): Promise<DevSigningKey[]> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UsageError(`cannot read key file ${path}: ${describeFsError(err)}`);
    }
    const key = await generateSigningKey(alg);
    try {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, `${JSON.stringify({ keys: [key.privateJwk] }, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    } catch (werr) {
      throw new UsageError(`cannot create key file ${path}: ${describeFsError(werr)}`);
    }
    return [key];
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new UsageError(`key file ${path}: not JSON (expected {"keys": [<private JWK>, ...]})`);
  }
  const keys = (doc as { keys?: unknown })?.keys;
  if (!Array.isArray(keys) || keys.length === 0) throw new UsageError(`key file ${path}: expected {"keys": [<private JWK>, ...]} with at least one key`);
  const out: DevSigningKey[] = [];
  for (const [i, jwk] of keys.entries()) {
    try {
      out.push(await signingKeyFromJwk(jwk as JWK));
    } catch (err) {
      throw new UsageError(`key file ${path}: keys.${i}: ${(err as Error).message.replace(/^signing key: /, '')}`);
    }
  }
  return out;
}
