import { describeFsError, FILE_LIMITS, readSmallFile } from '../../config/configured-files.js';
import { TokenUnavailableError } from '../../errors.js';

/**
 * Reads a file that is re-read at every use (token files, subject tokens, client assertions): a regular
 * file of at most 64 KiB (FILE_LIMITS.token). Failures are TokenUnavailableErrors.
 */
export async function readRuntimeFile(path: string, what: string): Promise<string> {
  let text: string;
  try {
    text = (await readSmallFile(path, FILE_LIMITS.token)).trim();
  } catch (err) {
    throw new TokenUnavailableError(`cannot read ${what} ${path}: ${describeFsError(err)}`, undefined, { cause: err });
  }
  if (text.length === 0) throw new TokenUnavailableError(`${what} ${path} is empty`);
  return text;
}
