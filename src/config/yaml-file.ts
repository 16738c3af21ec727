import { isUtf8 } from 'node:buffer';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Document, type YAMLError } from 'yaml';
import { ConfigError, type ConfigIssue } from '../errors.js';

/**
 * A config file's text (or the dev issuer's clients file's), read to its end but never past `maxBytes` (a
 * ConfigError). A FIFO or /dev/stdin (`--config <(envsubst < cfg.yaml)`) is read too, so nothing is refused on what
 * stat says: the cap is on the bytes read, which also stops a device that never ends (`--config /dev/zero` grew to
 * gigabytes) and a file growing meanwhile. With `regularFileOnly` (a reload) anything else is refused without
 * waiting on it: a pipe was read at startup and has nothing more, and a FIFO put in the file's place would hold the
 * sidecar's one thread until something wrote to it.
 * The text must be UTF-8: decoded leniently, a Latin-1 `é` in a claim value or a secret would silently become U+FFFD.
 */
export function readBoundedText(path: string, maxBytes: number, why: string, { regularFileOnly = false } = {}): string {
  const fd = openSync(path, regularFileOnly ? constants.O_RDONLY | constants.O_NONBLOCK : 'r');
  try {
    const stat = regularFileOnly ? fstatSync(fd) : undefined;
    // Said as at startup, where reading a directory fails with EISDIR: "restart the sidecar" would not help.
    if (stat?.isDirectory()) throw Object.assign(new Error(`EISDIR: illegal operation on a directory, read`), { code: 'EISDIR' });
    if (stat && !stat.isFile()) {
      throw new ConfigError([{ path, message: 'not a regular file: a reload reads the config files again, which a pipe or device cannot give; restart the sidecar to read it' }]);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(64 * 1024);
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) return utf8Text(Buffer.concat(chunks, total), path);
      total += n;
      if (total > maxBytes) throw new ConfigError([{ path, message: `larger than ${maxBytes / 1024 / 1024} MiB, which ${why}` }]);
      chunks.push(chunk.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
}

/** The bytes as UTF-8 text (a leading byte order mark dropped), or a ConfigError naming the first line that is not. */
function utf8Text(bytes: Buffer, path: string): string {
  if ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff)) {
    throw new ConfigError([{ path, message: 'UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8' }]);
  }
  if (isUtf8(bytes)) return new TextDecoder().decode(bytes);
  // A line break is never part of a multi-byte character, so the first line that is not UTF-8 on its own is the one
  // (the last line, when every one before it is).
  let line = 1;
  for (let start = 0; ; line++) {
    const end = bytes.indexOf(0x0a, start);
    if (end < 0 || !isUtf8(bytes.subarray(start, end))) break;
    start = end + 1;
  }
  // The bytes are not quoted: a config holds secrets.
  throw new ConfigError([{ path, message: `not UTF-8 text (line ${line}); save it as UTF-8` }]);
}

/**
 * A YAML (or JSON) document's value, or a ConfigError listing every syntax problem with its line, addressed to `path`.
 * Never quotes the file's text (see QUOTING_MESSAGES).
 */
export function parseYaml(text: string, path: string): unknown {
  return parseYamlFile(text, path).value;
}

/** A parsed config file: its value, and where in the text a key path is. */
export interface YamlFile {
  value: unknown;
  /**
   * The line of the key at `keyPath` (`inbound.rules.0.match`, as a ConfigIssue names it), or, for a key the file
   * does not have, of the deepest key on the way to it that it has (`outbound.routes.2.audience: required` points
   * at route 2). Undefined when not even the first key is there.
   */
  lineOf(keyPath: string | readonly string[]): number | undefined;
  /**
   * Whether the file writes `null`, `~` or `!!null` at `keyPath` (through an alias too), as against a key with no
   * value at all (`tls:` with nothing after it, `{ tls }`, `? tls`), which YAML also reads as null: what is left when a
   * section's keys are commented out.
   */
  isExplicitNull(keyPath: string): boolean;
}

