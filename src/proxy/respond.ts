import type { ServerResponse } from 'node:http';

/**
 * Sends the sidecar's own small JSON error response: `{"error": "...", "reason": "<code>"}`.
 * Safe to call at any point: if headers already went out, the connection is cut
 * instead, so a client never mistakes a half-forwarded body for a whole one.
 */
export function sendError(
  res: ServerResponse,
  status: number,
  reason: string,
  message: string,
  extraHeaders: Record<string, string> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: message, reason });
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...extraHeaders,
  });
  res.end(body);
}
