import * as z from '../zod.js';
import { ConfigError, type ConfigIssue, UsageError } from '../errors.js';
import { ALL_CA_USES, attachCaBundles, type CaUse } from './ca-bundle.js';
import { describeFsError } from './configured-files.js';
import { interpolateEnv, isPlainObject } from './interpolate.js';
import { deepMerge } from './merge.js';
import { REDACTED } from './redact.js';
import { parseYamlFile, readBoundedText, type YamlFile } from './yaml-file.js';
import { type Config, configSchema } from './schema.js';
import { startupFileIssues, tokenSourceFileIssues } from './startup-files.js';
import { isRequiredKey, nestedKeyHint, suggestKey } from './suggest-key.js';

/** Where config files come from: the `--config` flags, else `OIDC_SIDECAR_CONFIG` (comma-separated). */
export function resolveConfigPaths(flags: readonly string[] | undefined, env: NodeJS.ProcessEnv = process.env): string[] {
  const fromFlags = (flags ?? []).filter((p) => p.length > 0);
  if (fromFlags.length > 0) return fromFlags;
  const fromEnv = (env.OIDC_SIDECAR_CONFIG ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (fromEnv.length > 0) return fromEnv;
  throw new UsageError('no config given: pass --config FILE (repeatable) or set OIDC_SIDECAR_CONFIG');
}

export interface LoadOptions {
  /**
   * Whose CA bundles (`caFile`) are read and checked: default all (`run`). A
   * command reads those of the part it uses; `[]` checks the config's shape
   * only (`validate --skip-file-checks`), and such a config must not open
   * connections, except through a block whose bundle was read since
   * (`withCaBundle`, as `token` does for its one source).
   */
  readCaFilesFor?: readonly CaUse[];
  /**
   * Also read and check the other files `run` reads as it starts (token
   * sources' secrets and private keys, the inbound TLS certificate and key,
   * see startup-files.ts), listed with the CA bundles' problems in one
   * ConfigError: what `run` and `validate` load. Default false.
   */
  checkStartupFiles?: boolean;
  /**
   * Only the token sources' secrets and private keys of checkStartupFiles: what
   * a reload reads, so that all its file problems are refused in one line, as
   * at startup. The TLS files are left out: they are watched on their own, and
   * a reload during their rotation must not be refused for a pair caught
   * half-written.
   */
  checkSourceFiles?: boolean;
  /** Config files must be regular files (see readBoundedText): what a reload reads. Default false. */
  regularFilesOnly?: boolean;
  /**
   * Load this side alone (`verify`: inbound, `token`: outbound): every other key (the other side's section, and
   * `service`, `admin`, `log`, `limits`, `lifecycle`, which neither command reads) is left out before its `${VAR}`s
   * are filled in and the schema runs, so a variable that only the pod sets (an outbound client secret, or
   * `service: ${POD_NAME}`, when verifying a token in CI) does not stop the command. The config's `service` is then
   * ONE_SIDE_SERVICE. `missing` is the UsageError when the merged layers have no such section. Default: both.
   */
  only?: { side: 'inbound' | 'outbound'; missing: string };
}

/**
 * Reads, interpolates, merges (in order) and validates config files.
 * Returns a frozen, fully defaulted config or throws a ConfigError listing
 * every problem as `path.to.key: message`.
 */
export function loadConfig(paths: readonly string[], env: NodeJS.ProcessEnv = process.env, opts: LoadOptions = {}): Config {
  const files = readLayers(paths, opts.regularFilesOnly);
  const issues: ConfigIssue[] = [];
  // The layers merged so far: what each overlay is checked against, and in the end the config.
  let merged: unknown;
  // Whether the layers, merged as written, have the side asked for at all (an overlay's `outbound: null` removes it).
  const only = opts.only?.side;
  if (only !== undefined && !hasSection(deepMerge(files.map((f) => f.value)), only)) throw new UsageError(opts.only!.missing);
  // Values that were one placeholder each, by key path; a later layer that sets the same key replaces the entry.
  let wholeValues: string[][] = [];
  for (const [i, file] of files.entries()) {
    const found: ConfigIssue[] = [];
    const filled: string[][] = [];
    const layer = interpolateEnv(withoutOtherSide(file.value, only), env, found, filled);
    wholeValues = [...wholeValues.filter((p) => !hasPath(layer, p)), ...filled];
    if (i > 0 && removesRules(layer)) {
      found.push({ path: 'inbound.rules', message: 'removes the rules of an earlier layer (null, or a bare `rules:`), which would let every valid token in; give the whole new list instead' });
    }
    if (i > 0) found.push(...bareRemovals(layer, file, merged));
    issues.push(...found.map((issue) => issueAt(issue, file, files.length > 1)));
    merged = deepMerge([merged, layer]);
  }
  if (only !== undefined) merged = { service: ONE_SIDE_SERVICE, ...(merged as object) };
  merged = typedPlaceholders(merged, wholeValues);
  if (issues.length > 0) throw new ConfigError([...issues, ...shapeIssuesBeside(merged, files, issues)]);
  try {
    return parseConfig(merged, opts);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw locatedIn(err, files);
  }
}

/**
 * A placeholder gives text, since the document is parsed before it is filled in (no variable can inject structure).
 * Where it was a whole value and the schema wants a number or a boolean there, text that is a plain decimal number, or
 * true/false, becomes one: `drainTimeoutSeconds: ${DRAIN:-20}` is 20, `keepToken: ${KEEP:-false}` is false. Where the
 * schema takes text (a client id of digits), it stays text. Anything else (`0x14`, `.inf`, ` 10`) stays text, for the
 * schema to refuse as before. Changes `merged` in place: interpolateEnv made it of fresh objects.
 */
function typedPlaceholders(merged: unknown, wholeValues: readonly string[][]): unknown {
  if (wholeValues.length === 0) return merged;
  const result = configSchema.safeParse(merged ?? {});
  if (result.success) return merged;
  const filled = new Set(wholeValues.map((p) => JSON.stringify(p)));
  for (const issue of result.error.issues) {
    if (issue.code !== 'invalid_type' || (issue.expected !== 'number' && issue.expected !== 'boolean')) continue;
    const path = issue.path.map(String);
    if (!filled.has(JSON.stringify(path))) continue;
    const parent = valueAt(merged, path.slice(0, -1));
    const key = path.at(-1)!;
    if (typeof parent !== 'object' || parent === null) continue;
    const text = (parent as Record<string, unknown>)[key];
    if (typeof text !== 'string') continue;
    const typed = issue.expected === 'number' ? yamlNumber(text) : yamlBoolean(text);
    if (typed !== undefined) (parent as Record<string, unknown>)[key] = typed;
  }
  return merged;
}

/** A plain decimal number (`30`, `-1.5`, `1e3`): YAML 1.2 core's, less its hex, octal and `.inf`/`.nan` forms. */
function yamlNumber(text: string): number | undefined {
  return /^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/.test(text) ? Number(text) : undefined;
}

/** YAML 1.2 core schema's booleans. */
function yamlBoolean(text: string): boolean | undefined {
  if (/^(?:true|True|TRUE)$/.test(text)) return true;
  if (/^(?:false|False|FALSE)$/.test(text)) return false;
  return undefined;
}

/** The value at a key path, or undefined where the path is not there. */
function valueAt(doc: unknown, segments: readonly string[]): unknown {
  let node = doc;
  for (const segment of segments) {
    if (typeof node !== 'object' || node === null || !Object.hasOwn(node, segment)) return undefined;
    node = (node as Record<string, unknown>)[segment];
  }
  return node;
}

function hasSection(config: unknown, key: string): boolean {
  return typeof config === 'object' && config !== null && Object.hasOwn(config, key) && (config as Record<string, unknown>)[key] != null;
}

/** A layer with the section of the side `only` alone (see LoadOptions.only). */
function withoutOtherSide(layer: unknown, only: 'inbound' | 'outbound' | undefined): unknown {
  if (only === undefined || typeof layer !== 'object' || layer === null || Array.isArray(layer)) return layer;
  const record = layer as Record<string, unknown>;
  return only in record ? { [only]: record[only] } : {};
}

/** The `service` of a config loaded for one side (LoadOptions.only): the file's own is not read. */
export const ONE_SIDE_SERVICE = 'oidc-sidecar';

/**
 * The schema's findings in a config whose `${VAR}`s could not all be filled in, so that one `validate` names every
 * problem (a typo beside an unset variable in CI) rather than the variables first and the rest on the next try. The
 * keys already reported, and what lies under or above them, are left out (their value is not what the file will
 * hold), and no file is read: a path may be one of those values.
 */
function shapeIssuesBeside(merged: unknown, files: readonly ConfigFile[], reported: readonly ConfigIssue[]): ConfigIssue[] {
  try {
    parseConfig(merged, { readCaFilesFor: [] });
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) return [];
    const related = (a: string, b: string) => a === b || a.startsWith(`${b}.`) || b.startsWith(`${a}.`);
    return locatedIn(err, files).issues.filter((i) => !reported.some((r) => related(i.path, r.path)));
  }
}

