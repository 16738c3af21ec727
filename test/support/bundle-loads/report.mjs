// The line a test reads for each file of dist/bundle/ the process resolves ("bundle-load: cli.js").
export function reportBundleLoad(url) {
  const at = url.indexOf('/dist/bundle/');
  if (at >= 0) process.stderr.write(`bundle-load: ${url.slice(at + '/dist/bundle/'.length)}\n`);
}
