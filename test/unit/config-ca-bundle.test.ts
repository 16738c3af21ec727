import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { caFilesOf, readCaBundle } from '../../src/config/ca-bundle.js';
import { parseConfig } from '../../src/config/load.js';
import { redactConfig } from '../../src/config/redact.js';
import { selfSignedCert } from '../support/certs.js';
import { issuesOf } from '../support/config-errors.js';

const dir = mkdtempSync(join(tmpdir(), 'ca-bundle-'));
const first = selfSignedCert('ca-one', dir);
const second = selfSignedCert('ca-two', dir);
const KEY = 'outbound.routes.1.caFile';
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('readCaBundle: a caFile is checked when it is read', () => {
  it('a missing file is a ConfigError at the key path', () => {
    const missing = join(dir, 'missing.pem');
    expect(issuesOf(() => readCaBundle(missing, KEY))).toEqual([`${KEY}: cannot read ${missing}: no such file`]);
  });

  it('a directory is refused', () => {
    expect(issuesOf(() => readCaBundle(dir, KEY))).toEqual([`${KEY}: cannot read ${dir}: is a directory`]);
  });

  it('an empty file (or only blank lines) is refused', () => {
    const empty = file('empty.pem', '');
    const blank = file('blank.pem', '\n \n');
    expect(issuesOf(() => readCaBundle(empty, KEY))).toEqual([`${KEY}: ${empty} is empty`]);
    expect(issuesOf(() => readCaBundle(blank, KEY))).toEqual([`${KEY}: ${blank} is empty`]);
  });

  it('garbage, or a private key instead of a certificate, holds no PEM certificate', () => {
    const garbage = file('garbage.pem', 'not a certificate\n');
    expect(issuesOf(() => readCaBundle(garbage, KEY))).toEqual([`${KEY}: no PEM certificate found in ${garbage}`]);
    expect(issuesOf(() => readCaBundle(first.key, KEY))).toEqual([`${KEY}: no PEM certificate found in ${first.key}`]);
  });

  it('one valid certificate is read as it is', () => {
    const st = statSync(first.cert);
    expect(readCaBundle(first.cert, KEY)).toEqual({ file: first.cert, pem: first.pem.trimEnd(), seen: `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}` });
  });

  it('a bundle of two certificates keeps both, in order', () => {
    const bundle = file('bundle.pem', first.pem + second.pem);
    expect(readCaBundle(bundle, KEY).pem).toBe(`${first.pem.trim()}\n${second.pem.trim()}`);
  });

  it('keeps only the certificate blocks: the private key of a combined cert+key file, and text around the blocks, are not passed on', () => {
    const combined = file('combined.pem', `${readFileSync(first.key, 'utf8')}# Subject: CN=ca-one\n${first.pem}trailing words\n`);
    const ca = readCaBundle(combined, KEY);
    expect(ca.pem).toBe(first.pem.trim());
    expect(ca.pem).not.toContain('PRIVATE KEY');
  });

  it('refuses TRUSTED CERTIFICATE blocks instead of dropping them', () => {
    const trusted = join(dir, 'trusted.pem');
    execFileSync('openssl', ['x509', '-in', first.cert, '-trustout', '-addtrust', 'serverAuth', '-out', trusted], { stdio: 'ignore' });
    const mixed = file('mixed.pem', second.pem + readFileSync(trusted, 'utf8'));
    expect(issuesOf(() => readCaBundle(mixed, KEY))).toEqual([
      `${KEY}: ${mixed} holds a TRUSTED CERTIFICATE block: use plain CERTIFICATE blocks (openssl x509 -in IN -out OUT converts one)`,
    ]);
  });

  it('a bundle with one certificate that does not parse is refused, naming which one', () => {
    // Node's TLS would skip the broken one without a word and trust the rest.
    const broken = second.pem.replace(/\n([A-Za-z0-9+/]{16})/, '\nAAAAAAAAAAAAAAAA');
    const bundle = file('broken-bundle.pem', first.pem + broken);
    expect(issuesOf(() => readCaBundle(bundle, KEY))).toEqual([`${KEY}: certificate 2 of 2 in ${bundle} is not a valid X.509 certificate`]);
  });

  it('a certificate cut off before its END line is refused', () => {
    const cut = file('cut.pem', first.pem + second.pem.slice(0, second.pem.indexOf('-----END')));
    expect(issuesOf(() => readCaBundle(cut, KEY))).toEqual([`${KEY}: certificate 2 in ${cut} has no END CERTIFICATE line`]);
  });

  it('1 MiB of BEGIN lines without an END is rejected (in linear time: a backtracking scan would run into the test timeout)', () => {
    const line = '-----BEGIN CERTIFICATE-----\n';
    const text = line.repeat(Math.floor((1024 * 1024) / line.length));
    expect(text.length).toBeLessThanOrEqual(1024 * 1024);
    const hostile = file('hostile.pem', text);
    expect(issuesOf(() => readCaBundle(hostile, KEY))).toEqual([`${KEY}: certificate 1 in ${hostile} has no END CERTIFICATE line`]);
  });
});

