import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadDevClientsFile } from '../../src/dev/clients-file.js';
import { runCli, writeConfig } from '../support/sidecar.js';

// Every ```yaml block of README.md and of docs/*.md is a sidecar config a user can paste and run `validate` on, unless
// it is listed below with the reason it is something else. The real CLI decides, as it does for the user.
const ROOT = resolve(import.meta.dirname, '../..');
/** The documents whose YAML blocks are checked, relative to ROOT. */
const DOC_FILES = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

interface YamlBlock {
  /** The document it is in, relative to ROOT. */
  file: string;
  /** Line of the opening fence. */
  line: number;
  /** The nearest heading above it, without the #s. */
  heading: string;
  /** Its first top-level key. */
  firstKey: string;
  text: string;
}

function docYamlBlocks(file: string): YamlBlock[] {
  const blocks: YamlBlock[] = [];
  const lines = readFileSync(join(ROOT, file), 'utf8').split('\n');
  let heading = '';
  for (let i = 0; i < lines.length; i++) {
    const fence = /^```(\S*)/.exec(lines[i]!);
    if (!fence) {
      const h = /^#{1,6} (.*)$/.exec(lines[i]!);
      if (h) heading = h[1]!;
      continue;
    }
    const end = lines.findIndex((l, j) => j > i && l.startsWith('```'));
    if (/^ya?ml$/.test(fence[1]!)) {
      const text = `${lines.slice(i + 1, end).join('\n')}\n`;
      blocks.push({ file, line: i + 1, heading, firstKey: Object.keys(parse(text) ?? {})[0] ?? '', text });
    }
    i = end;
  }
  return blocks;
}

/**
 * The blocks that are not whole sidecar configs, found by the heading they sit under and their first key; each
 * entry must match exactly one block, so the list cannot outlive what it excuses.
 */
const NOT_WHOLE_CONFIGS: Array<{ heading: string; firstKey: string; kind: 'clients file' | 'overlay' | 'excerpt' | 'kubernetes'; why: string }> = [
  // Keys to add to any config: validated merged onto a minimal one, as a second --config.
  { heading: 'Lifecycle', firstKey: 'lifecycle', kind: 'overlay', why: 'the lifecycle keys alone' },
  // `oidc-sidecar dev-issuer --clients FILE`: checked with the dev issuer's own loader below.
  { heading: 'The development issuer: `oidc-sidecar dev-issuer`', firstKey: 'accessTokenTtlSeconds', kind: 'clients file', why: 'a dev-issuer clients file' },
  // Part of a Pod spec (the projected service-account tokens); the manifests are checked by examples.test.ts.
  { heading: 'Kubernetes (kustomize)', firstKey: 'volumes', kind: 'kubernetes', why: 'a Pod spec excerpt' },
  // The rules of examples/ci-deploy-gate/deployer-sidecar.yaml (validated whole by examples.test.ts): checked to be its rules below.
  { heading: 'CI deploy gate (GitHub Actions)', firstKey: 'rules', kind: 'excerpt', why: 'inbound.rules of deployer-sidecar.yaml' },
];

/** What the lifecycle overlay is merged onto. */
const MINIMAL = { service: 'orders', inbound: { target: 'http://127.0.0.1:8080', audience: 'orders', issuers: [{ issuer: 'https://idp.example.com' }] } };

const dir = mkdtempSync(join(tmpdir(), 'readme-configs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A value for each `${VAR}` without a default, as the user's environment would give it; `${VAR:-x}` takes its default. */
function envFor(text: string): Record<string, string> {
  const env: Record<string, string> = { OIDC_SIDECAR_CONFIG: '' };
  for (const m of text.matchAll(/\$\{(\w+)\}/g)) env[m[1]!] = `value-of-${m[1]!.toLowerCase()}`;
  for (const m of text.matchAll(/\$\{(\w+):-/g)) env[m[1]!] = '';
  return env;
}

/** `validate --skip-file-checks` on the block exactly as the README shows it (plus `layers` before it). */
async function validate(text: string, layers: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const file = writeConfig(text, mkdtempSync(join(dir, 'block-')));
  return runCli(['validate', '--skip-file-checks', ...[...layers, file].flatMap((f) => ['--config', f])], { env: envFor(text) });
}

const blocks = DOC_FILES.flatMap(docYamlBlocks);
const excused = (b: YamlBlock) => NOT_WHOLE_CONFIGS.find((s) => s.heading === b.heading && s.firstKey === b.firstKey);
const configs = blocks.filter((b) => !excused(b));

describe('README.md and docs/*.md YAML examples', () => {
  it('finds the blocks: every entry of the list of non-configs matches exactly one', () => {
    expect(configs.length).toBeGreaterThanOrEqual(20);
    for (const s of NOT_WHOLE_CONFIGS) {
      expect(blocks.filter((b) => excused(b) === s).map((b) => b.line), `${s.heading} / ${s.firstKey}`).toHaveLength(1);
    }
  });

  for (const b of configs) {
    it.concurrent(`${b.file}:${b.line} (${b.heading}) validates as pasted`, async () => {
      const r = await validate(b.text);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(parse(r.stdout)).toMatchObject({ service: parse(b.text).service.replace(/^\$\{\w+:-(.*)\}$/, '$1') });
    });
  }

  const only = (kind: string) => blocks.filter((b) => excused(b)?.kind === kind);

  it.concurrent('the lifecycle keys validate added to a config', async () => {
    const [block] = only('overlay');
    const r = await validate(block!.text, [writeConfig(MINIMAL, mkdtempSync(join(dir, 'base-')))]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(parse(r.stdout)).toMatchObject(parse(block!.text));
  });

  it('the dev-issuer clients file loads as `dev-issuer --clients` loads it', () => {
    const [block] = only('clients file');
    const clientsDir = mkdtempSync(join(dir, 'clients-'));
    const file = join(clientsDir, 'clients.yaml');
    writeFileSync(file, block!.text);
    // The public key file it names, beside it, as the user would have it.
    writeFileSync(join(clientsDir, 'signer.pub.pem'), generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }));
    expect(loadDevClientsFile(file, {}).clients.length).toBeGreaterThan(0);
  });

  it('the deploy gate rules are those of examples/ci-deploy-gate/deployer-sidecar.yaml', () => {
    const [block] = only('excerpt');
    const file = parse(readFileSync(join(ROOT, 'examples/ci-deploy-gate/deployer-sidecar.yaml'), 'utf8'));
    expect(file.inbound.rules).toEqual(expect.arrayContaining(parse(block!.text).rules));
  });
});
