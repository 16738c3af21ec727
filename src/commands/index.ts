import type { CommandModule } from 'yargs';
import type { Io } from './shared.js';

/** Commands beyond run/validate/schema, one module each. */
export const extraCommands: Array<(io: Io, setExit: (code: number) => void) => CommandModule<any, any>> = [];