/** parseYaml, keeping the document so that a later problem at a key can say which line it is on. */
export function parseYamlFile(text: string, path: string): YamlFile {
  // The YAML parser reads JSON too (JSON is a subset of YAML 1.2). `merge`: YAML 1.1's `<<: *anchor` merge keys, which
  // configs written for Kubernetes tooling use to share a block.
  const lineCounter = new LineCounter();
  // Duplicate keys are found below rather than by the parser's `uniqueKeys`, which compares each key with every
  // earlier one of its map: a 1 MiB file of 60,000 `params` took 40 s to read, the whole time on the sidecar's one
  // thread during a reload.
  // resolveKnownTags off: YAML 1.1's `!!omap`, `!!set`, `!!pairs`, `!!binary` and `!!timestamp` would otherwise become a
  // Map, a Set, bytes or a Date, which the schema took as an object with no keys (a `claimHeaders: !!omap` validated
  // as `{}` and forwarded nothing). Unresolved, they are refused below as every other tag a config cannot use.
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: false, merge: true, resolveKnownTags: false, lineCounter });
  const duplicates = duplicateKeyLines(doc, lineCounter);
  const unnamed = unnamedKeyLines(doc, lineCounter);
  const unusedAnchors = unusedAnchorLines(doc, lineCounter);
  // The parser only warns about a tag it does not know and keeps the text: `clientSecret: !env CLIENT_SECRET` would
  // send the word CLIENT_SECRET as the secret. Refused instead, as every other thing the sidecar would not do as written.
  // The message never names the tag: to YAML an unquoted secret that starts with `!` (`clientSecret: !Pa55w0rd`) is a
  // tag too, and a refused reload is logged.
  const unknownTags = doc.warnings.filter((w) => w.code === 'TAG_RESOLVE_FAILED');
  // `%YAML 1.1` switches the parser to YAML 1.1's schema, where `!!omap` and `!!set` are a Map and a Set again (read as
  // sections with no keys), a plain 2001-12-14 is a Date, and yes/no are booleans: not what the file reads as anywhere
  // else in the config's rules. Refused rather than read two ways.
  const yaml11 = doc.directives?.yaml.version === '1.1';
  if (doc.errors.length > 0 || unknownTags.length > 0 || duplicates.length > 0 || unusedAnchors.length > 0 || unnamed.length > 0 || yaml11) {
    const issues = [...doc.errors, ...unknownTags].map((e) => {
      const line = e.linePos ? ` (line ${e.linePos[0].line})` : '';
      return e.code === 'TAG_RESOLVE_FAILED'
        ? `a value that starts with ! is a YAML tag, which a config cannot use${line}: quote the value, or use \${VAR} for the environment`
        : `${yamlMessage(e.message)}${line}`;
    });
    issues.push(...duplicates.map((line) => `Map keys must be unique${line === undefined ? '' : ` (line ${line})`}`));
    if (yaml11) issues.unshift('a %YAML 1.1 directive: a config is read as YAML 1.2 (its only schema here); remove the directive');
    issues.push(...unnamed.map(({ line, what }) => `${what}, which no config key is${line === undefined ? '' : ` (line ${line})`}`));
    issues.push(
      ...unusedAnchors.map((line) => `an anchor (&name) that no alias (*name) uses${line === undefined ? '' : ` (line ${line})`}: quote a value that starts with &`),
    );
    // One tag can fail twice over (`!abc!`: no suffix, and unresolved); said once.
    // The placeholder hint first: an unquoted `${VAR}` in `{ }` makes a dozen parser errors of the lines after it,
    // and the one thing to do comes before them.
    throw new ConfigError([...flowPlaceholderHint(text, doc.errors, path), ...[...new Set(issues)].map((message) => ({ path, message }))]);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // An alias to no anchor, or one expanding past maxAliasCount: thrown here, not listed in doc.errors.
    const line = unresolvedAliasLine(doc, lineCounter);
    throw new ConfigError([{ path, message: `${yamlMessage(err instanceof Error ? err.message : String(err))}${line ? ` (line ${line})` : ''}` }]);
  }
  return {
    value,
    lineOf: (keyPath) => walkTo(doc, lineCounter, keyPath).line,
    isExplicitNull: (keyPath) => {
      const { node, reached } = walkTo(doc, lineCounter, keyPath);
      const value = isAlias(node) ? node.resolve(doc) : node;
      return reached && isScalar(value) && value.value === null && (value.source !== '' || value.tag !== undefined);
    },
  };
}

/**
 * The line of every key that repeats an earlier key of its map, found with one set per map. Keys are compared as the
 * config sees them, as text: `1` and `"1"` are one key once the document is read, and so are `team` and an alias
 * (`*t`) to it, which the parser's own `uniqueKeys` told apart, and the later value silently replaced the earlier.
 */
