import { setFlagsFromString } from 'node:v8';

/**
 * Old-generation growth between full GCs, percent. V8's default lets the old
 * space of a busy proxy roughly double before it collects; every request's
 * short-lived garbage that survived two young collections waits there. At a
 * sidecar's live heap (~15 MiB) V8's minimum step of 8 MiB dominates, so 20 %
 * and 50 % give the same peak; 50 % costs less CPU than 20 % once the live
 * heap grows (a full verified-token cache). Measured in docs/performance.md.
 */
const HEAP_GROWING_PERCENT = 50;

/**
 * Process-wide V8 tuning for a long-running proxy (measurements in
 * docs/performance.md and bench/README.md). The launcher, bin/oidc-sidecar.js,
 * calls it before it loads anything else: V8 already runs a full GC while the
 * modules load, and the old-generation limit that GC sets (up to 4× the live
 * heap with V8's own factor) holds until the next one, which under load came
 * only once the heap had reached ~40 MiB. Calling it again is harmless.
 *
 * - undici parses HTTP with llhttp compiled to WebAssembly; under load V8
 *   re-compiles that one large function with its optimizing tier, allocating
 *   ~35 MiB of compiler memory at once: a peak-RSS spike of that size.
 *   Keeping WebAssembly on the baseline compiler (Liftoff) removes the spike;
 *   CPU per proxied request measured the same. Wasm flags are read when a
 *   module is compiled, and undici compiles its parser lazily.
 * - A smaller old-generation growth factor (read at every full GC).
 * - JavaScript goes from the interpreter straight to TurboFan, with neither of V8's in-between tiers: Sparkplug
 *   (baseline code for every warm function) and Maglev (a second optimising compiler, on by default from Node 24,
 *   and in Node 22 before 22.9). A proxy's hot path ends in TurboFan either way; the in-between tiers' code and
 *   compile memory only added to the peak: 2-4 MiB on Node 24, 1.5-2 MiB on Node 22, for the same CPU per request
 *   under load. V8 reads both when it decides to tier a function up, so setting them here, before the bundle
 *   loads, takes effect for all of our code.
 *
 * All of these can be set at run time; the young generation size cannot, hence the
 * `NODE_OPTIONS=--max-semi-space-size=2` in the container image.
 */
export function tuneRuntimeForProxy(): void {
  setFlagsFromString('--liftoff-only');
  // Node 24's V8 reads --liftoff-only only when it starts, so set at run time it changed nothing there (a sidecar
  // peaked at 123-127 MiB). These two are read when a module is compiled, and together keep wasm on Liftoff on
  // Node 20, 22 and 24 alike; alone, --no-wasm-dynamic-tiering would compile everything with TurboFan up front.
  setFlagsFromString('--no-wasm-dynamic-tiering');
  setFlagsFromString('--no-wasm-tier-up');
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  setFlagsFromString('--no-sparkplug');
  setFlagsFromString('--no-maglev');
}