/** Reads every layer; the problems of all of them (a YAML error in two files) are reported together. */
function readLayers(paths: readonly string[], regularFileOnly = false): ConfigFile[] {
  const files: ConfigFile[] = [];
  const problems: ConfigIssue[] = [];
  for (const path of paths) {
    try {
      files.push(readLayer(path, regularFileOnly));
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.issues);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return files;
}

/**
 * A ConfigError found after loading (a command that reads the files of one part of the config itself, as `token`
 * does), with each issue's line and file as loadConfig gives them. The files are read again: they are small.
 */
export function locateConfigError(paths: readonly string[], err: ConfigError): ConfigError {
  return locatedIn(err, paths.map((path) => readLayer(path, false)));
}

function locatedIn(err: ConfigError, files: readonly ConfigFile[]): ConfigError {
  return new ConfigError(err.issues.map((issue) => located(issue, files)), { code: err.code });
}

interface ConfigFile extends YamlFile {
  path: string;
}

/**
 * Says where an issue at a key is: its line and, with several layers, its file. The file is the last layer that sets
 * the key (a later layer's value wins, and a list replaces the list before it), so `outbound.routes.0.audience: …` is
 * looked for in the file that said it. For a key no layer sets (`required`), the same for the deepest key on the way
 * to it that one does (the route that lacks it); nothing when not even the first key is set (`service: required`).
 */
function located(issue: ConfigIssue, files: readonly ConfigFile[]): ConfigIssue {
  if (!issue.path) return issue;
  const segments = issue.keys ?? issue.path.split('.');
  for (let depth = segments.length; depth > 0; depth--) {
    const prefix = segments.slice(0, depth);
    for (let i = files.length - 1; i >= 0; i--) {
      // The file as written: filling in ${VAR}s changes no key.
      if (hasPath(files[i]!.value, prefix) && !isReplacedLater(files, i, prefix)) return issueAt(issue, files[i]!, files.length > 1);
    }
  }
  return issue;
}

/**
 * Whether a later layer replaced what layer `i` says at `segments` as a whole: a list, a scalar or null at a key on
 * the way (see deepMerge). An overlay's `routes:` list replaces the base's, so the base's `routes.0.audience` is not
 * the route a problem at `outbound.routes.0.audience` is about.
 */
function isReplacedLater(files: readonly ConfigFile[], i: number, segments: readonly string[]): boolean {
  for (let j = i + 1; j < files.length; j++) {
    let node: unknown = files[j]!.value;
    for (let d = 0; d < segments.length - 1; d++) {
      if (!isPlainObject(node) || !Object.hasOwn(node, segments[d]!)) break;
      node = node[segments[d]!];
      if (!isPlainObject(node)) return true;
    }
  }
  return false;
}

/** Whether the key path is there, whatever its value (null included). */
function hasPath(doc: unknown, segments: readonly string[]): boolean {
  if (segments.length === 0) return true;
  const parent = valueAt(doc, segments.slice(0, -1));
  return typeof parent === 'object' && parent !== null && Object.hasOwn(parent, segments.at(-1)!);
}

function issueAt(issue: ConfigIssue, file: ConfigFile, nameFile: boolean): ConfigIssue {
  const line = issue.path ? file.lineOf(issue.keys ?? issue.path) : undefined;
  const where = [nameFile ? `in ${file.path}` : '', line ? `line ${line}` : ''].filter(Boolean).join(', ');
  return where ? { path: issue.path, message: `${issue.message} (${where})` } : issue;
}

/**
 * Validates an already-parsed document (used by loadConfig and by tests/embedders),
 * then reads the CA bundles it names (`caFile`, see LoadOptions), kept beside each as `ca`,
 * and with `checkStartupFiles` the other files `run` reads as it starts. Every file
 * problem is listed in one ConfigError.
 */
export function parseConfig(doc: unknown, opts: LoadOptions = {}): Config {
  const result = configSchema.safeParse(doc ?? {});
  const reported = result.success ? [] : zodIssues(result.error, doc);
  // Strict objects report a `__proto__` key as unknown, but zod's records (claims, claimHeaders, params) skip it
  // without a word: `claims: { __proto__: admin, ... }` would lose that check and allow more than it says.
  const found = documentIssues(doc).filter((f) => !reported.some((i) => i.path === f.path));
  if (!result.success || found.length > 0) throw new ConfigError([...reported, ...found]);
  const issues = attachCaBundles(result.data, opts.readCaFilesFor ?? ALL_CA_USES);
  if (opts.checkStartupFiles) issues.push(...startupFileIssues(result.data));
  else if (opts.checkSourceFiles) issues.push(...tokenSourceFileIssues(result.data));
  // Found by two passes (CA bundles, then the other files); listed as the config reads, inbound's before outbound's.
  if (issues.length > 0) throw new ConfigError(issues.sort((a, b) => sectionRank(a.path) - sectionRank(b.path)));
  return deepFreeze(result.data);
}

/**
 * What the schema cannot see, by key path: every own `__proto__` key (the YAML and JSON parsers keep it as an own
 * property), and every value that is the `[redacted]` placeholder `validate` prints in place of a secret. Its output
 * fed back as a config would otherwise send the IdP the word "[redacted]" as the client secret.
 */
function documentIssues(doc: unknown): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const seen = new Set<object>();
  const walk = (v: unknown, path: string[]): void => {
    if (typeof v === 'string' && v.includes(REDACTED)) {
      out.push({ path: path.join('.'), message: `holds ${REDACTED}, which validate prints in place of a secret: put the secret itself here, or a \${VARIABLE} placeholder` });
    }
    // A YAML alias shares one object between places: walked once.
    if (typeof v !== 'object' || v === null || seen.has(v)) return;
    seen.add(v);
    for (const key of Object.keys(v)) {
      const at = [...path, key];
      if (key === '__proto__' && !Array.isArray(v)) out.push({ path: at.join('.'), message: 'a key named "__proto__" is not accepted' });
      walk((v as Record<string, unknown>)[key], at);
    }
  };
  walk(doc, []);
  return out;
}

