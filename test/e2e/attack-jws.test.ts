import { createPublicKey } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assemble,
  bearerRequest,
  confusionSecrets,
  expectRefused,
  flushLogs,
  hmacToken,
  jweCompact,
  jwsJson,
  psychicSignatures,
  rawExchange,
  rawRequestBytes,
  signRaw,
  startAttackerServer,
  startRecordingApp,
  tokenLeaks,
  unencodedPayloadToken,
  type AttackerServer,
  type RecordingApp,
  type Refusal,
} from '../support/attacks.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { runCli, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { b64url, epochSeconds, signToken, testKeyPair, type TestKeyPair } from '../support/tokens.js';

/**
 * The JWS attack catalogue, RFC 8725 §3 item by item plus the advisories
 * that broke other JWT stacks. Every token goes to a sidecar started through
 * the CLI in front of a recording app; each refusal is checked for status,
 * reason code (body and WWW-Authenticate), an app that received nothing and
 * an output free of the token (see expectRefused). The sidecar has no rules,
 * so the verifier alone stands between the attacker and the app.
 */

let rsa: TestIdp;
let ec: TestIdp;
let ed: TestIdp;
let app: RecordingApp;
let attacker: AttackerServer;
let evil: TestKeyPair;
let sidecar: SidecarProcess;

beforeAll(async () => {
  [rsa, ec, ed] = await Promise.all([startIdp(), startIdp({ alg: 'ES256' }), startIdp({ alg: 'EdDSA' })]);
  app = await startRecordingApp();
  evil = await testKeyPair('RS256', 'evil');
  attacker = await startAttackerServer(() => ({ keys: [evil.publicJwk] }));
  sidecar = await startSidecar({
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false },
    inbound: { target: app.url, audience: 'orders', issuers: [rsa, ec, ed].map((i) => ({ issuer: i.issuer })) },
  });
});
afterAll(async () => {
  await sidecar?.stop();
  await Promise.all([app?.close(), attacker?.close(), rsa?.close(), ec?.close(), ed?.close()]);
});

const now = () => epochSeconds();
const claims = (idp: TestIdp, over: Record<string, unknown> = {}) => ({ iss: idp.issuer, sub: 'admin', aud: 'orders', iat: now(), exp: now() + 300, ...over });
const keyOf = (idp: TestIdp) => idp.signingKeys[0]!;
const headerOf = (idp: TestIdp, over: Record<string, unknown> = {}) => ({ alg: keyOf(idp).alg, typ: 'at+jwt', kid: keyOf(idp).kid, ...over });
/** Signed with the issuer's real private key: only the attacked detail is wrong. */
const real = (idp: TestIdp, header: Record<string, unknown> | string = headerOf(idp), payload: unknown = claims(idp), opts: Parameters<typeof signRaw>[3] = {}) =>
  signRaw(header, payload, keyOf(idp).private, opts);

/**
 * Tokens the sidecar accepted and passed on. A refused token is searched for in the output by expectRefused; these
 * are searched for at the end, once everything is logged.
 */
const accepted: string[] = [];

const refused = (label: string, token: string, want: Refusal) => expectRefused(sidecar, app, label, bearerRequest(token), want, [token]);
const reject = (reason: string): Refusal => ({ status: 401, reason });

describe('control', () => {
  it('tokens signed by each trusted issuer the way these tests sign them are accepted (so every refusal below is the attack)', async () => {
    for (const idp of [rsa, ec, ed]) {
      const before = app.requests.length;
      const token = real(idp);
      accepted.push(token);
      const ex = await rawExchange(sidecar.inbound!, bearerRequest(token));
      expect(ex.responses[0]!.status, idp.signingKeys[0]!.alg).toBe(200);
      expect(app.requests.slice(before).map((r) => r.headers['x-peer-sub'])).toEqual(['admin']);
    }
  });
});