describe('readCaBundle: only a small regular file is read', () => {
  it('a file over 1 MiB is refused before it is parsed', () => {
    const big = file('big.pem', first.pem + 'x'.repeat(1024 * 1024));
    expect(issuesOf(() => readCaBundle(big, KEY))).toEqual([`${KEY}: cannot read ${big}: larger than 1 MiB, which is plenty for a CA bundle`]);
  });

  it('a FIFO is refused at once, whether or not anyone writes to it (reading it would block the process)', () => {
    const fifo = join(dir, 'ca.fifo');
    execFileSync('mkfifo', [fifo]);
    expect(issuesOf(() => readCaBundle(fifo, KEY))).toEqual([`${KEY}: cannot read ${fifo}: is not a regular file`]);
  });

  it('a device that never ends (/dev/zero) is refused', () => {
    expect(issuesOf(() => readCaBundle('/dev/zero', KEY))).toEqual([`${KEY}: cannot read /dev/zero: is not a regular file`]);
  });
});

describe('parseConfig reads every caFile the config names', () => {
  const endpoint = (caFile: string) => ({ type: 'client_credentials', tokenEndpoint: 'https://idp.example/token', clientId: 'orders', clientSecret: 's', caFile });
  const doc = (files: { issuer: string; source: string; route: string; routeSource: string }) => ({
    service: 'orders',
    inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example', caFile: files.issuer }] },
    outbound: {
      tokenSource: endpoint(files.source),
      routes: [
        { host: 'plain', audience: 'plain' },
        { host: 'ledger', target: 'https://ledger.internal', audience: 'ledger', caFile: files.route, tokenSource: endpoint(files.routeSource) },
      ],
    },
  });

  it('puts each bundle beside its caFile, reading a file named twice once, and prints only the path', () => {
    const bundle = file('two.pem', first.pem + second.pem);
    const c = parseConfig(doc({ issuer: first.cert, source: bundle, route: bundle, routeSource: second.cert }));
    const route = c.outbound!.routes[1]!;
    expect(c.inbound!.issuers[0]).toMatchObject({ caFile: first.cert, ca: { file: first.cert, pem: readFileSync(first.cert, 'utf8').trimEnd() } });
    expect(route).toMatchObject({ caFile: bundle, ca: { file: bundle } });
    expect(c.outbound!.routes[0]).not.toHaveProperty('ca');
    expect(route.tokenSource).toMatchObject({ ca: { file: second.cert } });
    expect((c.outbound!.tokenSource as { ca?: unknown }).ca).toBe((route as { ca?: unknown }).ca);
    expect(Object.isFrozen((route as { ca?: object }).ca)).toBe(true);

    const printed = JSON.stringify(redactConfig(c));
    expect(printed).not.toContain('BEGIN CERTIFICATE');
    expect(printed).toContain(`"caFile":${JSON.stringify(bundle)}`);
  });

  it('reads only the bundles of the parts a command uses, none for a shape-only check, and lists the files it names', () => {
    const missing = join(dir, 'pod-only.pem');
    const d = doc({ issuer: first.cert, source: missing, route: missing, routeSource: second.cert });
    const issuersOnly = parseConfig(d, { readCaFilesFor: ['issuers'] });
    expect(issuersOnly.inbound!.issuers[0]).toMatchObject({ ca: { file: first.cert } });
    expect(issuersOnly.outbound!.routes[1]).not.toHaveProperty('ca');
    expect(issuesOf(() => parseConfig(d, { readCaFilesFor: ['token-sources'] }))).toEqual([`outbound.tokenSource.caFile: cannot read ${missing}: no such file`]);
    const shapeOnly = parseConfig(d, { readCaFilesFor: [] });
    expect(JSON.stringify(shapeOnly)).not.toContain('BEGIN CERTIFICATE');
    expect(shapeOnly.outbound!.routes[1]).toMatchObject({ caFile: missing });

    expect(caFilesOf(shapeOnly)).toEqual([first.cert, missing, second.cert]);
    expect(caFilesOf(shapeOnly, ['token-sources'])).toEqual([missing, second.cert]);
  });

  it('lists every bad caFile at its key path in one ConfigError', () => {
    const missing = join(dir, 'gone.pem');
    const garbage = file('junk.pem', 'junk');
    expect(issuesOf(() => parseConfig(doc({ issuer: missing, source: first.cert, route: garbage, routeSource: missing })))).toEqual([
      `inbound.issuers.0.caFile: cannot read ${missing}: no such file`,
      `outbound.routes.1.caFile: no PEM certificate found in ${garbage}`,
      `outbound.routes.1.tokenSource.caFile: cannot read ${missing}: no such file`,
    ]);
  });
});
