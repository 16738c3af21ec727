import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { decodeProtectedHeader, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import { ConfigError, TokenUnavailableError } from '../../src/errors.js';
import { basicAuthorization, createClientAuth, formEncode, JWT_BEARER_ASSERTION } from '../../src/outbound/sources/client-auth.js';

const dir = mkdtempSync(join(tmpdir(), 'outbound-client-auth-'));
let n = 0;
function file(content: string): string {
  const p = join(dir, `f${n++}`);
  writeFileSync(p, content);
  return p;
}
const clock = { now: () => Date.now(), monotonic: () => performance.now() };
const deps = { clock, configPath: 'outbound.tokenSource' };
const ENDPOINT = 'https://idp.example/oauth2/token';

/** The decoding oidc-provider (and RFC 6749 Appendix B) applies to each Basic credential half. */
function decodeBasicHalf(s: string): string {
  return decodeURIComponent(s.replace(/\+/g, '%20'));
}

describe('client_secret_basic (RFC 6749 §2.3.1)', () => {
  it('form-urlencodes id and secret before base64, so ":" and non-ASCII survive', () => {
    const header = basicAuthorization('my client', 'p@ss:w0rd+/&é');
    expect(header.startsWith('Basic ')).toBe(true);
    const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
    expect(decoded).toBe('my+client:p%40ss%3Aw0rd%2B%2F%26%C3%A9');
  });

  it('round-trips any id and secret through the server-side decoding', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, unit: 'grapheme' }), fc.string({ minLength: 1, unit: 'grapheme' }), (id, secret) => {
        const decoded = Buffer.from(basicAuthorization(id, secret).slice(6), 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        expect(decodeBasicHalf(decoded.slice(0, i))).toBe(id);
        expect(decodeBasicHalf(decoded.slice(i + 1))).toBe(secret);
      }),
    );
  });

  it('encodes space as + and leaves only unreserved form characters', () => {
    expect(formEncode("a b*-._~!'()")).toBe("a+b*-._%7E%21%27%28%29");
  });

  it('is the default and reads clientSecretFile once, trimming the trailing newline', async () => {
    const path = file('from-file\n');
    const auth = createClientAuth({ clientId: 'orders', clientSecretFile: path }, deps);
    const form = new URLSearchParams();
    const headers: Record<string, string> = {};
    await auth.apply(form, headers, ENDPOINT);
    expect(auth.method).toBe('client_secret_basic');
    expect(headers.authorization).toBe(basicAuthorization('orders', 'from-file'));
    expect([...form.keys()]).toEqual([]);
    // "Read once at start" (README): a request does not read the file again, so a half-written or emptied file
    // never reaches the IdP; a new secret comes in with a reload, which builds a new client auth.
    writeFileSync(path, 'rotated-on-disk\n');
    const later: Record<string, string> = {};
    await auth.apply(new URLSearchParams(), later, ENDPOINT);
    expect(later.authorization).toBe(basicAuthorization('orders', 'from-file'));
  });

  it('names the key path when the secret file is missing or empty', () => {
    expect(() => createClientAuth({ clientId: 'o', clientSecretFile: join(dir, 'nope') }, deps)).toThrow(ConfigError);
    expect(() => createClientAuth({ clientId: 'o', clientSecretFile: join(dir, 'nope') }, deps)).toThrow(
      /outbound\.tokenSource\.clientSecretFile: cannot read .*nope: no such file/,
    );
    expect(() => createClientAuth({ clientId: 'o', clientSecretFile: file('\n') }, deps)).toThrow(/clientSecretFile: the client secret is empty/);
    // Only blanks is as empty: a file of spaces was sent as the secret.
    expect(() => createClientAuth({ clientId: 'o', clientSecretFile: file('   \t\n') }, deps)).toThrow(/clientSecretFile: the client secret is empty/);
    expect(() => createClientAuth({ clientId: 'o', clientSecret: '  ' }, deps)).toThrow(/clientSecret: the client secret is empty/);
  });
});

describe('client_secret_post', () => {
  it('puts id and secret in the form and sends no Authorization', async () => {
    const auth = createClientAuth({ clientId: 'orders', clientSecret: 's3cret', authMethod: 'client_secret_post' }, deps);
    const form = new URLSearchParams();
    const headers: Record<string, string> = {};
    await auth.apply(form, headers, ENDPOINT);
    expect(Object.fromEntries(form)).toEqual({ client_id: 'orders', client_secret: 's3cret' });
    expect(headers.authorization).toBeUndefined();
  });
});