describe('RFC 8725 §3.1: perform algorithm verification', () => {
  it('CVE-2022-23540: alg none in every spelling, with or without a signature, is unsupported_alg', async () => {
    const realSig = real(rsa).split('.')[2]!;
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      for (const sig of ['', realSig, 'AAAA']) {
        await refused(`alg ${alg} sig ${sig.length}`, assemble({ alg, typ: 'at+jwt' }, claims(rsa), sig), reject('unsupported_alg'));
      }
    }
  });

  it('the header cannot pick another algorithm for a real key: relabelled signatures are refused', async () => {
    const [, payload, sig] = real(rsa).split('.') as [string, string, string];
    const relabel = (alg: string) => `${b64url(headerOf(rsa, { alg }))}.${payload}.${sig}`;
    // PS256 and ES256 are allowed algorithms, but the JWKS entry for this kid is an RS256 key: no key matches.
    await refused('RS256 signature labelled PS256', relabel('PS256'), reject('unknown_key'));
    await refused('RS256 signature labelled ES256', relabel('ES256'), reject('unknown_key'));
    await refused('RS256 signature labelled EdDSA', relabel('EdDSA'), reject('unknown_key'));
    // Outside the issuer's allowlist: refused before any key is looked at.
    await refused('RS256 signature labelled RS512', relabel('RS512'), reject('unsupported_alg'));
  });

  it('algorithms are pinned per issuer: a token really signed with RS384 by the issuer key is unsupported_alg', async () => {
    await refused('RS384 by the real key', real(rsa, headerOf(rsa, { alg: 'RS384' }), claims(rsa), { hash: 'sha384' }), reject('unsupported_alg'));
  });

  it('a header without a usable alg is malformed_token', async () => {
    const [, payload, sig] = real(rsa).split('.') as [string, string, string];
    for (const alg of [undefined, '', 256, ['RS256'], null, { name: 'RS256' }]) {
      const header = headerOf(rsa, { alg });
      if (alg === undefined) delete (header as Record<string, unknown>).alg;
      await refused(`alg ${JSON.stringify(alg)}`, `${b64url(header)}.${payload}.${sig}`, reject('malformed_token'));
    }
  });
});

describe('RFC 8725 §3.2 and §3.5: use appropriate algorithms, no guessable shared secrets', () => {
  it('CVE-2015-9235: HMAC keyed with the issuer public key (PEM, PKCS#1, DER, JWK, modulus) is unsupported_alg', async () => {
    for (const idp of [rsa, ec]) {
      for (const [form, secret] of Object.entries(confusionSecrets(keyOf(idp).private))) {
        for (const alg of ['HS256', 'HS384', 'HS512', 'hs256']) {
          await refused(`${alg} with ${form}`, hmacToken(alg, secret, { typ: 'at+jwt', kid: keyOf(idp).kid }, claims(idp)), reject('unsupported_alg'));
        }
      }
    }
  });

  it('weak shared secrets have nothing to guess: HS256 with an empty or well-known key is unsupported_alg', async () => {
    for (const secret of ['', 'secret', 'orders', 'your-256-bit-secret']) {
      await refused(`HS256 "${secret}"`, hmacToken('HS256', secret, { typ: 'at+jwt' }, claims(rsa)), reject('unsupported_alg'));
    }
  });

  it('a config cannot even name none or HS* (validate exits 1 naming the key)', async () => {
    for (const alg of ['none', 'HS256']) {
      const path = writeConfig({ service: 'x', inbound: { target: 'http://127.0.0.1:1', audience: 'a', issuers: [{ issuer: 'https://i', algorithms: [alg] }] } });
      const r = await runCli(['validate', '--config', path]);
      expect(r.code, alg).toBe(1);
      expect(r.stderr, alg).toContain('inbound.issuers.0.algorithms.0');
    }
  });
});

describe('RFC 8725 §3.3: validate all cryptographic operations', () => {
  it('a nested JWT (cty: JWT) is not unwrapped: an outer token carrying a token is malformed_token', async () => {
    const inner = await signToken(claims(rsa), { key: evil.privateKey, alg: 'RS256', kid: keyOf(rsa).kid });
    await refused('real outer, forged inner', real(rsa, headerOf(rsa, { cty: 'JWT' }), b64url(inner)), reject('malformed_token'));
  });
});

