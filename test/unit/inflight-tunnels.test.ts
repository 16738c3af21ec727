import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createInflightTracker } from '../../src/inflight.js';
import { splice } from '../../src/proxy/tunnel.js';

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
});

/** A connected loopback TCP pair: [the client end, the server's end]; `ignoreEnd`: the server's end stays open after a FIN. */
async function socketPair(ignoreEnd = false): Promise<[Socket, Socket]> {
  const server = createServer({ allowHalfOpen: ignoreEnd });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  const serverEnd = await accepted;
  for (const s of [client, serverEnd]) s.on('error', () => {});
  return [client, serverEnd];
}

describe('inflight tracker: tunnels at the drain deadline', () => {
  it('cuts a spliced tunnel on both sides, so an upstream that ignores the end cannot keep the process alive', async () => {
    // caller ⇄ [callerEnd | sidecar | upstreamEnd] ⇄ app. The grace after one side ends is a minute: only a cut of
    // both sides closes the upstream one before the test's timeout.
    const [caller, callerEnd] = await socketPair();
    const [upstreamEnd, app] = await socketPair(true);
    splice(callerEnd, upstreamEnd, { graceMs: 60_000, idleMs: 0 });
    const tracker = createInflightTracker();
    tracker.trackTunnel(callerEnd);

    const upstreamClosed = new Promise<void>((r) => upstreamEnd.once('close', () => r()));
    const appClosed = new Promise<void>((r) => app.once('close', () => r()));
    await tracker.drainTunnels(0);
    await upstreamClosed;
    expect(callerEnd.destroyed).toBe(true);
    expect(upstreamEnd.destroyed).toBe(true);
    caller.destroy();
    app.destroy();
    await appClosed;
  });

  it('resolves at once with no tunnels, and once the last tunnel closes before the deadline', async () => {
    const tracker = createInflightTracker();
    await tracker.drainTunnels(60_000);
    const [caller, callerEnd] = await socketPair();
    tracker.trackTunnel(callerEnd);
    let drainedYet = false;
    const drained = tracker.drainTunnels(60_000).then(() => void (drainedYet = true));
    // While the tunnel is open the drain waits and leaves it alone: a round trip through it still arrives, and the drain
    // has not resolved. (A drain that cut at once would close callerEnd instead; it would also pass the checks below.)
    caller.write('still open');
    const seen = await new Promise<string>((resolve) => {
      callerEnd.once('data', (chunk: Buffer) => resolve(String(chunk)));
      callerEnd.once('close', () => resolve('closed'));
    });
    expect(seen).toBe('still open');
    expect(drainedYet).toBe(false);
    caller.end();
    callerEnd.on('end', () => callerEnd.end());
    await drained;
    expect(callerEnd.destroyed || callerEnd.writableEnded).toBe(true);
  });
});