function sectionRank(path: string): number {
  return path.startsWith('inbound.') ? 0 : 1;
}

/**
 * Whether an overlay sets `inbound.rules` to null: removing the key, as null does (merge.ts), would turn the base's
 * rules into none at all, and no rules means any valid token passes. A bare `rules:` in YAML is exactly that null.
 */
function removesRules(layer: unknown): boolean {
  if (!isPlainObject(layer) || !isPlainObject(layer.inbound)) return false;
  return Object.hasOwn(layer.inbound, 'rules') && layer.inbound.rules === null;
}

/**
 * Inbound checks an overlay may remove on purpose (`tls: null`), but not by leaving a bare key behind: a `tls:` whose
 * lines below were commented out is null to YAML too, and would silently remove what an earlier layer set. A key no
 * earlier layer set removes nothing, so a template's bare keys are fine.
 */
const BARE_REMOVAL_GUARDED: ReadonlyArray<[key: string, loses: string]> = [
  ['tls', 'the inbound listener would serve plain HTTP'],
  ['requiredClaims', 'tokens would no longer need those claims'],
  ['typ', "tokens' type would no longer be checked"],
  ['maxTokenLifetimeSeconds', 'tokens of any lifetime would be taken'],
];

function bareRemovals(layer: unknown, file: YamlFile, earlier: unknown): ConfigIssue[] {
  if (!isPlainObject(layer) || !isPlainObject(layer.inbound)) return [];
  const inbound = layer.inbound;
  const before = isPlainObject(earlier) && isPlainObject(earlier.inbound) ? earlier.inbound : {};
  const removesSet = (key: string) => Object.hasOwn(inbound, key) && inbound[key] === null && before[key] !== undefined && before[key] !== null;
  return BARE_REMOVAL_GUARDED.filter(([key]) => removesSet(key) && !file.isExplicitNull(`inbound.${key}`)).map(([key, loses]) => ({
    path: `inbound.${key}`,
    message: `a bare \`${key}:\` (no value: its lines commented out?) removes what an earlier layer set, and ${loses}; write \`${key}: null\` to remove it on purpose`,
  }));
}

