import * as z from '../zod.js';
import { configSchema } from './schema.js';

/** The parts of the config's JSON Schema a key lookup walks. */
interface SchemaNode {
  properties?: Record<string, SchemaNode>;
  required?: string[];
  items?: SchemaNode;
  additionalProperties?: SchemaNode | boolean;
  anyOf?: SchemaNode[];
  oneOf?: SchemaNode[];
  allOf?: SchemaNode[];
}

// Built on the first unknown key only: a valid config never needs it.
let root: SchemaNode | undefined;

/**
 * The known key closest to an unknown one at `path` (the object that holds it), when it is close enough to be the
 * key meant: the same but for letter case or `_`, a prefix (`clockSkew`, `algorithm`), or a typo or two away
 * (`audiance`, `rulez`). Undefined when none is.
 */
export function suggestKey(path: readonly PropertyKey[], unknown: string): string | undefined {
  const typed = normalize(unknown);
  let best: { key: string; distance: number } | undefined;
  for (const key of keysAt(path)) {
    const known = normalize(key);
    // Lengths further apart than a typo can bridge are skipped unmeasured: the key is the config's to choose, and the
    // table below costs its length times the known key's (a 200,000-character key took seconds).
    const distance = known === typed ? 0 : isPrefix(typed, known) ? 1 : Math.abs(typed.length - known.length) > allowedDistance(typed) ? Infinity : editDistance(typed, known);
    if (distance <= allowedDistance(typed) && (best === undefined || distance < best.distance)) best = { key, distance };
  }
  return best?.key;
}

/**
 * For an unknown key with dots whose parts are each a known key below the one before (`log.level` at the top,
 * Helm's and Spring's spelling), where it goes: `put level under log (log: { level: … })`. Undefined for any other key.
 */
export function nestedKeyHint(path: readonly PropertyKey[], unknown: string): string | undefined {
  const parts = unknown.split('.');
  if (parts.length < 2) return undefined;
  for (let i = 0; i < parts.length; i++) {
    if (!keysAt([...path, ...parts.slice(0, i)]).includes(parts[i]!)) return undefined;
  }
  const nested = parts.slice(0, -1).reduceRight((inner, part) => `${part}: { ${inner} }`, `${parts.at(-1)}: …`);
  return `put ${parts.at(-1)} under ${parts.slice(0, -1).join('.')} (${nested})`;
}

function normalize(key: string): string {
  return key.toLowerCase().replace(/[_-]/g, '');
}

function isPrefix(a: string, b: string): boolean {
  return Math.min(a.length, b.length) >= 4 && (a.startsWith(b) || b.startsWith(a));
}

function allowedDistance(typed: string): number {
  return typed.length <= 4 ? 1 : typed.length <= 8 ? 2 : 3;
}

/** Whether an object at `path` must have `key`, in some branch of a union: no default fills it in. */
export function isRequiredKey(path: readonly PropertyKey[], key: string): boolean {
  return nodesAt(path).some((node) => node.required?.includes(key));
}

/** Every key an object at `path` takes, over every branch of a union (the token source types). */
function keysAt(path: readonly PropertyKey[]): string[] {
  return [...new Set(nodesAt(path).flatMap((node) => Object.keys(node.properties ?? {})))];
}

/** The schema nodes at `path`, one per branch of each union on the way. */
function nodesAt(path: readonly PropertyKey[]): SchemaNode[] {
  root ??= z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as SchemaNode;
  let nodes = branches(root);
  for (const segment of path) {
    nodes = nodes.flatMap((node) => {
      const next = node.properties?.[String(segment)] ?? (/^\d+$/.test(String(segment)) ? node.items : undefined);
      return next ? branches(next) : [];
    });
  }
  return nodes;
}

function branches(node: SchemaNode): SchemaNode[] {
  return [node, ...[...(node.anyOf ?? []), ...(node.oneOf ?? []), ...(node.allOf ?? [])].flatMap(branches)];
}

/** Optimal string alignment distance: insertions, deletions, substitutions and swaps of two neighbours. */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}
