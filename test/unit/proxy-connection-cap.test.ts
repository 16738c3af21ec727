import { describe, expect, it, vi } from 'vitest';
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

  it('reports the first drop at once, then the drops since, once the interval after the last report is over', async () => {
    const reports: number[] = [];
    const drop = throttledCount((n) => reports.push(n), 200);
    drop();
    expect(reports).toEqual([1]);
    for (let i = 0; i < 500; i++) drop();
    // Held back within the interval, then reported without waiting for another drop.
    expect(reports).toEqual([1]);
    await vi.waitFor(() => expect(reports).toEqual([1, 500]), { timeout: 5000 });
    // Once the interval after that report is over, a drop is reported at once again.
    await new Promise((r) => setTimeout(r, 250));
    drop();
    expect(reports).toEqual([1, 500, 1]);
  });
});
