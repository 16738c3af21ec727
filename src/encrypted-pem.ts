/**
 * Whether PEM text holds a private key encrypted with a passphrase: PKCS#8's `ENCRYPTED PRIVATE KEY`, or a
 * traditional (PKCS#1, SEC1) key with OpenSSL's `Proc-Type: 4,ENCRYPTED` header. OpenSSL only calls such a key
 * "bad decrypt" or "unsupported"; the sidecar has no passphrase to give, so it says what is wrong instead.
 */
export function isEncryptedPrivateKeyPem(text: string): boolean {
  return /-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text) || /^Proc-Type:\s*4,\s*ENCRYPTED\s*$/m.test(text);
}

/** The message for such a key, on the key path of the file that holds it. */
export const ENCRYPTED_KEY_MESSAGE =
  'the private key is encrypted with a passphrase, which the sidecar cannot supply: give it the key unencrypted (e.g. `openssl pkey -in <file> -out <new file>`) and protect the file with its permissions or a Secret';
