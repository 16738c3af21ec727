import { isPlainObject } from './interpolate.js';

/** Keys whose values are secrets and never printed (validate output, logs). */
const SECRET_KEYS = new Set(['clientSecret']);

/**
 * A copy of the config with every secret value replaced by `[redacted]`, and
 * without the CA bundles loaded beside each `caFile` (`ca`): the path is what
 * the user wrote and what they want to see.
 */
export function redactConfig<T>(config: T): T {
  return walk(config) as T;
}

function walk(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(walk);
  if (isPlainObject(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, val] of Object.entries(v)) {
      if (k === 'ca' && typeof v.caFile === 'string') continue;
      out[k] = SECRET_KEYS.has(k) && val !== undefined ? '[redacted]' : walk(val);
    }
    return out;
  }
  return v;
}
