import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { TokenRejectedError } from '../../src/errors.js';
import { checkShape, createExtractor } from '../../src/inbound/extractor.js';

const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcmRlcnMifQ.c2lnbmF0dXJl';
const extract = createExtractor({ header: 'authorization', maxTokenBytes: 8192 });

/**
 * Runs `body` (a function body that can call createExtractor) in a worker thread on the extractor's current source,
 * and returns what it returns; fails when the worker has not answered within a minute, stopping it.
 */
async function inWorker(body: string): Promise<unknown> {
  const built = await build({ entryPoints: [fileURLToPath(new URL('../../src/inbound/extractor.ts', import.meta.url))], bundle: true, format: 'cjs', platform: 'node', write: false });
  const code = `${built.outputFiles[0]!.text}\nrequire('node:worker_threads').parentPort.postMessage((() => { ${body} })());`;
  const worker = new Worker(code, { eval: true });
  try {
    return await new Promise((resolve, reject) => {
      const guard = setTimeout(() => reject(new Error('the worker gave no answer in 60 s: the scan is no longer one pass')), 60_000);
      worker.once('message', (m) => (clearTimeout(guard), resolve(m)));
      worker.once('error', (err) => (clearTimeout(guard), reject(err)));
    });
  } finally {
    await worker.terminate();
  }
}

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TokenRejectedError);
    return (err as TokenRejectedError).code;
  }
  throw new Error('expected a rejection');
}

