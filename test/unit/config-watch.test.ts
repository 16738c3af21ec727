import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { caBaselineOf } from '../../src/config/ca-bundle.js';
import { SETTLE_MS, signaturesOf } from '../../src/config/poll-files.js';
import type { Config } from '../../src/config/schema.js';
import { createReloadWatch, type ReloadWatch } from '../../src/config/watch.js';
import { selfSignedCert } from '../support/certs.js';

const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-watch-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const watches: ReloadWatch[] = [];
afterEach(() => {
  while (watches.length) watches.pop()!.stop();
});

const POLL_MS = 20;
const caA = selfSignedCert('watch-ca-a', dir);
const caB = selfSignedCert('watch-ca-b', dir);

/** A config naming `caFile` for its issuer, with config watching on or off. */
function configWith(caFile: string, watchConfig = true): Config {
  return parseConfig({
    service: 'orders',
    lifecycle: { watchConfig },
    inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example', caFile }] },
  });
}

function start(paths: string[]): { watch: ReloadWatch; triggers: string[] } {
  const triggers: string[] = [];
  const watch = createReloadWatch(paths, (t) => triggers.push(t), POLL_MS);
  watches.push(watch);
  return { watch, triggers };
}

/** Waits for `pred`, failing with `what` after 4 s (before vitest's own timeout, with a message that says what). */
async function until(pred: () => boolean, what: string): Promise<void> {
  for (const deadline = Date.now() + 4000; !pred(); await new Promise((r) => setTimeout(r, 10))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
  }
}

describe('createReloadWatch: what makes run reload', () => {
  it('sees an edit that lands between creating the watch and applying the first config (startup)', async () => {
    const file = join(dir, 'startup.yaml');
    writeFileSync(file, 'service: a\n');
    const { watch, triggers } = start([file]);
    const baseline = signaturesOf([file]); // run takes it before its first read
    writeFileSync(file, 'service: bb\n'); // while the sidecar is still starting (another size: coarse clocks give equal mtimes)
    watch.update(configWith(caA.cert), { config: baseline });
    await until(() => triggers.length > 0, 'a reload');
    expect(triggers).toEqual(['file_changed']);
  });

  it('keeps watching across reloads, so an edit made while a reload is applied is not lost', async () => {
    const file = join(dir, 'reload.yaml');
    writeFileSync(file, 'service: a\n');
    const { watch, triggers } = start([file]);
    watch.update(configWith(caA.cert), { config: signaturesOf([file]) });
    writeFileSync(file, 'service: bb\n');
    await until(() => triggers.length === 1, 'the first reload');
    // The reload for that edit is applying when another edit lands; update() comes after it.
    const baseline = signaturesOf([file]);
    writeFileSync(file, 'service: ccc\n');
    watch.update(configWith(caA.cert), { config: baseline });
    await until(() => triggers.length === 2, 'the second reload');
    expect(triggers).toEqual(['file_changed', 'file_changed']);
  });

  it('reloads when a CA bundle the config names changes, even when inode, size and mtime stay', async () => {
    const config = join(dir, 'ca.yaml');
    writeFileSync(config, 'service: a\n');
    const ca = join(dir, 'live-ca.pem');
    // Both PEMs padded with trailing newlines to one length, so B overwrites A in place at the same size.
    const [pemA, pemB] = samePadded(readFileSync(caA.cert, 'utf8'), readFileSync(caB.cert, 'utf8'));
    writeFileSync(ca, pemA);
    utimesSync(ca, 1_700_000_000, 1_700_000_000);
    const { watch, triggers } = start([config]);
    watch.update(configWith(ca), { ca: signaturesOf([ca]) });
    await new Promise((r) => setTimeout(r, 5 * POLL_MS));
    expect(triggers).toEqual([]);
    writeFileSync(ca, pemB);
    utimesSync(ca, 1_700_000_000, 1_700_000_000);
    await until(() => triggers.length > 0, 'a reload');
    expect(triggers).toEqual(['ca_file_changed']);
  });

  it('sees a CA rotated after the config read it but before the watch began', async () => {
    const ca = join(dir, 'rotated-ca.pem');
    writeFileSync(ca, readFileSync(caA.cert));
    const { watch, triggers } = start([join(dir, 'rotated.yaml')]);
    const applied = configWith(ca); // reads the bundle: A
    writeFileSync(ca, `${readFileSync(caB.cert, 'utf8')}\n\n`); // rotated while the config is being applied
    watch.update(applied, { ca: caBaselineOf(applied) });
    await until(() => triggers.length > 0, 'a reload');
    expect(triggers).toEqual(['ca_file_changed']);
  });

  it('watches nothing while lifecycle.watchConfig is off, and resumes when a reload turns it on', async () => {
    const file = join(dir, 'off.yaml');
    writeFileSync(file, 'service: a\n');
    const { watch, triggers } = start([file]);
    watch.update(configWith(caA.cert, false));
    writeFileSync(file, 'service: bb\n');
    await new Promise((r) => setTimeout(r, 3 * SETTLE_MS));
    expect(triggers).toEqual([]);
    // A SIGHUP reload applies a config with watching on; an edit made while it loaded still counts.
    const baseline = signaturesOf([file]);
    writeFileSync(file, 'service: ccc\n');
    watch.update(configWith(caA.cert, true), { config: baseline });
    await until(() => triggers.length > 0, 'a reload');
    expect(triggers).toEqual(['file_changed']);
  });
});

/** Both texts with trailing newlines added to the shorter, so they have the same length. */
function samePadded(x: string, y: string): [string, string] {
  const n = Math.max(x.length, y.length);
  return [x.padEnd(n, '\n'), y.padEnd(n, '\n')];
}
