import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { systemClock } from '../../src/clock.js';
import { createTokenBroker } from '../../src/outbound/token-broker.js';
import { selfSignedCert } from '../support/certs.js';

const dir = mkdtempSync(join(tmpdir(), 'token-broker-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The binding a config's only route gets, built as the outbound component builds it (no request is sent). */
async function bindingOf(source: Record<string, unknown>, outbound: Record<string, unknown> = {}) {
  const config = parseConfig({
    service: 'orders',
    outbound: { tokenSource: { type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', ...source }, routes: [{ host: 'payments', target: 'http://127.0.0.1:1', audience: 'payments' }], ...outbound },
  });
  const broker = createTokenBroker(config.outbound!, { clock: systemClock, env: {} });
  try {
    const { key, identity, requestIdentity } = broker.routeBindings()[0]!;
    return { key, identity, requestIdentity };
  } finally {
    await broker.close();
  }
}

describe('token bindings across a reload', () => {
  it('a request in flight is only handed to a binding that would send it the same way: same secret, CA bundle and timeout', async () => {
    const secretFile = join(dir, 'secret');
    writeFileSync(secretFile, 'first-secret');
    const before = await bindingOf({ clientSecretFile: secretFile });
    expect(await bindingOf({ clientSecretFile: secretFile })).toEqual(before);

    // The secret rotated in its file: the token may be handed over, the request sent with the old secret may not.
    writeFileSync(secretFile, 'rotated-secret');
    const rotated = await bindingOf({ clientSecretFile: secretFile });
    expect(rotated.identity).toBe(before.identity);
    expect(rotated.requestIdentity).not.toBe(before.requestIdentity);

    const slower = await bindingOf({ clientSecretFile: secretFile }, { tokenRequestTimeoutSeconds: 30 });
    expect(slower.identity).toBe(rotated.identity);
    expect(slower.requestIdentity).not.toBe(rotated.requestIdentity);

    const caFile = join(dir, 'idp-ca.pem');
    writeFileSync(caFile, readCert('ca-one'));
    const withCa = await bindingOf({ clientSecretFile: secretFile, caFile });
    writeFileSync(caFile, readCert('ca-two'));
    const caRotated = await bindingOf({ clientSecretFile: secretFile, caFile });
    expect(caRotated.identity).toBe(withCa.identity);
    expect(caRotated.requestIdentity).not.toBe(withCa.requestIdentity);

    // The secret never appears in what a binding is known by.
    for (const b of [before, rotated, slower]) expect(JSON.stringify(b)).not.toMatch(/first-secret|rotated-secret/);
  });
});

function readCert(name: string): string {
  return readFileSync(selfSignedCert(name, dir).cert, 'utf8');
}
