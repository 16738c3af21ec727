import { createPublicKey, KeyObject } from 'node:crypto';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { SignJWT, exportJWK, type CryptoKey, type JWK } from 'jose';
import { createDevIssuer, type DevIssuer } from '../../src/dev/issuer.js';
import type { DevAlg } from '../../src/dev/keys.js';
import type { DevClient, DevClientAuthMethod } from '../../src/dev/provider.js';
import { accessTokenClaims, signToken, type SignOptions } from './tokens.js';

export interface TestIdpClient {
  clientId: string;
  clientSecret?: string;
  authMethod?: DevClientAuthMethod;
  /** Public keys for private_key_jwt; derived from `privateKey` when omitted. */
  jwks?: { keys: JWK[] };
  /** Lets getToken() authenticate this client with private_key_jwt. */
  privateKey?: { key: CryptoKey | KeyObject; alg: string; kid?: string };
  extraClaims?: Record<string, unknown>;
  subject?: string;
  defaultAudience?: string;
  allowAssertionReuse?: boolean;
}

export interface TestIdpOptions {
  alg?: DevAlg;
  clients?: TestIdpClient[];
  /** Default 300. */
  accessTokenTtlSeconds?: number;
}

/** `'503'`: every request gets a 503; `'reset'`: connections are destroyed; `'hang'`: requests are never answered; false: up. */
export type DownMode = '503' | 'reset' | 'hang' | false;

export interface TestIdp {
  issuer: string;
  discoveryUrl: string;
  jwksUri: string;
  tokenEndpoint: string;
  port: number;
  /** Requests received per endpoint (including those refused while down). */
  counts: { discovery: number; jwks: number; token: number; other: number };
  resetCounts(): void;
  /** A real client_credentials call; throws with the IdP's error when it is refused. */
  getToken(clientId: string, audience: string, opts?: { scopes?: string[]; audienceParam?: 'resource' | 'audience' }): Promise<string>;
  /** Raw token endpoint exchange (form body as given, optional Basic auth), for error-path tests. */
  tokenRequest(form: Record<string, string | string[]>, basic?: { user: string; password: string }): Promise<{ status: number; body: any }>;
  /** The IdP's real signing keys, the current one first. */
  signingKeys: { private: KeyObject; kid: string; alg: DevAlg }[];
  /**
   * Signs a token with the IdP's current key (or `kid`). Claims default to a
   * valid access token from this issuer (see accessTokenClaims); `undefined` removes a claim.
   */
  mint(claims: Record<string, unknown> & { aud: string | string[] }, opts?: { kid?: string; typ?: string | null; header?: Record<string, unknown> }): Promise<string>;
  rotateKeys(opts?: { keepOld?: boolean }): Promise<void>;
  setDown(mode: DownMode | true): void;
  /** Serves this body (HTTP 200, JSON) at the JWKS endpoint instead of the provider's keys; undefined to stop. */
  publishJwks(body: unknown): void;
  /** Closes the listener (connections cut); `restart` listens again on the same port. */
  stop(): Promise<void>;
  restart(): Promise<void>;
  close(): Promise<void>;
}

const DEFAULT_CLIENTS: TestIdpClient[] = [
  { clientId: 'orders', clientSecret: 'orders-secret' },
  { clientId: 'payments', clientSecret: 'payments-secret' },
];

/**
 * A real OpenID provider (oidc-provider, via the dev issuer) on
 * 127.0.0.1:<random port>, with request counters and switches for outages.
 */