type KeyCase = { name: string; alg: string; pair: () => { privateKey: KeyObject; publicKey: KeyObject }; pem: (k: KeyObject) => string };
const rsa = () => generateKeyPairSync('rsa', { modulusLength: 2048 });
const CASES: KeyCase[] = [
  { name: 'RSA PKCS#8 PEM', alg: 'RS256', pair: rsa, pem: (k) => k.export({ type: 'pkcs8', format: 'pem' }).toString() },
  { name: 'RSA PKCS#1 PEM', alg: 'RS256', pair: rsa, pem: (k) => k.export({ type: 'pkcs1', format: 'pem' }).toString() },
  { name: 'EC P-256 SEC1 PEM', alg: 'ES256', pair: () => generateKeyPairSync('ec', { namedCurve: 'P-256' }), pem: (k) => k.export({ type: 'sec1', format: 'pem' }).toString() },
  { name: 'EC P-384 PKCS#8 PEM', alg: 'ES384', pair: () => generateKeyPairSync('ec', { namedCurve: 'P-384' }), pem: (k) => k.export({ type: 'pkcs8', format: 'pem' }).toString() },
  { name: 'Ed25519 PKCS#8 PEM', alg: 'EdDSA', pair: () => generateKeyPairSync('ed25519'), pem: (k) => k.export({ type: 'pkcs8', format: 'pem' }).toString() },
];

async function assertion(auth: ReturnType<typeof createClientAuth>): Promise<{ form: URLSearchParams; headers: Record<string, string> }> {
  const form = new URLSearchParams();
  const headers: Record<string, string> = {};
  await auth.apply(form, headers, ENDPOINT);
  return { form, headers };
}