/** A config file larger than this is refused before it is parsed: real ones are a few KiB, and parsing costs ~100× the file in memory. */
const MAX_CONFIG_BYTES = 1024 * 1024;

function readLayer(path: string, regularFileOnly: boolean): ConfigFile {
  let text: string;
  try {
    text = readBoundedText(path, MAX_CONFIG_BYTES, 'no sidecar config needs', { regularFileOnly });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    // `--config base.yaml,ns.yaml` is one path: only OIDC_SIDECAR_CONFIG is split at commas.
    const hint = path.includes(',') && (err as NodeJS.ErrnoException).code === 'ENOENT' ? ' (give each file its own --config; only OIDC_SIDECAR_CONFIG is a comma-separated list)' : '';
    throw new UsageError(`cannot read config file ${path}: ${describeFsError(err)}${hint}`);
  }
  const file = parseYamlFile(text, path);
  const { value } = file;
  if (value !== null && value !== undefined && (typeof value !== 'object' || Array.isArray(value))) {
    throw new ConfigError([{ path, message: 'the top level must be a mapping of keys' }]);
  }
  return { ...file, path, value: value ?? {} };
}

function zodIssues(error: z.ZodError, doc: unknown): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of error.issues) {
    const base = issue.path.map(String);
    if (isNullValue(issue, doc, base)) {
      // Zod's "expected object, received null" does not say how a key came to be null: a `tls:` whose lines below were
      // commented out is null to YAML. Null removes a key only in a later layer (merge.ts), and in the first layer
      // the schema sees it, so the way out is one of two.
      out.push({ path: base.join('.'), message: nullValueMessage(base) });
    } else if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        // `log.level: debug` (Helm's and Spring's spelling) is one key named with a dot, not log's level.
        const nested = nestedKeyHint(issue.path, key);
        const meant = nested ? undefined : suggestKey(issue.path, key);
        const message = nested
          ? `unknown key: a dot does not nest keys; ${nested}`
          : meant === key
            ? otherTypesKey(key, valueAt(doc, [...base, 'type']))
            : meant
              ? `unknown key (did you mean ${meant}?)`
              : 'unknown key';
        // A key with a dot of its own is named by its exact keys, or its line would be looked for under `log:`.
        out.push({ path: [...base, key].join('.'), message, ...(key.includes('.') ? { keys: [...base, key] } : {}) });
      }
    } else if (issue.code === 'invalid_union' && 'note' in issue && issue.note === 'No matching discriminator') {
      out.push({ path: (base.at(-1) === 'type' ? base : [...base, 'type']).join('.'), message: 'must be one of client_credentials, token_exchange, file, github_actions, env' });
    } else if (issue.code === 'invalid_key' && issue.issues.length > 0) {
      // A record key (e.g. a claimHeaders name) that fails its own schema: say why, not just "Invalid key in record".
      for (const inner of issue.issues) out.push({ path: base.join('.'), message: inner.message });
    } else {
      out.push({ path: base.join('.'), message: issue.message });
    }
  }
  return out;
}

