// `node --import <this file>`: reports on stderr each file of dist/bundle/ the process loads ("bundle-load: cli.js"),
// so a test can see which parts of the bundle a command really loaded (test/e2e/bundle.test.ts).
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
