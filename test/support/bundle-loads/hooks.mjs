// Module resolution hook for register.mjs where only module.register() exists (Node 20; runs on Node's loader thread).
import { reportBundleLoad } from './report.mjs';

export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  reportBundleLoad(resolved.url);
  return resolved;
}
