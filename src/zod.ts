import { config, globalRegistry, type core } from 'zod';

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
 *
 * customError: a key left out reads `required` (with the key's description,
 * when it has one, as the hint), instead of zod's "Invalid input: expected
 * string, received undefined", or a bare "Invalid input" for a key that takes
 * several forms. A schema's own message still wins (zod asks this map only
 * when the schema gives none).
 */
config({ jitless: true, customError: missingKeyMessage });

/** `required (this workload's name, used in logs and metrics)` for a key with no value; undefined (zod's own message) otherwise. */
export function missingKeyMessage(issue: core.$ZodRawIssue): string | undefined {
  if (issue.input !== undefined || (issue.code !== 'invalid_type' && issue.code !== 'invalid_union')) return undefined;
  // Both codes are raised by a schema (never a check), the one the key's description is registered on.
  const description = issue.inst ? globalRegistry.get(issue.inst as core.$ZodType)?.description : undefined;
  // "The app, e.g. ..." reads "the app"; an acronym (PEM, JWT) keeps its capitals.
  return description ? `required (${description.replace(/^[A-Z](?=[a-z])/, (c) => c.toLowerCase())})` : 'required';
}

/**
 * The message of a union for a value none of its forms takes, which zod words as a bare "Invalid input":
 * `expected a string or a non-empty list of strings, got a number`. A list names its first item of the wrong kind.
 * A missing value is left to missingKeyMessage (`required`).
 */
export function unionMessage(expected: string, isItem: (item: unknown) => boolean): (issue: core.$ZodRawIssue) => string | undefined {
  return (issue) => {
    const value = issue.input;
    if (value === undefined) return undefined;
    const bad = Array.isArray(value) ? value.findIndex((item) => !isItem(item)) : -1;
    const got = bad >= 0 ? `a list whose item ${bad} is ${kindOf((value as unknown[])[bad])}` : kindOf(value);
    return `expected ${expected}, got ${got}`;
  };
}

/** What a config value is, in the words of YAML: a map, a list, null. */
function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  if (value === '') return 'an empty string';
  return `a ${typeof value}`;
}

export * from 'zod';
