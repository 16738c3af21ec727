import * as z from '../zod.js';
import type { CommandModule } from 'yargs';
import { configSchema } from '../config/schema.js';
import type { Io } from './shared.js';

/** The config's JSON Schema (draft 2020-12), generated from the same zod schema that validates. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }),
    title: 'oidc-sidecar config',
  };
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
