import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import yargs from 'yargs';
import { withConfigOption } from '../../src/commands/shared.js';
import { plainRunConfigs } from '../../src/main.js';

/** The config files the full CLI (yargs, with the `run` command's own option) parses from the same command line. */
function yargsConfigs(argv: string[]): string[] | undefined {
  let configs: string[] | undefined;
  yargs(argv)
    .command('run', '', (y) => withConfigOption(y), (a) => void (configs = a.config ?? []))
    .strict()
    .exitProcess(false)
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    })
    .parseSync();
  return configs;
}

describe('the launcher sends `run` with only config files straight to the run command (src/main.ts)', () => {
  it('takes exactly `run` followed by --config FILE, --config=FILE or -c FILE', () => {
    expect(plainRunConfigs(['run'])).toEqual([]);
    expect(plainRunConfigs(['run', '--config', 'a.yaml'])).toEqual(['a.yaml']);
    expect(plainRunConfigs(['run', '-c', 'a.yaml', '--config=b.yaml', '--config', 'c.json'])).toEqual(['a.yaml', 'b.yaml', 'c.json']);
  });

  it('leaves every other command line to the full CLI, help and errors included', () => {
    for (const argv of [
      [],
      ['validate', '--config', 'a.yaml'],
      ['--config', 'a.yaml', 'run'],
      ['run', '--help'],
      ['run', '-h'],
      ['run', '--version'],
      ['run', '--config'],
      ['run', '--config', ''],
      ['run', '--config='],
      ['run', '--config', 'a.yaml', 'b.yaml'],
      ['run', '--config', '--help'],
      ['run', '-c', '-x'],
      ['run', '--', 'a.yaml'],
      ['run', '--bogus'],
      ['run', '-cx'],
      ['run', '--config="a.yaml"'],
      ["run", "--config='a.yaml'"],
      ['run', '-c', '"a.yaml"'],
    ]) {
      expect(plainRunConfigs(argv), argv.join(' ')).toBeUndefined();
    }
  });

  it('gives the same config files as the full CLI for every command line it takes', () => {
    const value = fc.oneof(fc.constantFrom('a.yaml', 'dir/c.json', '"q.yaml"', "'q'", 'a=b', '1e3', 'true', ''), fc.string({ maxLength: 6 }));
    const token = fc.oneof(
      fc.constantFrom('--config', '-c', '--help', '-x', '--', '--no-config', '-c=a.yaml'),
      value,
      value.map((v) => `--config=${v}`),
    );
    let taken = 0;
    fc.assert(
      fc.property(fc.array(token, { maxLength: 7 }), (rest) => {
        const argv = ['run', ...rest];
        const fast = plainRunConfigs(argv);
        if (fast === undefined) return;
        taken++;
        expect(yargsConfigs(argv), argv.join(' ')).toEqual(fast);
      }),
      { numRuns: 3000 },
    );
    // Not hollow: many of the random lines were plain runs.
    expect(taken).toBeGreaterThan(50);
  });
});
