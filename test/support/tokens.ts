import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, CompactSign, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';

/** Anything jose can sign with: a CryptoKey, a KeyObject, or raw bytes for HS*. */
export type SigningKey = CryptoKey | KeyObject | Uint8Array;

export type TestAlg = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'ES512' | 'EdDSA';

export interface TestKeyPair {
  alg: TestAlg;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  /** Public JWK with kid, alg and use set: put it in a JWKS. */
  publicJwk: JWK;
  /** Private JWK (e.g. to write a private_key_jwt key file). */
  privateJwk: JWK;
}

/** A fresh extractable key pair for `alg`; `kid` is the RFC 7638 thumbprint unless given. */
export async function testKeyPair(alg: TestAlg = 'RS256', kid?: string): Promise<TestKeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
  const pub = await exportJWK(publicKey);
  const id = kid ?? (await calculateJwkThumbprint(pub));
  const publicJwk: JWK = { ...pub, kid: id, alg, use: 'sig' };
  const privateJwk: JWK = { ...(await exportJWK(privateKey)), kid: id, alg, use: 'sig' };
  return { alg, kid: id, privateKey, publicKey, publicJwk, privateJwk };
}

/**
 * Public JWKs an IdP might publish that look like signing keys but verify nothing: an RSA key under the 2048 bits
 * RS* and PS* require (RFC 7518 §3.3), an RSA key whose modulus is a few zero bytes, and an EC point not on P-256.
 * `kid` is set as given, or left out with null.
 */
export async function unusableJwks(kid: (name: string) => string | null = (name) => name): Promise<JWK[]> {
  const withKid = (jwk: JWK, name: string): JWK => {
    const id = kid(name);
    return { ...jwk, use: 'sig', ...(id === null ? {} : { kid: id }) };
  };
  const rsa1024 = await exportJWK(generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey);
  const ec = await exportJWK(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey);
  return [
    withKid(rsa1024, 'rsa-1024'),
    withKid({ kty: 'RSA', n: 'AAAA', e: 'AQAB' }, 'rsa-broken'),
    withKid({ kty: 'EC', crv: 'P-256', x: ec.x!, y: ec.x! }, 'ec-off-curve'),
  ];
}

export interface SignOptions {
  key: SigningKey;
  alg: string;
  /** Omitted from the header when undefined. */
  kid?: string | undefined;
  /** JOSE `typ`; default `at+jwt` (RFC 9068). Pass null to leave it out. */
  typ?: string | null;
  /** Extra or overriding header parameters (jku, x5u, crit, ...). */
  header?: Record<string, unknown>;
}

/**
 * Signs an arbitrary payload as a compact JWS. Claims are serialised as
 * given, so a test can send wrong types (`exp: "soon"`) or omit anything.
 */
export async function signToken(claims: Record<string, unknown>, opts: SignOptions): Promise<string> {
  const header: Record<string, unknown> = { alg: opts.alg };
  if (opts.typ !== null) header.typ = opts.typ ?? 'at+jwt';
  if (opts.kid !== undefined) header.kid = opts.kid;
  Object.assign(header, opts.header);
  return new CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
    .setProtectedHeader(header as { alg: string })
    .sign(opts.key);
}

/** Seconds since the epoch (for `iat`/`exp`), from an explicit ms time or now. */
export function epochSeconds(nowMs: number = Date.now()): number {
  return Math.floor(nowMs / 1000);
}

/** Standard access token claims for tests: iss, sub, aud, iat, exp (+5 min), jti; `overrides` win, `undefined` removes. */
export function accessTokenClaims(base: { iss: string; aud: string | string[]; sub?: string }, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const now = epochSeconds();
  const claims: Record<string, unknown> = { iss: base.iss, sub: base.sub ?? 'orders', aud: base.aud, iat: now, exp: now + 300, jti: randomUUID(), ...overrides };
  for (const [k, v] of Object.entries(claims)) if (v === undefined) delete claims[k];
  return claims;
}

/** base64url of a string, bytes or a JSON value (objects are JSON-serialised). */
export function b64url(value: unknown): string {
  if (typeof value === 'string') return Buffer.from(value, 'utf8').toString('base64url');
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64url');
  return Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
}

/** Assembles `header.payload.signature` from parts exactly as given (objects are JSON-encoded, strings taken as raw segments). */
export function rawToken(header: unknown, payload: unknown, signature = ''): string {
  const seg = (v: unknown) => (typeof v === 'string' ? v : b64url(v));
  return `${seg(header)}.${seg(payload)}.${signature}`;
}

/** An unsecured JWT (`alg: none`, empty signature; RFC 7519 §6). */
export function algNoneToken(claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  return rawToken({ alg: 'none', typ: 'at+jwt', ...header }, claims, '');
}

/** Splits a compact JWS and decodes header and payload without verifying anything. */
export function decodeToken(token: string): { header: Record<string, unknown>; payload: Record<string, unknown>; signature: string } {
  const [h = '', p = '', s = ''] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
    signature: s,
  };
}

/** Returns the token with payload claims changed (`undefined` removes) and the original signature kept, so it no longer verifies. */
export function tamperPayload(token: string, changes: Record<string, unknown>): string {
  const { payload, signature } = decodeToken(token);
  const next = { ...payload, ...changes };
  for (const [k, v] of Object.entries(changes)) if (v === undefined) delete next[k];
  const [h = ''] = token.split('.');
  return rawToken(h, next, signature);
}

/** Returns the token with header parameters changed and the original signature kept. */
export function tamperHeader(token: string, changes: Record<string, unknown>): string {
  const { header, signature } = decodeToken(token);
  const [, p = ''] = token.split('.');
  return rawToken({ ...header, ...changes }, p, signature);
}

/** Flips one bit in the signature: same header and payload, signature invalid. */
export function corruptSignature(token: string): string {
  const [h, p, s = ''] = token.split('.');
  const sig = Buffer.from(s, 'base64url');
  if (sig.length > 0) sig[sig.length - 1] = sig[sig.length - 1]! ^ 0x01;
  return `${h}.${p}.${sig.toString('base64url')}`;
}
