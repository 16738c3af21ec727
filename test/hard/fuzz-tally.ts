import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Global setup of the hard suite: an empty tally directory before the run,
 * and after it the sum of the fuzz cases every worker recorded
 * (tallyFuzzCases), printed per property. The run fails when the total is
 * below FUZZ_MIN_TOTAL, so "over a million cases" is checked, not claimed
 * (set FUZZ_MIN_TOTAL=0 to run a single fuzz file at full volume).
 */
export default function setup(): () => void {
  const dir = process.env.FUZZ_TALLY_DIR!;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return () => {
    const perProperty = new Map<string, number>();
    for (const file of readdirSync(dir)) {
      for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
        const [name, n] = line.split('\t');
        if (name && n) perProperty.set(name, (perProperty.get(name) ?? 0) + Number(n));
      }
    }
    rmSync(dir, { recursive: true, force: true });
    const total = [...perProperty.values()].reduce((a, b) => a + b, 0);
    const lines = [...perProperty].map(([name, n]) => `  ${name.padEnd(28)} ${n.toLocaleString('en-US')}`);
    console.log(`\nfuzz cases run:\n${lines.join('\n')}\n  ${'total'.padEnd(28)} ${total.toLocaleString('en-US')}\n`);
    // A run of the load tests alone (no fuzz file selected) has nothing to count.
    if (total === 0) return;
    const min = Number(process.env.FUZZ_MIN_TOTAL ?? 0);
    if (total < min) throw new Error(`the hard suite ran ${total} fuzz cases, fewer than FUZZ_MIN_TOTAL=${min}`);
  };
}
