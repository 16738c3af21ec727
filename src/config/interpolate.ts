import type { ConfigIssue } from '../errors.js';

const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces `${VAR}` and `${VAR:-default}` in every string value of a parsed
 * document. Substitution happens after parsing, so an environment value can
 * never inject YAML structure. `$${VAR}` is a literal `${VAR}`.
 * An unset variable without a default is reported with its key path.
 */
export function interpolateEnv(doc: unknown, env: NodeJS.ProcessEnv, issues: ConfigIssue[], path: string[] = []): unknown {
  if (typeof doc === 'string') return interpolateString(doc, env, issues, path);
  if (Array.isArray(doc)) return doc.map((v, i) => interpolateEnv(v, env, issues, [...path, String(i)]));
  if (isPlainObject(doc)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(doc)) out[k] = interpolateEnv(v, env, issues, [...path, k]);
    return out;
  }
  return doc;
}

function interpolateString(s: string, env: NodeJS.ProcessEnv, issues: ConfigIssue[], path: string[]): string {
  if (!s.includes('${')) return s;
  const ESCAPED = '\u0000';
  const replaced = s.replaceAll('$${', ESCAPED).replace(PLACEHOLDER, (_m, name: string, fallback: string | undefined) => {
    const value = env[name];
    if (value !== undefined && value !== '') return value;
    if (fallback !== undefined) return fallback;
    issues.push({ path: path.join('.'), message: `environment variable ${name} is not set (use \${${name}:-default} for a default)` });
    return '';
  });
  return replaced.replaceAll(ESCAPED, '${');
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