describe('RFC 8725 §3.4: validate cryptographic inputs', () => {
  it('CVE-2022-21449: psychic ECDSA signatures (r = s = 0, r = s = n; raw and DER) are bad_signature', async () => {
    const [header, payload] = real(ec).split('.') as [string, string];
    for (const [form, sig] of Object.entries(psychicSignatures())) {
      await refused(form, `${header}.${payload}.${sig.toString('base64url')}`, reject('bad_signature'));
    }
  });

  it('a DER-encoded ECDSA signature by the real key is bad_signature; the same signature in JOSE raw form is accepted', async () => {
    const payload = claims(ec);
    const raw = real(ec, headerOf(ec), payload, { ecdsa: 'raw' });
    const der = real(ec, headerOf(ec), payload, { ecdsa: 'der' });
    await refused('DER ECDSA', der, reject('bad_signature'));
    const before = app.requests.length;
    expect((await rawExchange(sidecar.inbound!, bearerRequest(raw))).responses[0]!.status).toBe(200);
    expect(app.requests.length).toBe(before + 1);
  });

  it('signatures of the wrong length (truncated, padded, empty) are bad_signature', async () => {
    for (const idp of [rsa, ed]) {
      const [h, p, s] = real(idp).split('.') as [string, string, string];
      const sig = Buffer.from(s, 'base64url');
      await refused('truncated', `${h}.${p}.${sig.subarray(0, sig.length - 1).toString('base64url')}`, reject('bad_signature'));
      await refused('padded', `${h}.${p}.${Buffer.concat([sig, Buffer.from([0])]).toString('base64url')}`, reject('bad_signature'));
      await refused('empty', `${h}.${p}.`, reject('bad_signature'));
    }
  });

  it("a real signature re-spelt through base64url's spare bits (the same bytes, another text) is malformed_token", async () => {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    for (const idp of [rsa, ec, ed]) {
      const [h, p, s] = real(idp).split('.') as [string, string, string];
      const bytes = Buffer.from(s, 'base64url');
      const respelt = [...alphabet].map((c) => s.slice(0, -1) + c).filter((t) => t !== s && Buffer.from(t, 'base64url').equals(bytes));
      // RS256 (256 bytes), ES256 and EdDSA (64 bytes) all leave spare bits in the last character.
      expect(respelt.length, keyOf(idp).alg).toBeGreaterThan(0);
      await refused(`${keyOf(idp).alg} re-spelt`, `${h}.${p}.${respelt[0]}`, reject('malformed_token'));
    }
  });
});

describe('RFC 8725 §3.6 and JOSE serializations: only compact JWS is accepted', () => {
  it('JWE (five segments), also compressed (zip: DEF) or naming a real kid, is malformed_token: nothing is decrypted', async () => {
    await refused('JWE', jweCompact(), reject('malformed_token'));
    await refused('JWE zip', jweCompact({ alg: 'dir', enc: 'A128GCM', zip: 'DEF' }), reject('malformed_token'));
    await refused('JWE real kid', jweCompact({ alg: 'RSA-OAEP', enc: 'A256GCM', kid: keyOf(rsa).kid }), reject('malformed_token'));
  });

  it('JWS JSON serialization (flattened, general; validly signed) is malformed_token', async () => {
    const { flattened, general } = jwsJson(real(rsa));
    await refused('flattened', flattened, reject('malformed_token'));
    await refused('general', general, reject('malformed_token'));
    await refused('base64url(flattened)', b64url(flattened), reject('malformed_token'));
  });

  it('crit with an unknown extension, an empty crit or a non-list crit is malformed_token, even validly signed', async () => {
    for (const crit of [['urn:example:policy'], [], 'exp', ['b64']]) {
      await refused(`crit ${JSON.stringify(crit)}`, real(rsa, headerOf(rsa, { crit, 'urn:example:policy': 1, b64: true })), reject('malformed_token'));
    }
  });

  it('b64: false (RFC 7797 unencoded payload), validly signed, is malformed_token', async () => {
    await refused('b64 false', unencodedPayloadToken(headerOf(rsa), claims(rsa), keyOf(rsa).private), reject('malformed_token'));
    // The same header over a normally encoded payload: still refused, crit names an extension we do not implement.
    const h = b64url({ ...headerOf(rsa), b64: false, crit: ['b64'] });
    await refused('b64 false, encoded payload', real(rsa, h, claims(rsa)), reject('malformed_token'));
  });
});