function duplicateKeyLines(doc: Document, lineCounter: LineCounter): Array<number | undefined> {
  const lines: Array<number | undefined> = [];
  visit(doc, {
    Map(_, map) {
      const seen = new Set<string>();
      for (const { key } of map.items) {
        const resolved = isAlias(key) ? key.resolve(doc) : key;
        if (!isScalar(resolved)) continue;
        const text = String(resolved.value);
        if (!seen.has(text)) {
          seen.add(text);
          continue;
        }
        const at = (key as { range?: [number] } | null)?.range?.[0];
        lines.push(at === undefined ? undefined : lineCounter.linePos(at).line);
      }
    },
  });
  // visit() sees a map before the maps inside it: in line order, as the parser reported them.
  return lines.sort((a, b) => (a ?? 0) - (b ?? 0));
}

/**
 * Keys no config has: a list or a map as a key (`? [a]`), which reading the document would turn into text with a
 * warning from Node on stderr, and an empty one (`"": 1`, `? ~`), which the schema could only call an unknown key
 * without a name or a line.
 */
function unnamedKeyLines(doc: Document, lineCounter: LineCounter): Array<{ line: number | undefined; what: string }> {
  const found: Array<{ line: number | undefined; what: string }> = [];
  visit(doc, {
    Pair(_, pair) {
      const key = isAlias(pair.key) ? pair.key.resolve(doc) : pair.key;
      const empty = key === null || (isScalar(key) && (key.value === null || key.value === ''));
      if (isScalar(key) && !empty) return;
      const at = (pair.key as { range?: [number] } | null)?.range?.[0] ?? (pair.value as { range?: [number] } | null)?.range?.[0];
      found.push({ line: at === undefined ? undefined : lineCounter.linePos(at).line, what: empty ? 'an empty key' : 'a key that is a list or a map' });
    },
  });
  return found.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
}

/**
 * The line of every anchor (`&name`) no alias (`*name`) refers to. To YAML an unquoted secret that starts with `&`
 * (`clientSecret: &S3cr3t rest`) is an anchor on what follows it: the secret became "rest", or null, without a word.
 * An anchor no alias uses does nothing (aliases do not reach across files), so refusing one loses nothing. The name
 * is never said: it may be that secret.
 */
function unusedAnchorLines(doc: Document, lineCounter: LineCounter): Array<number | undefined> {
  const anchored: Array<{ name: string; offset: number | undefined }> = [];
  const used = new Set<string>();
  visit(doc, {
    Alias(_, alias) {
      used.add(alias.source);
    },
    Node(_, node) {
      if (node.anchor !== undefined) anchored.push({ name: node.anchor, offset: node.range?.[0] });
    },
  });
  return anchored.filter((a) => !used.has(a.name)).map((a) => (a.offset === undefined ? undefined : lineCounter.linePos(a.offset).line));
}

/** Each map's scalar keys (as text) to their first pair, built once per map: walkTo runs once per issue. */
const keyIndexes = new WeakMap<object, Map<string, { key: unknown; value: unknown }>>();
function keyIndex(map: { items: Array<{ key: unknown; value: unknown }> }): Map<string, { key: unknown; value: unknown }> {
  let index = keyIndexes.get(map);
  if (!index) {
    index = new Map();
    for (const pair of map.items) if (isScalar(pair.key) && !index.has(String(pair.key.value))) index.set(String(pair.key.value), pair);
    keyIndexes.set(map, index);
  }
  return index;
}

/**
 * The node at `keyPath` (`reached`), or the deepest one on the way to it, and the line of the last key found (see
 * YamlFile.lineOf). One lookup per key on the way (keyIndex): a file with 100,000 unknown keys has as many issues.
 */
