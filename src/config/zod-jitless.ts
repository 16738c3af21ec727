import { config } from 'zod';

/*
 * Imported for its effect, before any module that defines a schema (zod reads
 * the setting when a schema is created). By default zod compiles a fast parser
 * for every object schema with `new Function`: source text, bytecode and code
 * that a sidecar keeps for its whole life to parse its config at startup and
 * on reload, where speed does not matter (0.5 MiB at rest, docs/performance.md,
 * "The bundle"). Jitless, zod parses with its generic code and never builds
 * code from strings. test/e2e/bundle.test.ts checks that a sidecar compiles no
 * function from a string.
 */
config({ jitless: true });
