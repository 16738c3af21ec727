import { config } from 'zod';

/**
 * zod, as every module of ours imports it (`import * as z from '../zod.js'`),
 * set up before any of them can create a schema: zod reads the setting when a
 * schema is created.
 *
 * Jitless: by default zod compiles a fast parser for every object schema with
 * `new Function`, and its source text, bytecode and code stay for the life of
 * the process. A sidecar parses its config at startup and on reload, where
 * speed does not matter (0.5 MiB at rest, docs/performance.md, "The bundle").
 * Jitless, zod parses with its generic code and never calls the Function
 * constructor. test/e2e/bundle.test.ts checks that a sidecar does not.
 */
config({ jitless: true });

export * from 'zod';
