import { trimTrailingNewline } from './configured-files.js';
import type { ConfigIssue } from '../errors.js';

/**
 * `$${` (an escaped, literal `${`), a `${VAR}` / `${VAR:-default}` placeholder,
 * or any other `${` (a typo, or shell syntax such as `${VAR-x}` or `${VAR:=x}`
 * that this does not implement). All are matched in one left-to-right pass, so
 * an escape never needs a stand-in character that a config value could itself
 * contain.
 */
const PLACEHOLDER = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{/g;

/**
 * Replaces `${VAR}` and `${VAR:-default}` in every string value of a parsed
 * document. Substitution happens after parsing, so an environment value can
 * never inject YAML structure. `$${VAR}` is a literal `${VAR}`.
 * An unset variable without a default is reported with its key path, and so
 * is a `${` that starts no placeholder of this syntax, and one in a key:
 * left as literal text they would give a value nobody meant (a claim rule
 * that can never match, an issuer URL with `${` in it).
 *
 * `wholeValues`, when given, gets the key path of every value that was one
 * placeholder and nothing else (`clockSkewSeconds: ${SKEW:-30}`): the text it
 * gave may stand for a number or a boolean where the schema wants one
 * (typedPlaceholders in load.ts).
 */
export function interpolateEnv(doc: unknown, env: NodeJS.ProcessEnv, issues: ConfigIssue[], wholeValues?: string[][]): unknown {
  const ancestors = new Set<object>();
  const walk = (node: unknown, path: string[]): unknown => {
    if (typeof node === 'string') {
      if (wholeValues && WHOLE_PLACEHOLDER.test(node)) wholeValues.push(path);
      return interpolateString(node, env, issues, path);
    }
    if (typeof node !== 'object' || node === null) return node;
    // A YAML alias may point at one of its own ancestors (`x: &a [*a]`); walking it would never end.
    if (ancestors.has(node)) {
      issues.push({ path: path.join('.'), message: 'a YAML alias makes this value contain itself' });
      return undefined;
    }
    ancestors.add(node);
    let out: unknown = node;
    if (Array.isArray(node)) out = node.map((v, i) => walk(v, [...path, String(i)]));
    else if (isPlainObject(node)) {
      const obj: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(node)) {
        if (k.includes('${')) issues.push({ path: [...path, k].join('.'), message: 'placeholders fill values only, not keys' });
        setOwn(obj, k, walk(v, [...path, k]));
      }
      out = obj;
    }
    ancestors.delete(node);
    return out;
  };
  return walk(doc, []);
}

/** A value that is one `${VAR}` or `${VAR:-default}` and nothing else. */
const WHOLE_PLACEHOLDER = /^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$/;

function interpolateString(s: string, env: NodeJS.ProcessEnv, issues: ConfigIssue[], path: string[]): string {
  if (!s.includes('${')) return s;
  return s.replace(PLACEHOLDER, (match: string, name: string | undefined, fallback: string | undefined) => {
    if (match === '$${') return '${';
    if (name === undefined) {
      issues.push({ path: path.join('.'), message: 'a ${ that starts no placeholder: write ${VAR} or ${VAR:-default} (a letter or _ first, then letters, digits, _), or $${ for a literal ${' });
      return match;
    }
    // `${A:-${B}}` would end at the first `}` and leave a literal `${B}` behind, silently: refused instead.
    if (fallback !== undefined && fallback.replaceAll('$${', '').includes('${')) {
      issues.push({ path: path.join('.'), message: `the default of \${${name}:-…} holds another placeholder; a default is literal text (write $\${ for a literal \${)` });
      return '';
    }
    // Line breaks at the end dropped, as a secret file's are (configured-files.ts): a Kubernetes Secret made from a
    // file (`--from-file`) puts its final newline into the variable, and `abc\n` sent as a client secret is refused
    // by the IdP with nothing to say why.
    const value = env[name] === undefined ? undefined : trimTrailingNewline(env[name]);
    if (value !== undefined && value !== '') return value;
    // A default may itself hold an escaped `$${` (it cannot hold a `}`), e.g. `${A:-$${B}}` gives `${B}`.
    if (fallback !== undefined) return fallback.replaceAll('$${', '${');
    // Set to "" it counts as unset (a Kubernetes secret key that is present but empty); said so, as "not set" sends
    // the operator looking for a variable that is there.
    const state = value === '' ? 'is set but empty, which counts as unset' : 'is not set';
    issues.push({ path: path.join('.'), message: `environment variable ${name} ${state} (use \${${name}:-default} for a default)` });
    // The config is refused for this issue; the value only goes on to the check for the rest of the config's problems
    // (load.ts, shapeIssuesBeside). As the placeholder text it is a value there, as it will be: empty, `issuer` would be
    // missing too and "set exactly one of issuer or tokenEndpoint" would be said of a key the config sets.
    return match;
  });
}

/**
 * Sets an own data property. Plain assignment of a key named `__proto__` would
 * replace the object's prototype instead, and the key would vanish before
 * validation could report it as unknown.
 */
export function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
