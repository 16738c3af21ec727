// Module resolution hook for register.mjs (runs on Node's loader thread).
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  const at = resolved.url.indexOf('/dist/bundle/');
  if (at >= 0) process.stderr.write(`bundle-load: ${resolved.url.slice(at + '/dist/bundle/'.length)}\n`);
  return resolved;
}
