import type { CommandModule } from 'yargs';
import type { Io } from './shared.js';
import { demoCommand } from './demo.js';
import { devIssuerCommand } from './dev-issuer.js';
import { tokenCommand } from './token.js';
import { verifyCommand } from './verify.js';

/** Commands beyond run/validate/schema, one module each. */
export const extraCommands: Array<(io: Io, setExit: (code: number) => void) => CommandModule<any, any>> = [devIssuerCommand, demoCommand, tokenCommand, verifyCommand];
