import { readFile } from 'node:fs/promises';
import { describeFsError } from '../../config/configured-files.js';
import { TokenUnavailableError } from '../../errors.js';

/** Reads a file that is re-read at every use (subject tokens, client assertions); failures are TokenUnavailableErrors. */
export async function readRuntimeFile(path: string, what: string): Promise<string> {
  let text: string;
  try {
    text = (await readFile(path, 'utf8')).trim();
  } catch (err) {
    throw new TokenUnavailableError(`cannot read ${what} ${path}: ${describeFsError(err)}`, undefined, { cause: err });
  }
  if (text.length === 0) throw new TokenUnavailableError(`${what} ${path} is empty`);
  return text;
}
