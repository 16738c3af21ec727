import * as z from '../zod.js';
import type { CommandModule } from 'yargs';
import { configSchema } from '../config/schema.js';
import type { Io } from './shared.js';

/** The config's JSON Schema (draft 2020-12), generated from the same zod schema that validates. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    ...(withPlaceholders(z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' })) as Record<string, unknown>),
    title: 'oidc-sidecar config',
  };
}

/** A value that is one `${VAR}` or `${VAR:-default}`, as load.ts reads it where a number or boolean is wanted. */
const PLACEHOLDER_VALUE = {
  type: 'string',
  pattern: '^\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}$',
  description: 'A ${VAR} or ${VAR:-default} placeholder, read as a number or boolean once filled in',
};

/**
 * Every number, integer and boolean in the schema also takes a whole-value placeholder, as the loader does
 * (`clockSkewSeconds: ${SKEW:-30}`), so an editor checking a config against this schema does not flag one. What the
 * variable holds is checked when the config loads.
 */
function withPlaceholders(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withPlaceholders);
  if (typeof node !== 'object' || node === null) return node;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(node)) out[key] = withPlaceholders(value);
  if (out.type !== 'number' && out.type !== 'integer' && out.type !== 'boolean') return out;
  // The value's own constraints go into one branch; what describes the key (its default, its description) stays.
  const { default: fallback, description, ...typed } = out;
  return { ...(description !== undefined ? { description } : {}), ...(fallback !== undefined ? { default: fallback } : {}), anyOf: [typed, PLACEHOLDER_VALUE] };
}

export function schemaCommand(io: Io, setExit: (code: number) => void): CommandModule {
  return {
    command: 'schema',
    describe: "Print the config's JSON Schema (for editors and CI linting)",
    handler: () => {
      io.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
      setExit(0);
    },
  };
}
