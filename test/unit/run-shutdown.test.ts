import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startApp } from '../../src/app.js';
import { describeFailure } from '../../src/cli-failure.js';
import { shutDown } from '../../src/commands/run.js';
import { parseConfig } from '../../src/config/load.js';
import { SidecarError } from '../../src/errors.js';
import { observed } from './outbound-harness.js';

// How `run` ends after SIGTERM/SIGINT (src/commands/run.ts): the handler resolves, and the process exits 0, only
// when the shutdown completed; a failed one is logged and rejects, which the CLI turns into one line on stderr
// and exit 1. Repeated signals are tested on the CLI in test/e2e/lifecycle.test.ts. Nothing a caller can do from outside makes a real app's shutdown fail (its server closes, drains
// and pool closes all settle), so the failing case hands shutDown() an app whose shutdown rejects.
describe('the run command after SIGTERM', () => {
  it('resolves when a real app shuts down, with no shutdown_failed line', async () => {
    const { logger, lines } = observed();
    const config = parseConfig({
      service: 'shutdown-test',
      outbound: { listen: '127.0.0.1:0', tokenSource: { type: 'env', variable: 'OIDC_SIDECAR_TEST_UNSET_TOKEN' }, routes: [{ host: 'peer', audience: 'peer' }] },
      admin: { listen: '127.0.0.1:0' },
    });
    const app = await startApp(config, { logger });
    await expect(shutDown(app, logger)).resolves.toBeUndefined();
    expect(lines.map((l) => l.event)).toContain('stopped');
    expect(lines.filter((l) => l.event === 'shutdown_failed')).toEqual([]);
  });

  it('logs shutdown_failed and rejects, so the process exits 1 instead of 0', async () => {
    const { logger, lines } = observed();
    const app = { shutdown: () => Promise.reject(new SidecarError('drain_broken', 'the listener did not close', 500)) };
    const err: unknown = await shutDown(app, logger).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(SidecarError);
    expect((err as SidecarError).code).toBe('shutdown_failed');
    // What the CLI (src/main.ts, src/cli.ts) prints after `oidc-sidecar: ` before returning 1.
    expect(describeFailure(err)).toBe('shutdown failed: drain_broken: the listener did not close');
    expect(lines.filter((l) => l.event === 'shutdown_failed')).toEqual([
      expect.objectContaining({ level: 'error', error: 'drain_broken: the listener did not close' }),
    ]);
  });

  it('a reload still warming up gives up as shutdown begins: not ready at once, its hanging IdP requests cut, and the new config never takes over', async () => {
    const { logger, lines } = observed();
    // An IdP that never answers keeps the new config warming up (up to reloadWarmupSeconds): the inbound side waits
    // for discovery, the outbound side for a token (allowed 60 s here, so a shutdown that waited for it could not
    // finish within this test's time).
    const asked: string[] = [];
    let bothAsked!: () => void;
    const idpAsked = new Promise<void>((r) => (bothAsked = r));
    const silentIdp = createServer((req) => {
      asked.push(req.url!);
      if (asked.length === 2) bothAsked();
    });
    await new Promise<void>((r) => silentIdp.listen(0, '127.0.0.1', r));
    const issuer = `http://127.0.0.1:${(silentIdp.address() as AddressInfo).port}`;
    try {
      const base = {
        service: 'shutdown-test',
        outbound: { listen: '127.0.0.1:0', tokenSource: { type: 'env', variable: 'OIDC_SIDECAR_TEST_UNSET_TOKEN' }, routes: [{ host: 'peer', audience: 'peer' }] },
        admin: { listen: '127.0.0.1:0' },
      };
      const app = await startApp(parseConfig(base), { logger });
      const next = parseConfig({
        ...base,
        inbound: { listen: '127.0.0.1:0', target: 'http://127.0.0.1:9', audience: 'orders', issuers: [{ issuer }] },
        outbound: {
          ...base.outbound,
          tokenSource: { type: 'client_credentials', tokenEndpoint: `${issuer}/token`, clientId: 'c', clientSecret: 's' },
          tokenRequestTimeoutSeconds: 60,
        },
      });
      const reloaded = app.reload(next).then(
        () => 'applied',
        (e: unknown) => (e as SidecarError).code,
      );
      await idpAsked;
      expect(asked.sort()).toEqual(['/.well-known/openid-configuration', '/token']);
      const stopped = app.shutdown();
      expect(app.isReady()).toBe(false);
      expect(await reloaded).toBe('shutting_down');
      await stopped;
      expect(app.addresses.inbound).toBeUndefined();
      expect(lines.map((l) => l.event)).toEqual(expect.arrayContaining(['shutdown', 'stopped']));
      expect(lines.filter((l) => l.event === 'listening').map((l) => l.side)).toEqual(['outbound', 'admin']);
    } finally {
      silentIdp.closeAllConnections();
      silentIdp.close();
    }
  }, 20_000);
});
