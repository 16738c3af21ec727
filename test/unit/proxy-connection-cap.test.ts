import { describe, expect, it } from 'vitest';
import { connectionCap, openFileLimit, throttledCount } from '../../src/proxy/connection-cap.js';

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            20000                1048576              files
Max locked memory         8388608              8388608              bytes
`;

describe('connection cap', () => {
  it('reads the soft open-file limit from /proc/self/limits text', () => {
    expect(openFileLimit(() => LIMITS)).toBe(20000);
    expect(openFileLimit(() => LIMITS.replace('20000 ', 'unlimited'))).toBeUndefined();
    expect(openFileLimit(() => 'no such line')).toBeUndefined();
    expect(openFileLimit(() => {
      throw new Error('ENOENT');
    })).toBeUndefined();
  });

  it.skipIf(process.platform !== 'linux')('reads this process’s limit on Linux', () => {
    expect(openFileLimit()).toBeGreaterThan(0);
  });

  it('is the configured value, or a quarter of the open-file limit for each traffic listener, or none where the limit is unknown', () => {
    expect(connectionCap(500, 20000)).toBe(500);
    expect(connectionCap(undefined, 20000)).toBe(5000);
    expect(connectionCap(undefined, 1024)).toBe(256);
    expect(connectionCap(undefined, 3)).toBe(1);
    expect(connectionCap(undefined, undefined)).toBe(Infinity);
  });

  it('reports the first drop at once, then at most once per interval with the count since the last report', () => {
    let t = 0;
    const reports: number[] = [];
    const drop = throttledCount((n) => reports.push(n), 10_000, () => t);
    drop();
    expect(reports).toEqual([1]);
    for (let i = 0; i < 500; i++) {
      t += 10;
      drop();
    }
    expect(reports).toEqual([1]);
    t = 10_000;
    drop();
    expect(reports).toEqual([1, 501]);
    t = 30_000;
    drop();
    expect(reports).toEqual([1, 501, 1]);
  });
});