export async function startIdp(opts: TestIdpOptions = {}): Promise<TestIdp> {
  const clients = opts.clients ?? DEFAULT_CLIENTS;
  const devClients: DevClient[] = [];
  for (const c of clients) devClients.push(await toDevClient(c));

  let down: DownMode = false;
  let jwksOverride: string | undefined;
  let issuer: DevIssuer | undefined;
  const counts = { discovery: 0, jwks: 0, token: 0, other: 0 };
  const sockets = new Set<Socket>();
  const hanging = new Set<ServerResponse>();

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/.well-known/openid-configuration') counts.discovery++;
    else if (path === '/jwks') counts.jwks++;
    else if (path === '/token') counts.token++;
    else counts.other++;
    if (down === 'reset') return void req.socket.destroy();
    if (down === 'hang') return void hanging.add(res);
    if (down === '503' || !issuer) {
      return void res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"temporarily_unavailable"}');
    }
    if (path === '/jwks' && jwksOverride !== undefined) return void res.writeHead(200, { 'content-type': 'application/json' }).end(jwksOverride);
    issuer.handle(req, res);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
  const stopListening = () =>
    new Promise<void>((resolve) => {
      if (!server.listening) return resolve();
      for (const res of hanging) res.destroy();
      hanging.clear();
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });

  const port = await listen(0);
  const base = `http://127.0.0.1:${port}`;
  issuer = await createDevIssuer({
    issuer: base,
    clients: devClients,
    alg: opts.alg ?? 'RS256',
    ...(opts.accessTokenTtlSeconds !== undefined ? { accessTokenTtlSeconds: opts.accessTokenTtlSeconds } : {}),
  });
  const dev = issuer;

  const tokenRequest: TestIdp['tokenRequest'] = async (form, basic) => {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(form)) for (const one of Array.isArray(v) ? v : [v]) body.append(k, one);
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    if (basic) headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(basic.user)}:${encodeURIComponent(basic.password)}`).toString('base64')}`;
    const res = await fetch(dev.tokenEndpoint, { method: 'POST', headers, body });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* leave as text */
    }
    return { status: res.status, body: parsed };
  };

  const idp: TestIdp = {
    issuer: base,
    discoveryUrl: `${base}/.well-known/openid-configuration`,
    jwksUri: dev.jwksUri,
    tokenEndpoint: dev.tokenEndpoint,
    port,
    counts,
    resetCounts() {
      counts.discovery = counts.jwks = counts.token = counts.other = 0;
    },
    async getToken(clientId, audience, o = {}) {
      const client = clients.find((c) => c.clientId === clientId);
      if (!client) throw new Error(`startIdp: no client "${clientId}" configured`);
      const form: Record<string, string> = { grant_type: 'client_credentials', [o.audienceParam ?? 'resource']: audience };
      if (o.scopes?.length) form.scope = o.scopes.join(' ');
      let basic: { user: string; password: string } | undefined;
      const method = client.authMethod ?? (client.clientSecret ? 'client_secret_basic' : 'private_key_jwt');
      if (method === 'client_secret_basic') basic = { user: client.clientId, password: client.clientSecret! };
      else if (method === 'client_secret_post') Object.assign(form, { client_id: client.clientId, client_secret: client.clientSecret! });
      else {
        if (!client.privateKey) throw new Error(`startIdp: client "${clientId}" uses private_key_jwt but has no privateKey to sign with`);
        Object.assign(form, {
          client_id: client.clientId,
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          client_assertion: await clientAssertion(client.clientId, dev.tokenEndpoint, client.privateKey),
        });
      }
      const res = await tokenRequest(form, basic);
      if (res.status !== 200) throw new Error(`token request for ${clientId} -> ${audience} failed: HTTP ${res.status} ${JSON.stringify(res.body)}`);
      return res.body.access_token as string;
    },
    tokenRequest,
    get signingKeys() {
      return dev.signingKeys.map((k) => ({ private: k.privateKey, kid: k.kid, alg: k.alg }));
    },
    async mint(claims, o = {}) {
      const key = o.kid ? dev.signingKeys.find((k) => k.kid === o.kid) : dev.signingKeys[0];
      if (!key) throw new Error(`mint: no signing key with kid ${o.kid}`);
      const sign: SignOptions = { key: key.privateKey, alg: key.alg, kid: key.kid };
      if (o.typ !== undefined) sign.typ = o.typ;
      if (o.header) sign.header = o.header;
      return signToken(accessTokenClaims({ iss: base, aud: claims.aud }, claims), sign);
    },
    async rotateKeys(o = {}) {
      await dev.rotateKeys(o.keepOld === false ? { keepOld: false } : {});
    },
    publishJwks(body) {
      jwksOverride = body === undefined ? undefined : JSON.stringify(body);
    },
    setDown(mode) {
      const next: DownMode = mode === true ? '503' : mode;
      if (down === 'hang' && next !== 'hang') {
        for (const res of hanging) res.destroy();
        hanging.clear();
      }
      down = next;
    },
    stop: stopListening,
    async restart() {
      await stopListening();
      await listen(port);
    },
    close: stopListening,
  };
  return idp;
}

async function toDevClient(c: TestIdpClient): Promise<DevClient> {
  const out: DevClient = { clientId: c.clientId };
  if (c.clientSecret !== undefined) out.clientSecret = c.clientSecret;
  if (c.authMethod !== undefined) out.authMethod = c.authMethod;
  if (c.extraClaims !== undefined) out.extraClaims = c.extraClaims;
  if (c.subject !== undefined) out.subject = c.subject;
  if (c.defaultAudience !== undefined) out.defaultAudience = c.defaultAudience;
  if (c.allowAssertionReuse !== undefined) out.allowAssertionReuse = c.allowAssertionReuse;
  if (c.jwks) out.jwks = c.jwks;
  else if (c.privateKey) {
    const pub = await exportJWK(publicKeyOf(c.privateKey.key));
    out.jwks = { keys: [{ ...pub, alg: c.privateKey.alg, use: 'sig', ...(c.privateKey.kid ? { kid: c.privateKey.kid } : {}) }] };
  }
  return out;
}

function publicKeyOf(key: CryptoKey | KeyObject): KeyObject {
  // jose 6 keys are WebCrypto CryptoKeys (FIELD-NOTES); KeyObject.from bridges them.
  return createPublicKey(key instanceof KeyObject ? key : KeyObject.from(key as Parameters<typeof KeyObject.from>[0]));
}

/** A private_key_jwt client assertion (RFC 7523 §3): iss = sub = client_id, aud = token endpoint, short-lived, unique jti. */
export async function clientAssertion(clientId: string, audience: string, key: { key: CryptoKey | KeyObject; alg: string; kid?: string }, lifetimeSeconds = 60): Promise<string> {
  const jwt = new SignJWT({})
    .setProtectedHeader({ alg: key.alg, ...(key.kid ? { kid: key.kid } : {}) })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(audience)
    .setIssuedAt()
    .setExpirationTime(`${lifetimeSeconds}s`)
    .setJti(randomUUID());
  return jwt.sign(key.key);
}
