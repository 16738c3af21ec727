import { isPlainObject, setOwn } from './interpolate.js';

/**
 * Deep-merges config layers in order (base first, overlays after). Objects merge
 * key by key; arrays and scalars from a later layer replace earlier ones, so an
 * overlay's `rules:` is the whole rule list, never an accidental concatenation.
 * `null` in an overlay removes the key (e.g. `outbound: null` for an inbound-only namespace), at any depth, also
 * inside a section no earlier layer has.
 */
export function deepMerge(layers: unknown[]): unknown {
  return layers.reduce((acc, layer) => mergeTwo(acc, layer), undefined);
}

function mergeTwo(base: unknown, overlay: unknown): unknown {
  if (overlay === undefined) return base;
  if (isPlainObject(base) && isPlainObject(overlay)) {
    const out: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(overlay)) {
      if (v === null) delete out[k];
      // A section the earlier layers lack is merged into an empty one, so a `null` inside it removes a key there too
      // (the default applies) instead of reaching the schema as a null value.
      else setOwn(out, k, mergeTwo(Object.hasOwn(base, k) ? base[k] : isPlainObject(v) ? {} : undefined, v));
    }
    return out;
  }
  return overlay;
}
