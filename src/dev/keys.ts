import { generateKeyPairSync, createPrivateKey, createPublicKey, type KeyObject, type JsonWebKey } from 'node:crypto';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { ConfigError, UsageError } from '../errors.js';
import { describeFsError } from '../config/configured-files.js';
import { readBoundedText } from '../config/yaml-file.js';

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
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw new UsageError(`signing key: expected a private JWK (a JSON object), got ${jwk === null ? 'null' : Array.isArray(jwk) ? 'a list' : typeof jwk}`);
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
  const unfit = unfitForAlg(privateKey, alg);
  if (unfit) throw new UsageError(`signing key: ${unfit}`);
  const bare = createPublicKey(privateKey).export({ format: 'jwk' }) as JWK;
  const kid = jwk.kid ?? (await calculateJwkThumbprint(bare));
  const publicJwk: JWK = { ...bare, kid, alg, use: 'sig' };
  return { kid, alg, privateJwk: { ...jwk, kid, alg, use: 'sig' }, privateKey, publicJwk };
}

/**
 * Why a key cannot sign with `alg`, or undefined when it can. oidc-provider takes such a key and the dev issuer would
 * start, then fail every token request with server_error: RS256/PS256 need 2048 bits (RFC 7518 §3.3, §3.5; jose
 * refuses less), ES256 the P-256 curve (§3.4), and EdDSA here is Ed25519 (the one curve oidc-provider signs with).
 */
function unfitForAlg(key: KeyObject, alg: DevAlg): string | undefined {
  const details = key.asymmetricKeyDetails ?? {};
  if (alg === 'RS256' || alg === 'PS256') {
    const bits = details.modulusLength ?? 0;
    return bits < 2048 ? `alg ${alg} needs an RSA key of at least 2048 bits, got ${bits}` : undefined;
  }
  if (alg === 'ES256') return details.namedCurve === 'prime256v1' ? undefined : `alg ES256 needs a P-256 key (crv P-256), got ${curveName(details.namedCurve)}`;
  return key.asymmetricKeyType === 'ed25519' ? undefined : `alg EdDSA needs an Ed25519 key (crv Ed25519), got ${key.asymmetricKeyType === 'ed448' ? 'Ed448' : String(key.asymmetricKeyType)}`;
}

function curveName(namedCurve: string | undefined): string {
  return ({ secp384r1: 'P-384', secp521r1: 'P-521', secp256k1: 'secp256k1' } as Record<string, string>)[namedCurve ?? ''] ?? String(namedCurve);
}

/**
 * `mkdir -p`, one level at a time from the nearest directory that exists: Node's recursive mkdir never returns where
 * a parent cannot be created (under /proc it spins at full CPU), and a missing one should be a one-line error.
 */
function makeDirectories(dir: string): void {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d) && dirname(d) !== d; d = dirname(d)) missing.push(d);
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // A directory after all: made meanwhile by another process (two dev issuers starting together), or a `.` or
      // `..` of the path (`new/../keys`, made as `mkdir -p` makes it). Anything else there (a file, a broken symlink)
      // is a part of the path that is not a directory.
      if (!statSync(d, { throwIfNoEntry: false })?.isDirectory()) throw Object.assign(new Error(`${d} is not a directory`), { code: 'ENOTDIR' });
    }
  }
}

/**
 * Reads the dev issuer's signing keys from a JWKS file of private keys, or
 * creates the file (mode 0600) with one new key when it does not exist, so
 * tokens stay verifiable across restarts.
 */
export async function loadOrCreateKeyFile(path: string, alg: DevAlg = 'RS256'): Promise<DevSigningKey[]> {
  let text: string;
  try {
    // Bounded, as the clients file is: `--key-file /dev/zero` read until the heap ran out.
    text = readBoundedText(path, 1024 * 1024, 'no key file needs');
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(`key file ${path}: ${err.issues[0]!.message}`);
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UsageError(`cannot read key file ${path}: ${describeFsError(err)}`);
    }
    const key = await generateSigningKey(alg);
    try {
      makeDirectories(dirname(path));
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