describe('private_key_jwt (RFC 7523)', () => {
  for (const c of CASES) {
    it(`signs a client assertion with a ${c.name} key, alg ${c.alg} taken from the key`, async () => {
      const { privateKey, publicKey } = c.pair();
      const auth = createClientAuth({ clientId: 'orders', privateKeyFile: file(c.pem(privateKey)) }, deps);
      expect(auth.method).toBe('private_key_jwt');
      const { form, headers } = await assertion(auth);
      expect(headers.authorization).toBeUndefined();
      expect(form.get('client_id')).toBe('orders');
      expect(form.get('client_assertion_type')).toBe(JWT_BEARER_ASSERTION);
      const jwt = form.get('client_assertion')!;
      expect(decodeProtectedHeader(jwt).alg).toBe(c.alg);
      const { payload } = await jwtVerify(jwt, publicKey, { issuer: 'orders', subject: 'orders', audience: ENDPOINT, algorithms: [c.alg] });
      expect(payload.exp! - payload.iat!).toBe(60);
      expect(typeof payload.jti).toBe('string');
      const again = (await assertion(auth)).form.get('client_assertion')!;
      expect((await jwtVerify(again, publicKey, { algorithms: [c.alg] })).payload.jti).not.toBe(payload.jti);
    });
  }

  it('takes alg and kid from a JWK, or from a JWK Set with one private key', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'PS256', kid: 'k-1' };
    for (const text of [JSON.stringify(jwk), JSON.stringify({ keys: [{ ...createPublicKey(privateKey).export({ format: 'jwk' }), kid: 'pub' }, jwk] })]) {
      const { form } = await assertion(createClientAuth({ clientId: 'orders', privateKeyFile: file(text) }, deps));
      const jwt = form.get('client_assertion')!;
      expect(decodeProtectedHeader(jwt)).toMatchObject({ alg: 'PS256', kid: 'k-1' });
      await jwtVerify(jwt, publicKey, { algorithms: ['PS256'] });
    }
  });

  it("copies the JWK's certificate thumbprints into the header (Entra ID certificate credentials need x5t#S256)", async () => {
    const { privateKey } = rsa();
    const jwk = { ...privateKey.export({ format: 'jwk' }), 'x5t#S256': 'dGh1bWJwcmludA', x5t: 'c2hhMQ' };
    const { form } = await assertion(createClientAuth({ clientId: 'o', privateKeyFile: file(JSON.stringify(jwk)) }, deps));
    expect(decodeProtectedHeader(form.get('client_assertion')!)).toEqual({ alg: 'RS256', 'x5t#S256': 'dGh1bWJwcmludA', x5t: 'c2hhMQ' });
  });

  it('privateKeyAlg overrides the default when the key supports it', async () => {
    const { privateKey } = rsa();
    const { form } = await assertion(createClientAuth({ clientId: 'o', privateKeyFile: file(CASES[0]!.pem(privateKey)), privateKeyAlg: 'RS512' }, deps));
    expect(decodeProtectedHeader(form.get('client_assertion')!).alg).toBe('RS512');
  });

  it('refuses at build time, naming the key path: wrong alg, public key, garbage, missing file', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const attempt = (cfg: Record<string, string>) => () => createClientAuth({ clientId: 'o', ...cfg }, deps);
    expect(attempt({ privateKeyFile: file(pem), privateKeyAlg: 'RS256' })).toThrow(/outbound\.tokenSource\.privateKeyAlg: RS256 cannot be used with this ec key \(possible: ES256\)/);
    expect(attempt({ privateKeyFile: file(JSON.stringify(publicKey.export({ format: 'jwk' }))) })).toThrow(/privateKeyFile: the JWK is a public key/);
    expect(attempt({ privateKeyFile: file(publicKey.export({ type: 'spki', format: 'pem' }).toString()) })).toThrow(/privateKeyFile: not a private key/);
    expect(attempt({ privateKeyFile: file('hello') })).toThrow(/privateKeyFile: not a private key/);
    // A key protected by a passphrase is said to be one (OpenSSL alone would only fail to read it).
    for (const type of ['pkcs8', 'sec1'] as const) {
      const encrypted = privateKey.export({ type, format: 'pem', cipher: 'aes-256-cbc', passphrase: 'pw' }).toString();
      expect(attempt({ privateKeyFile: file(encrypted) }), type).toThrow(/privateKeyFile: the private key is encrypted with a passphrase, which the sidecar cannot supply/);
    }
    expect(attempt({ privateKeyFile: file(JSON.stringify({ keys: [] })) })).toThrow(/exactly one private key, found 0/);
    // Keys that read but that jose cannot sign with: each token request would fail instead of startup.
    const short = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey;
    for (const text of [short.export({ type: 'pkcs8', format: 'pem' }).toString(), JSON.stringify(short.export({ format: 'jwk' }))]) {
      expect(attempt({ privateKeyFile: file(text) })).toThrow(/privateKeyFile: the RSA key has 1024 bits; RS256 and PS256 need at least 2048/);
    }
    const pss = generateKeyPairSync('rsa-pss', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expect(attempt({ privateKeyFile: file(pss), privateKeyAlg: 'PS256' })).toThrow(/privateKeyFile: an RSA-PSS key \(id-RSASSA-PSS\) cannot sign here; use an RSA key/);
    expect(attempt({ privateKeyFile: join(dir, 'missing.pem') })).toThrow(/privateKeyFile: cannot read .*missing\.pem: no such file/);
    for (const bad of [attempt({ privateKeyFile: file('hello') }), attempt({ privateKeyFile: join(dir, 'missing.pem') })]) {
      expect(bad).toThrow(ConfigError);
    }
  });
});

describe('clientAssertionFile (federated jwt-bearer client assertion)', () => {
  it('re-reads the file at every request, so a rotated assertion is used at once', async () => {
    const path = file('first.assertion.jwt\n');
    const auth = createClientAuth({ clientId: 'orders', clientAssertionFile: path }, deps);
    expect((await assertion(auth)).form.get('client_assertion')).toBe('first.assertion.jwt');
    writeFileSync(path, 'second.assertion.jwt');
    const { form } = await assertion(auth);
    expect(Object.fromEntries(form)).toEqual({ client_id: 'orders', client_assertion_type: JWT_BEARER_ASSERTION, client_assertion: 'second.assertion.jwt' });
  });

  it('a missing or empty file is a TokenUnavailableError at request time, not a crash at start', async () => {
    const auth = createClientAuth({ clientId: 'orders', clientAssertionFile: join(dir, 'not-yet') }, deps);
    await expect(assertion(auth)).rejects.toThrow(TokenUnavailableError);
    await expect(assertion(auth)).rejects.toThrow(/cannot read clientAssertionFile .*not-yet: no such file/);
    const empty = createClientAuth({ clientId: 'orders', clientAssertionFile: file('') }, deps);
    await expect(assertion(empty)).rejects.toThrow(/is empty/);
  });
});
