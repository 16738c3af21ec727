/**
 * SIGTERM and SIGINT that arrive while `run` is still starting: its modules loading, its config being read, its
 * listeners binding. Until `run` installs its own handlers, Node's default would end the process at once, with exit
 * code 143 or 130 and not a line in the log; an orchestrator that stops a pod a moment after starting it would see
 * a sidecar that was killed rather than one that stopped. The launcher (bin/oidc-sidecar.js) holds them from its first
 * line instead, and `run` takes the one held once it can stop the way it always does (a `signal` line, a drain,
 * exit 0). A second SIGINT while starting is someone at a terminal who wants out now: exit 130 at once, as in a drain.
 * Node runs signal listeners from its event loop, and Node 22 and later load the bundle without turning it, so there
 * the signal often reaches JavaScript only once `run`'s own listeners are in place: what matters is that a listener
 * was there when the signal arrived, so Node's default never applied.
 */
let held: NodeJS.Signals | undefined;

function hold(signal: NodeJS.Signals): void {
  if (held !== undefined && signal === 'SIGINT') process.exit(130);
  held ??= signal;
}

export function holdStopSignals(): void {
  process.on('SIGTERM', hold);
  process.on('SIGINT', hold);
}

/** Stops holding; returns the first stop signal that came meanwhile, if any. Harmless when nothing was held. */
export function releaseStopSignals(): NodeJS.Signals | undefined {
  process.off('SIGTERM', hold);
  process.off('SIGINT', hold);
  const signal = held;
  held = undefined;
  return signal;
}
