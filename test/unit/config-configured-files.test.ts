import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FILE_LIMITS, readConfiguredFile, readSmallFile } from '../../src/config/configured-files.js';
import { TokenUnavailableError } from '../../src/errors.js';
import { createClientAuth } from '../../src/outbound/sources/client-auth.js';
import { readRuntimeFile } from '../../src/outbound/sources/files.js';
import { issuesOf } from '../support/config-errors.js';

const dir = mkdtempSync(join(tmpdir(), 'configured-files-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const KEY = 'outbound.tokenSource.clientSecretFile';
const fifo = join(dir, 'secret.fifo');
execFileSync('mkfifo', [fifo]);

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('readConfiguredFile: a regular file within its size limit, or a ConfigError at the key path', () => {
  it('reads the file and drops the trailing newline', () => {
    expect(readConfiguredFile(file('s', 'hunter2\n'), KEY, FILE_LIMITS.clientSecret)).toBe('hunter2');
  });

  it('a file of exactly the limit is read; one byte more is refused, naming the limit and what it is for', () => {
    const limit = FILE_LIMITS.clientSecret;
    expect(readConfiguredFile(file('at-limit', 'a'.repeat(limit.maxBytes)), KEY, limit)).toHaveLength(limit.maxBytes);
    const over = file('over-limit', 'a'.repeat(limit.maxBytes + 1));
    expect(issuesOf(() => readConfiguredFile(over, KEY, limit))).toEqual([`${KEY}: cannot read ${over}: larger than 64 KiB, which is plenty for a client secret`]);
  });

  it('refuses a FIFO without waiting for a writer, a device, and a directory', () => {
    expect(issuesOf(() => readConfiguredFile(fifo, KEY, FILE_LIMITS.clientSecret))).toEqual([`${KEY}: cannot read ${fifo}: is not a regular file`]);
    expect(issuesOf(() => readConfiguredFile('/dev/zero', KEY, FILE_LIMITS.clientSecret))).toEqual([`${KEY}: cannot read /dev/zero: is not a regular file`]);
    expect(issuesOf(() => readConfiguredFile(dir, KEY, FILE_LIMITS.clientSecret))).toEqual([`${KEY}: cannot read ${dir}: is a directory`]);
  });

  it('the limits: 1 MiB for CA bundles, private keys (a JWK Set may list public keys too) and TLS PEM files, 64 KiB for secrets and tokens', () => {
    expect(Object.fromEntries(Object.entries(FILE_LIMITS).map(([k, v]) => [k, v.maxBytes]))).toEqual({
      caBundle: 1024 * 1024,
      privateKey: 1024 * 1024,
      clientSecret: 64 * 1024,
      token: 64 * 1024,
      tlsPem: 1024 * 1024,
    });
  });
});

describe('files read while serving (readSmallFile) follow the same rules off the main thread', () => {
  it('reads a regular file; refuses a FIFO, /dev/zero and a file over the limit', async () => {
    expect(await readSmallFile(file('t', 'token'), FILE_LIMITS.token)).toBe('token');
    await expect(readSmallFile(fifo, FILE_LIMITS.token)).rejects.toMatchObject({ reason: 'is not a regular file' });
    await expect(readSmallFile('/dev/zero', FILE_LIMITS.token)).rejects.toMatchObject({ reason: 'is not a regular file' });
    await expect(readSmallFile(file('big', 'a'.repeat(64 * 1024 + 1)), FILE_LIMITS.token)).rejects.toMatchObject({ reason: 'larger than 64 KiB, which is plenty for a token' });
  });

  it('a token file that is a FIFO is a TokenUnavailableError naming it, not a request that never returns', async () => {
    const err = await readRuntimeFile(fifo, 'clientAssertionFile').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenUnavailableError);
    expect((err as Error).message).toBe(`cannot read clientAssertionFile ${fifo}: is not a regular file`);
  });
});

describe('the client credentials read at build time use these limits', () => {
  const deps = { clock: { now: () => Date.now(), monotonic: () => performance.now() }, configPath: 'outbound.tokenSource' };

  it('clientSecretFile: a FIFO or an oversized file stops the build at the key path', () => {
    expect(issuesOf(() => createClientAuth({ clientId: 'orders', clientSecretFile: fifo }, deps))).toEqual([`${KEY}: cannot read ${fifo}: is not a regular file`]);
    const big = file('big-secret', 's'.repeat(64 * 1024 + 1));
    expect(issuesOf(() => createClientAuth({ clientId: 'orders', clientSecretFile: big }, deps))).toEqual([
      `${KEY}: cannot read ${big}: larger than 64 KiB, which is plenty for a client secret`,
    ]);
  });

  it('privateKeyFile: a file over 1 MiB is refused before it is parsed', () => {
    const big = file('big-key.json', `{"keys":[${'{"kty":"oct"},'.repeat(80_000)}]}`);
    expect(issuesOf(() => createClientAuth({ clientId: 'orders', privateKeyFile: big }, deps))).toEqual([
      `outbound.tokenSource.privateKeyFile: cannot read ${big}: larger than 1 MiB, which is plenty for a private key or JWK Set`,
    ]);
  });
});