describe('RFC 8725 §3.7 and payload shape: UTF-8 JSON objects only', () => {
  it('header or payload that is not UTF-8 (invalid bytes, UTF-16, overlong), validly signed, is malformed_token', async () => {
    // (A leading BOM is not in this list: RFC 8259 §8.1 lets parsers ignore it, and both our pre-check and jose do.)
    const json = JSON.stringify(claims(rsa));
    const bad: Record<string, Buffer> = {
      'invalid byte': Buffer.concat([Buffer.from(json.slice(0, -1)), Buffer.from(',"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]),
      'UTF-16LE': Buffer.from(json, 'utf16le'),
      // 0xC0 0xA2 is an overlong encoding of '"': a lenient decoder would read `"x":"a"`.
      'overlong quote': Buffer.concat([Buffer.from(json.slice(0, -1)), Buffer.from(',"x":'), Buffer.from([0xc0, 0xa2]), Buffer.from('a"}')]),
    };
    for (const [form, bytes] of Object.entries(bad)) {
      await refused(`payload ${form}`, real(rsa, b64url(headerOf(rsa)), bytes.toString('base64url')), reject('malformed_token'));
    }
    const header = Buffer.concat([Buffer.from(JSON.stringify(headerOf(rsa)).slice(0, -1)), Buffer.from(',"x":"'), Buffer.from([0xff]), Buffer.from('"}')]);
    await refused('header invalid byte', real(rsa, header.toString('base64url'), claims(rsa)), reject('malformed_token'));
  });

  it('a payload that is not JSON, or JSON but not an object, validly signed, is malformed_token', async () => {
    for (const payload of ['hello', '{"sub":"admin"} trailing', '[]', '[{"sub":"admin"}]', '"admin"', '1', 'null', 'true']) {
      await refused(`payload ${payload}`, real(rsa, headerOf(rsa), b64url(payload)), reject('malformed_token'));
    }
    for (const header of ['[]', '"RS256"', 'null', 'not json']) {
      await refused(`header ${header}`, real(rsa, b64url(header), claims(rsa)), reject('malformed_token'));
    }
  });
});

describe('RFC 8725 §3.10: do not trust received claims (keys come only from the issuer JWKS)', () => {
  it('CVE-2018-0114: an embedded jwk (the attacker key, or even the issuer own key) is malformed_token', async () => {
    const forged = await signToken(claims(rsa), { key: evil.privateKey, alg: 'RS256', kid: 'evil', header: { jwk: evil.publicJwk } });
    await refused('attacker jwk', forged, reject('malformed_token'));
    const ownJwk = createPublicKey(keyOf(rsa).private).export({ format: 'jwk' });
    await refused('issuer jwk, real signature', real(rsa, headerOf(rsa, { jwk: ownJwk })), reject('malformed_token'));
  });

  it('jku, x5u, x5c, an attacker URL as iss or kid: nothing is fetched, the attacker server sees zero connections', async () => {
    const before = { ...rsa.counts };
    for (const header of [{ jku: `${attacker.url}/jwks.json` }, { x5u: `${attacker.url}/cert.pem` }, { x5c: [Buffer.from('cert').toString('base64')] }]) {
      const forged = await signToken(claims(rsa), { key: evil.privateKey, alg: 'RS256', kid: 'evil', header });
      await refused(`attacker ${Object.keys(header)[0]}`, forged, reject('malformed_token'));
      await refused(`real ${Object.keys(header)[0]}`, real(rsa, headerOf(rsa, header)), reject('malformed_token'));
    }
    const asIssuer = await signToken(claims(rsa, { iss: attacker.url }), { key: evil.privateKey, alg: 'RS256', kid: 'evil' });
    await refused('iss = attacker', asIssuer, reject('unknown_issuer'));
    const asKid = await signToken(claims(rsa), { key: evil.privateKey, alg: 'RS256', kid: `${attacker.url}/jwks.json` });
    await refused('kid = attacker URL', asKid, reject('unknown_key'));
    await flushLogs(sidecar);
    expect(attacker.connections).toBe(0);
    expect(attacker.requests).toEqual([]);
    // An unknown kid may cost one JWKS refetch from the real issuer, never a discovery or a token request.
    expect(rsa.counts.jwks - before.jwks).toBeLessThanOrEqual(1);
    expect(rsa.counts.discovery - before.discovery).toBe(0);
    expect(rsa.counts.token + rsa.counts.other - before.token - before.other).toBe(0);
  });

  it('kid traversal and injection (../../dev/null, SQL, NUL, CRLF, a 5000-byte kid) are unknown_key; a non-string kid is malformed_token', async () => {
    const before = rsa.counts.jwks;
    const kids = ['../../dev/null', '/dev/null', '../../../../etc/passwd', "' OR '1'='1", "x' UNION SELECT 'secret' --", 'a\u0000b', 'a\r\nx-peer-sub: admin', '', '*', 'k'.repeat(5000)];
    for (const kid of kids) {
      const forged = await signToken(claims(rsa), { key: evil.privateKey, alg: 'RS256', kid });
      await refused(`kid ${JSON.stringify(kid.slice(0, 30))}`, forged, reject('unknown_key'));
    }
    for (const kid of [1, null, ['a'], { $ne: '' }, true]) {
      await refused(`kid ${JSON.stringify(kid)}`, real(rsa, headerOf(rsa, { kid })), reject('malformed_token'));
    }
    expect(rsa.counts.jwks - before, 'a burst of unknown kids costs at most one refetch (cooldown)').toBeLessThanOrEqual(1);
  });

  it("the kid of another trusted issuer, signed with that issuer's real key, is unknown_key", async () => {
    await refused('iss rsa, kid+key of ec', signRaw(headerOf(ec), claims(rsa), keyOf(ec).private), reject('unknown_key'));
    await refused('iss ec, kid+key of ed', signRaw(headerOf(ed), claims(ec), keyOf(ed).private), reject('unknown_key'));
  });

  it('a real kid with a forged signature is bad_signature', async () => {
    for (const idp of [rsa, ec, ed]) {
      const forger = await testKeyPair(keyOf(idp).alg === 'EdDSA' ? 'EdDSA' : (keyOf(idp).alg as 'RS256' | 'ES256'));
      const forged = await signToken(claims(idp), { key: forger.privateKey, alg: keyOf(idp).alg, kid: keyOf(idp).kid });
      await refused(`forged ${keyOf(idp).alg}`, forged, reject('bad_signature'));
    }
  });
});

describe('CVE-2025-30204 class: oversized tokens and headers full of dots', () => {
  it('an 8194-byte blob, or a token made of dots, is malformed_token (a validly signed token over the limit: inbound-attacks)', async () => {
    await refused('8194 bytes', `${'a'.repeat(4096)}.${'b'.repeat(4095)}.c`, reject('malformed_token'));
    await refused('8000 dots', '.'.repeat(8000), reject('malformed_token'));
    await refused('a. x 4000', 'a.'.repeat(4000), reject('malformed_token'));
    await refused('8192 bytes of dots and base64url', `${'a.'.repeat(4095)}ab`, reject('malformed_token'));
    // A header block larger than Node's limit never reaches the verifier at all.
    const huge = `Bearer ${'.'.repeat(20_000)}`;
    const ex = await rawExchange(sidecar.inbound!, rawRequestBytes('/api', [['Host', 'orders'], ['Authorization', huge]]));
    expect(ex.responses[0]!.status).toBe(431);
    expect(ex.responses[0]!.json()).toEqual({ error: expect.any(String), reason: 'headers_too_large' });
  });

  it('200 concurrent dot bombs are all refused and a real caller is served meanwhile', async () => {
    const before = app.requests.length;
    const bombs = Array.from({ length: 200 }, () => rawExchange(sidecar.inbound!, bearerRequest('.'.repeat(8190))));
    const token = real(rsa);
    accepted.push(token);
    const good = rawExchange(sidecar.inbound!, bearerRequest(token));
    const results = await Promise.all(bombs);
    expect(new Set(results.map((r) => `${r.responses[0]?.status} ${r.responses[0]?.json().reason}`))).toEqual(new Set(['401 malformed_token']));
    expect((await good).responses[0]!.status).toBe(200);
    expect(app.requests.length).toBe(before + 1);
    expect((await fetch(`${sidecar.admin}/healthz`)).status).toBe(200);
  });
});

describe('after the whole catalogue', () => {
  it('the sidecar is still up and its output holds no token text at all', async () => {
    expect(sidecar.child.exitCode).toBeNull();
    await flushLogs(sidecar);
    // Spot-check the raw output for anything that looks like a compact JWS.
    expect(sidecar.output()).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\./);
    // The tokens that were accepted, whole or any segment of them (the regex above needs header and payload side by
    // side). This line once checked a token minted here and never sent, which no output could contain.
    expect(accepted.length).toBeGreaterThan(0);
    expect(tokenLeaks(sidecar.output(), accepted)).toEqual([]);
  });
});