function walkTo(doc: Document, lineCounter: LineCounter, keyPath: string | readonly string[]): { node: unknown; line: number | undefined; reached: boolean } {
  // Given as exact keys, each segment is one key; given as text, a key may span several segments (below).
  const exact = typeof keyPath !== 'string';
  const segments = exact ? keyPath : keyPath === '' ? [] : keyPath.split('.');
  let node: unknown = doc.contents;
  let line: number | undefined;
  for (let i = 0; i < segments.length; ) {
    if (isAlias(node)) node = node.resolve(doc);
    let step: { node: unknown; offset: number | undefined; used: number } | undefined;
    if (isMap(node)) {
      // A key may itself hold dots (a claim named `https://example.com/groups`): the shortest join of the segments
      // that names a key of this map is taken.
      for (let used = 1; used <= (exact ? 1 : segments.length - i) && !step; used++) {
        const name = segments.slice(i, i + used).join('.');
        const pair = keyIndex(node).get(name);
        if (pair) step = { node: pair.value, offset: isScalar(pair.key) ? pair.key.range?.[0] : undefined, used };
      }
    } else if (isSeq(node) && /^\d+$/.test(segments[i]!)) {
      const item: unknown = node.items[Number(segments[i])];
      if (item !== undefined) step = { node: item, offset: (item as { range?: [number] } | null)?.range?.[0], used: 1 };
    }
    if (!step) return { node, line, reached: false };
    if (step.offset !== undefined) line = lineCounter.linePos(step.offset).line;
    node = step.node;
    i += step.used;
  }
  return { node, line, reached: true };
}

/**
 * The YAML parser's messages that quote the text they stopped at, and what is said instead. A config holds secrets
 * (`clientSecret`, `params`), and a refused reload is logged: `clientSecret: *x9...` (an alias to no anchor) would put
 * the secret in the log. The line number says where to look.
 */
const QUOTING_MESSAGES: ReadonlyArray<[RegExp, string]> = [
  [/^Unresolved alias\b/, 'an alias (*name) names no anchor (&name) set before it; quote a value that starts with *'],
  [/^Not a YAML token\b/, 'text the YAML parser cannot read'],
  [/^Block scalar header includes extra characters\b/, 'text after | or > on its line (a block value starts on the next line); quote a value that starts with | or >'],
  [/^Invalid escape sequence\b/, 'an invalid \\ escape in a double-quoted value; use single quotes for a value with a literal \\'],
  [/^Unresolved plain scalar\b/, 'a value the YAML parser cannot read'],
  [/^Source contains multiple documents\b/, 'more than one YAML document (a second after ---); a config file is one document, give overlays as further --config files'],
  // Not a quote, but JavaScript's own words for thousands of nested `[` or `{`, which say nothing about the file (on
  // Node 24 the parser's regular expressions also run out of stack: "Invalid regular expression: /…/: Stack overflow").
  [/^Maximum call stack size exceeded\b|\bStack overflow$/, 'nested too deeply (thousands of levels of [ or {)'],
];

/** A YAML parser message without the text it quotes (see QUOTING_MESSAGES), on one line. */
function yamlMessage(message: string): string {
  const first = message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
  const known = QUOTING_MESSAGES.find(([pattern]) => pattern.test(first));
  if (known) return known[1];
  // The parser's `Unexpected scalar token in YAML stream: "text"` form.
  return first.replace(/: "(?:[^"\\]|\\.)*"$/, '');
}

/**
 * In a flow collection (`{ level: ${LEVEL} }`, `[${AUD}]`) the braces of an unquoted placeholder are YAML syntax, and
 * the parser's messages ("Unexpected flow-map-start at node end") do not say so: one more issue says what to write.
 */
function flowPlaceholderHint(text: string, errors: readonly YAMLError[], path: string): ConfigIssue[] {
  const lines = text.split(/\r?\n/);
  const line = errors.map((e) => e.linePos?.[0].line).find((n) => n !== undefined && /(^|[\s{[,:])\$\{/.test(lines[n - 1] ?? ''));
  return line ? [{ path, message: `a \${VAR} inside { } or [ ] must be quoted ("\${VAR}"), or its braces are read as YAML (line ${line})` }] : [];
}

/** The line of the first alias with no anchor of its name before it (what toJS refuses), if any. */
function unresolvedAliasLine(doc: Document, lineCounter: LineCounter): number | undefined {
  const anchors = new Set<string>();
  let line: number | undefined;
  visit(doc, {
    Node(_key, node) {
      if (isAlias(node)) {
        if (anchors.has(node.source)) return undefined;
        line = node.range ? lineCounter.linePos(node.range[0]).line : undefined;
        return visit.BREAK;
      }
      if (node.anchor) anchors.add(node.anchor);
      return undefined;
    },
  });
  return line;
}