describe('extractor', () => {
  it('takes the token from "Bearer <jwt>", scheme case-insensitive, and returns its segment boundaries', () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
      const got = extract(['Host', 'x', 'Authorization', `${scheme} ${jwt}`]);
      expect(got.token).toBe(jwt);
      expect(got.token.slice(0, got.dot1)).toBe('eyJhbGciOiJSUzI1NiJ9');
      expect(got.token.slice(got.dot1 + 1, got.dot2)).toBe('eyJzdWIiOiJvcmRlcnMifQ');
    }
    expect(extract(['authorization', `Bearer   ${jwt}`]).token).toBe(jwt);
  });

  it('reports a missing header, an empty value, another scheme and an empty token as missing_token', () => {
    expect(reason(() => extract(['host', 'x']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', '']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', 'Basic b3JkZXJzOnNlY3JldA==']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', 'Bearer ']))).toBe('missing_token');
    expect(reason(() => extract(['authorization', jwt]))).toBe('missing_token');
    expect(reason(() => extract(['authorization', `Bearer${jwt}`]))).toBe('missing_token');
  });

  it('refuses two Authorization headers even when both are valid (Node keeps only the first in req.headers)', () => {
    expect(reason(() => extract(['Authorization', `Bearer ${jwt}`, 'authorization', `Bearer ${jwt}`]))).toBe('malformed_token');
    expect(reason(() => extract(['authorization', `Bearer ${jwt}`, 'AUTHORIZATION', 'Basic eA==']))).toBe('malformed_token');
  });

  it('refuses a token over the size cap before parsing it', () => {
    const small = createExtractor({ header: 'authorization', maxTokenBytes: 64 });
    const big = `${'a'.repeat(40)}.${'b'.repeat(40)}.AA`;
    expect(reason(() => small(['authorization', `Bearer ${big}`]))).toBe('malformed_token');
    try {
      small(['authorization', `Bearer ${big}`]);
    } catch (err) {
      expect((err as Error).message).toMatch(/larger than 64 bytes/);
    }
    expect(small(['authorization', `Bearer ${'a'.repeat(32)}.${'b'.repeat(28)}.AA`]).token).toHaveLength(64);
  });

  it('rejects anything that is not a compact JWS: JWE, wrong segment count, empty parts, bad characters', () => {
    const bad = [
      'a.b.c.d.e', // JWE compact
      'a.b',
      'a.b.c.d',
      '.b.c',
      'a..c',
      'a.b.c=',
      'a.b+.c',
      'a.b/.c',
      'a.b.c d',
      'a.b.\u00e9',
      '{"alg":"RS256"}.e30.x', // JSON serialization pieces are not compact
    ];
    for (const t of bad) expect(reason(() => extract(['authorization', `Bearer ${t}`])), t).toBe('malformed_token');
    expect(() => checkShape('a.b.c.d.e')).toThrow(/JWE/);
  });

  it('refuses a segment in any spelling but the canonical one (RFC 4648 §3.5): spare bits set, or a length no encoder writes', () => {
    // An ES256-sized signature: 64 bytes are 86 characters, whose last one carries 4 spare bits.
    const [h, p] = jwt.split('.') as [string, string];
    const bytes = Buffer.alloc(64, 0xa5);
    const sig = bytes.toString('base64url');
    // Every re-spelling of the same signature bytes through the last character's spare bits.
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const respelt = [...alphabet].map((c) => sig.slice(0, -1) + c).filter((s) => s !== sig && Buffer.from(s, 'base64url').equals(bytes));
    expect(respelt.length).toBeGreaterThan(0);
    for (const s of respelt) expect(reason(() => extract(['authorization', `Bearer ${h}.${p}.${s}`])), s).toBe('malformed_token');
    expect(() => checkShape(`${h}.${p}.${respelt[0]}`)).toThrow(/canonical base64url/);
    // The same in the header and payload, and a segment one character past a whole group (no encoding at all).
    expect(p.length % 4).toBe(2);
    expect(reason(() => extract(['authorization', `Bearer ${h}.${p.slice(0, -1)}R.${sig}`]))).toBe('malformed_token');
    expect(reason(() => extract(['authorization', `Bearer ${h}.${p}.${sig}AAAAB`]))).toBe('malformed_token');
    expect(extract(['authorization', `Bearer ${h}.${p}.${sig}`]).token).toBe(`${h}.${p}.${sig}`);
  });

  it('lets an empty signature through the shape check, so alg "none" is reported by the authenticator', () => {
    expect(extract(['authorization', 'Bearer e30.e30.']).token).toBe('e30.e30.');
  });

  it('CVE-2025-30204: a header full of dots is refused in one linear pass', async () => {
    const dots = '.'.repeat(8000);
    expect(reason(() => extract(['authorization', `Bearer ${dots}`]))).toBe('malformed_token');
    const manyParts = 'a.'.repeat(4000);
    expect(reason(() => extract(['authorization', `Bearer ${manyParts}`]))).toBe('malformed_token');
    // With the size limit out of the way, two million dots: one pass takes milliseconds. A scan that goes back over
    // the token for each dot (the CVE's pattern) needs about 10^12 steps: hours. No timer stops synchronous code, so
    // the scan runs in a worker thread, which the guard can stop: such a change fails this test instead of hanging
    // the run. The guard is a thousand times what the linear pass takes anywhere; it is not a speed check.
    const messages = await inWorker(
      "const extract = createExtractor({ header: 'authorization', maxTokenBytes: 8 * 1024 * 1024 });" +
        "return ['.'.repeat(2 * 1024 * 1024), 'a.'.repeat(1024 * 1024)].map((bomb) => {" +
        "  try { extract(['authorization', `Bearer ${bomb}`]); return 'accepted'; } catch (err) { return err.message; }" +
        '});',
    );
    expect(messages).toEqual(['token is not a compact JWS (expected three segments)', 'token is not a compact JWS (expected three segments)']);
  }, 120_000);

  it('reads a custom header with or without the Bearer prefix, and never the Authorization header then', () => {
    const custom = createExtractor({ header: 'x-jwt-assertion', maxTokenBytes: 8192 });
    expect(custom(['X-JWT-Assertion', jwt]).token).toBe(jwt);
    expect(custom(['x-jwt-assertion', `Bearer ${jwt}`]).token).toBe(jwt);
    expect(reason(() => custom(['authorization', `Bearer ${jwt}`]))).toBe('missing_token');
  });

  it('property: accepts exactly three canonical base64url segments, header and payload non-empty, rejects everything else with a coded error', () => {
    const seg = (min: number) => fc.uint8Array({ minLength: min, maxLength: 20 }).map((b) => Buffer.from(b).toString('base64url'));
    fc.assert(
      fc.property(seg(1), seg(1), seg(0), (h, p, s) => {
        const t = `${h}.${p}.${s}`;
        expect(extract(['authorization', `Bearer ${t}`]).token).toBe(t);
      }),
    );
    // Any base64url text is accepted exactly when it is the encoding of what it decodes to.
    fc.assert(
      fc.property(fc.stringMatching(/^[A-Za-z0-9_-]{1,20}$/), (s) => {
        const canonical = Buffer.from(s, 'base64url').toString('base64url') === s;
        const t = `e30.e30.${s}`;
        if (canonical) expect(extract(['authorization', `Bearer ${t}`]).token).toBe(t);
        else expect(reason(() => extract(['authorization', `Bearer ${t}`]))).toBe('malformed_token');
      }),
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 60 }), (garbage) => {
        try {
          const got = extract(['authorization', `Bearer ${garbage}`]);
          // Anything accepted really is three base64url segments.
          expect(got.token.split('.')).toHaveLength(3);
          expect(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(got.token)).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(TokenRejectedError);
        }
      }),
    );
  });
});
