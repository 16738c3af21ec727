import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Old-generation growth between full GCs, percent. V8's default lets the old
 * space of a busy proxy roughly double before it collects; every request's
 * short-lived garbage that survived two young collections waits there. At a
 * sidecar's live heap (~15 MiB) V8's minimum step of 8 MiB dominates, so 20 %
 * and 50 % give the same peak (~87 MiB against ~95 MiB at 100 % and ~130 MiB
 * with V8's default after the startup GC); 50 % costs less CPU than 20 % once
 * the live heap grows (a full verified-token cache). Each full GC costs CPU:
 * this trades ~10 % CPU per request for ~40 MiB (docs/performance.md).
 */
const HEAP_GROWING_PERCENT = 50;

/**
 * Process-wide V8 tuning for a long-running proxy; call once at process
 * start, before the first upstream connection (measurements in
 * docs/performance.md and bench/README.md).
 *
 * - undici parses HTTP with llhttp compiled to WebAssembly; under load V8
 *   re-compiles that one large function with its optimizing tier, allocating
 *   ~35 MiB of compiler memory at once: a peak-RSS spike of that size.
 *   Keeping WebAssembly on the baseline compiler (Liftoff) removes the spike;
 *   CPU per proxied request measured the same. Wasm flags are read when a
 *   module is compiled, and undici compiles its parser lazily.
 * - A smaller old-generation growth factor (read at every full GC).
 *
 * Both are runtime-settable; the young generation size is not, hence the
 * `NODE_OPTIONS=--max-semi-space-size=4` in the container image.
 */
export function tuneRuntimeForProxy(): void {
  setFlagsFromString('--liftoff-only');
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}

/**
 * One full garbage collection once the sidecar has started. V8 sets the first
 * old-generation limit from its defaults, not from the live heap, so a busy
 * sidecar's old space used to grow by ~12 MiB of request garbage before the
 * first full GC; after one collection the limit follows the live size and the
 * growth factor above applies from the start (about -4 MiB of peak RSS). It
 * also drops what loading modules and the config left behind. `gc` is
 * reached through a fresh context so it never becomes a global of the app.
 */
export function compactAfterStartup(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  setFlagsFromString('--no-expose-gc');
  gc();
}
