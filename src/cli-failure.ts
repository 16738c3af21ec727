import { ConfigError, SidecarError } from './errors.js';

/** What a failed command prints after `oidc-sidecar: `: one clear message (a config's issue list), never a stack trace. */
export function describeFailure(err: unknown): string {
  if (err instanceof ConfigError) return `invalid config:\n${err.message}`;
  if (err instanceof SidecarError) return err.message;
  if (err && typeof err === 'object' && 'code' in err && (err as { code: string }).code === 'EADDRINUSE') {
    return `cannot listen: address ${(err as { address?: string; port?: number }).address}:${(err as { port?: number }).port} is already in use`;
  }
  return err instanceof Error ? err.message : String(err);
}