/**
 * An unknown key that another branch of a union takes (a token source's `path` under `type: client_credentials`):
 * "did you mean path?" would name the key itself. Most often an overlay changed the type and the base file's keys of
 * the old one stayed.
 */
function otherTypesKey(key: string, type: unknown): string {
  const kind = typeof type === 'string' ? `type ${type}` : 'this type';
  return `unknown key for ${kind} (a key of another type; an overlay that changes the type removes it with \`${key}: null\`)`;
}

/** What to do about a null at `path`: a list item, a key the schema requires, one it can do without, or the rules. */
function nullValueMessage(path: readonly string[]): string {
  const last = path.at(-1)!;
  if (/^\d+$/.test(last)) return 'a list item with no value (a lone "-", or null): give it one, or remove the item';
  const noValue = 'has no value (null, or nothing after the colon)';
  if (path.join('.') === 'inbound.rules') return `${noValue}: give the list of rules (with no rules at all, any valid token passes)`;
  return isRequiredKey(path.slice(0, -1), last) ? `${noValue}: give it one (it is required)` : `${noValue}: give it one, or leave the key out`;
}

/** Whether a type issue (a discriminated union's included) is about a key whose value is null. */
function isNullValue(issue: z.core.$ZodIssue, doc: unknown, path: readonly string[]): boolean {
  const union = issue.code === 'invalid_union' && 'note' in issue && issue.note === 'No matching discriminator';
  return (issue.code === 'invalid_type' || union) && path.length > 0 && hasPath(doc, path) && valueAt(doc, path) === null;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
