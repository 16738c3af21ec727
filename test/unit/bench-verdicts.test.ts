import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

// The benchmark's verdicts come from these functions (bench/lib/*.js, plain JavaScript run by `npm run bench`), so a
// wrong percentile or pairing would print a wrong "met". Loaded by URL: the files carry no types.
const lib = (name: string) => import(pathToFileURL(resolve(import.meta.dirname, '../../bench/lib', name)).href);
const { percentile } = await lib('load.js');
const { summarize, verdictsOf } = await lib('report.js');
const { checkRenewals } = await lib('renewal.js');
const { benchChildEnv, imageRuntime } = await lib('image-runtime.js');

const run = (rps: number, cpu: [number, number]) => ({ rps, p50: 1, p99: 2, total: rps * 8, non2xx: 0, cpuUsPerRequest: cpu });
const probe = (us: Record<string, [number, number]>) => Object.entries(us).map(([name, [p50, p99]]) => ({ name, p50, p99, mean: p50 }));

describe('benchmark verdicts (bench/lib)', () => {
  it('percentile is nearest-rank: p99 of 1..3000 is 2970, p50 of an even count the lower middle', () => {
    const values = Array.from({ length: 3000 }, (_, i) => 3000 - i);
    expect(percentile(values, 0.99)).toBe(2970);
    expect(percentile(values, 0.5)).toBe(1500);
    expect(percentile([7], 0.99)).toBe(7);
    expect(percentile([1, 2], 0.5)).toBe(1);
  });

  it('throughput and CPU ratios pair the two chains round by round and report the median of those ratios', () => {
    // Round 2 is a noisy minute for both chains; a ratio of medians would pair round 3's sidecar with round 1's baseline.
    const report = {
      runs: { baseline: [run(1000, [100, 100]), run(500, [200, 200]), run(900, [100, 100])], sidecar: [run(1100, [50, 50]), run(600, [100, 100]), run(1800, [100, 100])] },
      latency: {},
      warmup: { baseline: run(800, [1, 1]), sidecar: { ...run(800, [1, 1]), non2xx: 3 } },
    };
    const sum = summarize(report);
    expect(sum.rpsRatio.perRound.map((x: number) => x.toFixed(2))).toEqual(['1.10', '1.20', '2.00']);
    expect(sum.rpsRatio.median).toBeCloseTo(1.2);
    expect([sum.rpsRatio.min, sum.rpsRatio.max].map((x: number) => x.toFixed(2))).toEqual(['1.10', '2.00']);
    expect(sum.cpuRatio.perRound).toEqual([2, 2, 1]);
    expect(sum.cpuRatio.median).toBe(2);
    // Errors during warm-up count too.
    expect(sum.errors).toBe(3);
  });

  it("checks the sidecar's latency targets against its worst hop: the chain's average per hop, or either sidecar alone", () => {
    const rows = probe({ direct: [100, 300], relay: [300, 900], baseline: [600, 1500], sidecar: [500, 1300], 'sidecar-1': [300, 900], 'inbound-1': [420, 1600], 'relay-1': [200, 500], 'baseline-1': [350, 900] });
    const report = { runs: { baseline: [run(1, [1, 1])], sidecar: [run(1, [1, 1])] }, latency: { steady: rows } };
    const hop = summarize(report).perHop.steady;
    expect(hop.sidecar).toEqual({ p50: 200, p99: 500 }); // (chain − direct) / 2
    expect(hop.alone.inbound).toEqual({ p50: 320, p99: 1300 });
    // The chain's average hides an inbound hop of 1.3 ms at p99; the verdict does not.
    expect(hop.worst).toEqual({ p50: 320, p99: 1300 });
  });

  it('holds each target at its boundary: throughput against every baseline, latency on the worst hop, memory in decimal MB, one token per audience', () => {
    const rows = (worstP50: number, worstP99: number) =>
      probe({ direct: [100, 300], relay: [200, 500], baseline: [400, 900], tuned: [380, 880], sidecar: [300, 700], 'sidecar-1': [100 + worstP50, 300 + worstP99], 'inbound-1': [150, 400], 'relay-1': [150, 400], 'baseline-1': [250, 600], 'tuned-1': [240, 590] });
    const memory = (peakMiB: number) => ({ 'sidecar-outbound': { peakMiB: 50 }, 'sidecar-inbound': { peakMiB } });
    const report = (o: { b?: number; t?: number; p50?: number; p99?: number; peakMiB?: number; token?: number; aud?: Record<string, unknown> } = {}) => ({
      runs: { baseline: [run(o.b ?? 1000, [1, 1])], tuned: [run(o.t ?? 1000, [1, 1])], sidecar: [run(900, [1, 1])] },
      latency: { steady: rows(o.p50 ?? 250, o.p99 ?? 1000) },
      memory: memory(o.peakMiB ?? 90e6 / 2 ** 20),
      idp: { token: o.token ?? 2 },
      audiences: o.aud ?? { 'bench-app': 'bench-app', 'bench-other': 'bench-other' },
    });
    // Every target exactly at its limit is met; the stretch goals are not.
    expect(verdictsOf(report())).toEqual({ throughput: true, throughputStretch: false, latencyP50: true, latencyP50Stretch: false, latencyP99: true, memory: true, memoryStretch: false, tokens: true });
    // 0.9× the obvious baseline but under it against the tuned one: missed.
    expect(verdictsOf(report({ t: 1001 })).throughput).toBe(false);
    expect(verdictsOf(report({ b: 1001 })).throughput).toBe(false);
    // The worst hop (the outbound sidecar alone here), not the chain's average, a microsecond over.
    expect(verdictsOf(report({ p50: 251 })).latencyP50).toBe(false);
    expect(verdictsOf(report({ p99: 1001 })).latencyP99).toBe(false);
    // 90 MB, not 90 MiB (94.4 MB).
    expect(verdictsOf(report({ peakMiB: 90.01e6 / 2 ** 20 })).memory).toBe(false);
    expect(verdictsOf(report({ peakMiB: 90 })).memory).toBe(false);
    // One token request per audience, and each route's token names its own.
    expect(verdictsOf(report({ token: 1 })).tokens).toBe(false);
    expect(verdictsOf(report({ token: 3 })).tokens).toBe(false);
    expect(verdictsOf(report({ aud: { 'bench-app': 'bench-app', 'bench-other': 'bench-app' } })).tokens).toBe(false);
  });

  it('accepts token renewals between half the shortest lifetime and its end (exp is whole seconds), and nothing else', () => {
    expect(checkRenewals([0, 9_500, 19_000, 34_000], 20)).toMatchObject({ requests: 4, ok: true, boundsSeconds: [9.4, 19] });
    expect(checkRenewals([0, 9_300], 20).ok).toBe(false); // renewed twice within one lifetime
    expect(checkRenewals([0, 19_000], 20).ok).toBe(false); // the token could already have expired
    expect(checkRenewals([0], 20).ok).toBe(false); // no renewal seen at all
  });

  it("every process runs with the image's environment: its ENV and knobs in, this machine's own Node settings out", () => {
    const image = imageRuntime(resolve(import.meta.dirname, '../../Dockerfile'));
    const hostEnv = { PATH: '/usr/bin', NODE_EXTRA_CA_CERTS: '/etc/ssl/certs/ca-certificates.crt', UV_THREADPOOL_SIZE: '16', NODE_ENV: 'development', NODE_OPTIONS: '--inspect' };
    const knobs = { nodeOptions: '--max-semi-space-size=2', mallocEnv: 'MALLOC_ARENA_MAX=2 MALLOC_TRIM_THRESHOLD_=131072' };
    const { env, leftOut, imageEnv } = benchChildEnv({ image, hostEnv, ...knobs });
    // spawn() skips a variable whose value is undefined: the child does not get the host's.
    expect(leftOut).toEqual(['NODE_EXTRA_CA_CERTS', 'UV_THREADPOOL_SIZE']);
    expect(env).toEqual({
      NODE_EXTRA_CA_CERTS: undefined,
      UV_THREADPOOL_SIZE: undefined,
      NODE_ENV: 'production',
      NODE_OPTIONS: '--max-semi-space-size=2',
      MALLOC_ARENA_MAX: '2',
      MALLOC_TRIM_THRESHOLD_: '131072',
    });
    expect(imageEnv).toBe('NODE_ENV=production');
    // The knobs win over the image; BENCH_HOST_NODE_ENV=keep leaves the host's settings in.
    const kept = benchChildEnv({ image, hostEnv, nodeOptions: '', mallocEnv: '', keepHostNodeEnv: true });
    expect(kept.leftOut).toEqual([]);
    expect(kept.env).toEqual({ NODE_ENV: 'production', NODE_OPTIONS: '' });
  });
});
