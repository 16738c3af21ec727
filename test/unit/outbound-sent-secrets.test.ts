import { describe, expect, it } from 'vitest';
import { sentSecrets, withoutSecrets } from '../../src/outbound/sources/sent-secrets.js';

describe('withoutSecrets: what an IdP quotes of the request', () => {
  const secret = 'Sup3r:Secr3t/Value+x=';
  const secrets = sentSecrets(new URLSearchParams({ client_id: 'orders', client_secret: secret }), {});

  it('masks the credential as sent and form-encoded', () => {
    expect(withoutSecrets(`bad secret ${secret}`, secrets)).toBe('bad secret [redacted]');
    expect(withoutSecrets(`client_secret=${new URLSearchParams({ v: secret }).toString().slice(2)}&x`, secrets)).toBe('client_secret=[redacted]&x');
  });

  it('masks a shortened or re-cased copy too: any run of 8 of its characters, in any case', () => {
    expect(withoutSecrets('secret is SUP3R:SECR3T/VALUE+X= / Sup3r:Secr…', secrets)).toBe('secret is [redacted] / [redacted]…');
    expect(withoutSecrets('tail: 3t/Value+x', secrets)).toBe('tail: [redacted]');
    // Shorter runs are words like any other.
    expect(withoutSecrets('invalid_client: Sup3r is not known', secrets)).toBe('invalid_client: Sup3r is not known');
  });

  it("masks the values of the endpoint URL's query, and the query whole", () => {
    const withQuery = sentSecrets(new URLSearchParams(), {}, 'https://idp.example/token?api_key=K3y%2BSecret-42&tenant=acme');
    expect(withoutSecrets('no route for POST /token?api_key=K3y%2BSecret-42&tenant=acme', withQuery)).toBe('no route for POST /token?[redacted]');
    expect(withoutSecrets('unknown key K3y+Secret-42', withQuery)).toBe('unknown key [redacted]');
    // Without a query, or without an endpoint, nothing more is masked.
    expect(sentSecrets(new URLSearchParams(), {}, 'https://idp.example/token')).toEqual({ whole: [], pieces: [] });
  });

  it('masks the Basic value and pair whole, but a client id alone, even a long one, stays readable', () => {
    const basic = sentSecrets(new URLSearchParams(), { authorization: `Basic ${Buffer.from(`payments-service-client:${secret}`).toString('base64')}` });
    expect(withoutSecrets(`unknown client payments-service-client (payments-service-client:${secret})`, basic)).toBe('unknown client payments-service-client ([redacted])');
    expect(withoutSecrets('secret SUP3R:SECR3T/V', basic)).toBe('secret [redacted]');
  });
});
