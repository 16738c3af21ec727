// `npm run bench`: the data-plane benchmark. Starts on loopback a fast app, two plain two-hop node/undici proxy
// chains (baselines: the obvious one, request() + pipeline(), and a tuned one, dispatch() as the sidecar forwards)
// and the sidecar chain (outbound sidecar with a cached token → inbound sidecar verifying and
// applying a rule → app), loads each with autocannon in interleaved rounds, probes unloaded latency, samples
// peak RSS per process, counts IdP token requests, then runs the verify micro-benchmark.
// Knobs (env): BENCH_CONNECTIONS (32), BENCH_DURATION (8 s), BENCH_ROUNDS (3), BENCH_WARMUP (5 s), BENCH_SAMPLES (3000),
// BENCH_PROBE_BLOCK (100), BENCH_RENEW_TTL (20 s), BENCH_NODE_OPTIONS, BENCH_MALLOC_ENV, BENCH_SIDECAR_NODE_FLAGS, BENCH_HOST_NODE_ENV,
// BENCH_CPU_PROF_DIR, VERIFY_ITERATIONS (2000).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBenchIdp } from './lib/idp.js';
import { benchChildEnv, imageRuntime } from './lib/image-runtime.js';
import { latencyProbe, loadRun } from './lib/load.js';
import { cpuSecondsOf, memoryOf, startNode } from './lib/procs.js';
import { checkRenewals, startTrickle } from './lib/renewal.js';
import { printReport, summarize, verdictsOf } from './lib/report.js';
import { runVerifyMicro } from './lib/verify-runner.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const BIN = resolve(here, '../bin/oidc-sidecar.js');
const env = (name, dflt) => Number(process.env[name] ?? dflt);
const image = imageRuntime(resolve(here, '../Dockerfile'));
const envString = (entries) => entries.map(([k, v]) => `${k}=${v}`).join(' ');
const settings = {
  connections: env('BENCH_CONNECTIONS', 32),
  durationSeconds: env('BENCH_DURATION', 8),
  rounds: env('BENCH_ROUNDS', 3),
  // Long enough for the sidecars' first optimising compilations (~5 s of load with --no-concurrent-recompilation,
  // docs/performance.md) to happen before the measured rounds.
  warmupSeconds: env('BENCH_WARMUP', 5),
  samples: env('BENCH_SAMPLES', 3000),
  probeBlock: env('BENCH_PROBE_BLOCK', 100),
  tokenTtlSeconds: 3600,
  // The renewal check: a second issuer whose tokens live this long serves one route, used during the load rounds.
  renewTtlSeconds: env('BENCH_RENEW_TTL', 20),
  renewRate: 40,
  // By default every Node process of the run (app, baseline hops, sidecars) gets the runtime settings of the
  // container image (its ENV NODE_OPTIONS and glibc MALLOC_* settings), and the sidecars are started with the Node
  // flags of its ENTRYPOINT, as the image starts them. Each knob set to "" measures Node's defaults instead.
  nodeOptions: process.env.BENCH_NODE_OPTIONS ?? image.env.NODE_OPTIONS ?? '',
  mallocEnv: process.env.BENCH_MALLOC_ENV ?? envString(Object.entries(image.env).filter(([k]) => k.startsWith('MALLOC_'))),
  sidecarNodeFlags: process.env.BENCH_SIDECAR_NODE_FLAGS ?? image.nodeFlags.join(' '),
  keepHostNodeEnv: process.env.BENCH_HOST_NODE_ENV === 'keep',
};
// Node's other settings are the image's too, not this machine's (benchChildEnv says why); both lists are printed.
const children = benchChildEnv({ image, hostEnv: process.env, ...settings });
settings.imageEnv = children.imageEnv;
settings.hostNodeEnvLeftOut = children.leftOut;
const childEnv = children.env;

const listening = (l) => typeof l.listening === 'number';
/** The chains loaded: the obvious baseline, the tuned baseline, the sidecars. */
const CHAINS = ['baseline', 'tuned', 'sidecar'];
/** The `aud` of a `Bearer <JWT>` header value. */
const audienceOf = (authorization) => JSON.parse(Buffer.from(authorization.split(' ')[1].split('.')[1], 'base64url').toString()).aud;
const procs = [];
const tempDirs = [];
/** BENCH_CPU_PROF_DIR=dir: the process writes a V8 CPU profile there when it exits (open in Chrome DevTools). */
const profArgs = (name) => (process.env.BENCH_CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF_DIR}`, `--cpu-prof-name=${name}.cpuprofile`] : []);

async function node(name, args, opts = {}) {
  const p = await startNode([...profArgs(name), ...args], { name, ready: listening, env: childEnv, ...opts });
  procs.push(p);
  return { ...p, port: p.line.listening };
}

async function sidecar(name, config) {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-sidecar-bench-'));
  tempDirs.push(dir);
  const path = join(dir, `${name}.json`);
  writeFileSync(path, JSON.stringify(config, null, 2));
  const p = await startNode([...settings.sidecarNodeFlags.split(' ').filter(Boolean), ...profArgs(name), BIN, 'run', '--config', path], { name, env: childEnv, ready: (l) => l.event === 'started' });
  procs.push(p);
  const a = p.line.addresses;
  const port = (addr) => (addr ? Number(addr.slice(addr.lastIndexOf(':') + 1)) : undefined);
  const admin = `http://127.0.0.1:${port(a.admin)}`;
  for (let i = 0; ; i++) {
    const r = await fetch(`${admin}/readyz`).catch(() => undefined);
    if (r?.status === 200) break;
    if (i > 200) throw new Error(`${name} not ready:\n${p.output()}`);
    await new Promise((r2) => setTimeout(r2, 50));
  }
  return { ...p, admin, inbound: port(a.inbound), outbound: port(a.outbound) };
}

/** The Authorization header the outbound sidecar attaches on a route to the app (its cached token), as the app receives it. */
function outboundAuthorization(port, route = 'app-direct') {
  return new Promise((resolve, reject) => {
    get({ port, host: '127.0.0.1', path: '/echo-authorization', headers: { host: route } }, (res) => {
      let text = '';
      res.setEncoding('latin1').on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode === 200 && text.startsWith('Bearer ') ? resolve(text) : reject(new Error(`no token from the outbound sidecar (${res.statusCode})`))));
    }).on('error', reject);
  });
}

/**
 * The share of all CPUs' time that was not idle during the next `ms` (os.cpus() counters): how busy the machine is
 * right now. The load average lags by a minute, so right after another run it still reads that run's load.
 */
async function cpuBusy(ms) {
  const sample = () => cpus().reduce((a, { times: t }) => ({ idle: a.idle + t.idle, all: a.all + t.user + t.nice + t.sys + t.idle + t.irq }), { idle: 0, all: 0 });
  const before = sample();
  await new Promise((r) => setTimeout(r, ms));
  const after = sample();
  return 1 - (after.idle - before.idle) / Math.max(1, after.all - before.all);
}

async function main() {
  const started = Date.now();
  // Other work on the machine skews every number; the report says how busy it was when the run began.
  const loadAtStart = loadavg()[0];
  const busyAtStart = await cpuBusy(2000);
  const client = { clientId: 'bench-client', clientSecret: 'bench-client-secret' };
  const idp = await startBenchIdp({ ...client, ttlSeconds: settings.tokenTtlSeconds });
  const renewIdp = await startBenchIdp({ ...client, ttlSeconds: settings.renewTtlSeconds });
  const app = await node('app', [join(here, 'apps/upstream.js')]);
  const appUrl = `http://127.0.0.1:${app.port}`;

  const hop2 = await node('baseline-hop2', [join(here, 'apps/baseline-proxy.js'), appUrl]);
  const hop1 = await node('baseline-hop1', [join(here, 'apps/baseline-proxy.js'), `http://127.0.0.1:${hop2.port}`]);
  const tuned2 = await node('tuned-hop2', [join(here, 'apps/baseline-dispatch.js'), appUrl]);
  const tuned1 = await node('tuned-hop1', [join(here, 'apps/baseline-dispatch.js'), `http://127.0.0.1:${tuned2.port}`]);
  const relay2 = await node('relay-hop2', [join(here, 'apps/tcp-relay.js'), String(app.port)]);
  const relay1 = await node('relay-hop1', [join(here, 'apps/tcp-relay.js'), String(relay2.port)]);

  const common = { log: { level: 'info' }, lifecycle: { watchConfig: false }, admin: { listen: '127.0.0.1:0' } };
  const inbound = await sidecar('sidecar-inbound', {
    service: 'bench-app',
    ...common,
    inbound: {
      listen: '127.0.0.1:0',
      target: appUrl,
      audience: 'bench-app',
      issuers: [{ issuer: idp.issuer }, { issuer: renewIdp.issuer }],
      rules: [{ match: { path: '/**' }, allow: [{ sub: 'bench-client' }] }],
    },
  });
  const outbound = await sidecar('sidecar-outbound', {
    service: 'bench-client',
    ...common,
    outbound: {
      listen: '127.0.0.1:0',
      tokenSource: { type: 'client_credentials', issuer: idp.issuer, ...client },
      routes: [
        { host: 'app', target: `http://127.0.0.1:${inbound.inbound}`, audience: 'bench-app' },
        // The same audience straight to the app, for the latency probe's one-hop target: the same cached token, so
        // it costs no IdP request.
        { host: 'app-direct', target: appUrl, audience: 'bench-app' },
        // Through the inbound sidecar with short-lived tokens from the second issuer: renewed several times during
        // the run, and an expired token would be refused there.
        { host: 'app-renew', target: `http://127.0.0.1:${inbound.inbound}`, audience: 'bench-app', tokenSource: { type: 'client_credentials', issuer: renewIdp.issuer, ...client } },
        // A second audience from the first issuer: one token request each, and each route's token names its own.
        { host: 'app-other', target: appUrl, audience: 'bench-other' },
      ],
    },
  });

  // Resident memory after startup, before any load: what the sidecars cost at rest.
  const idle = {
    'sidecar-outbound': memoryOf(outbound.pid),
    'sidecar-inbound': memoryOf(inbound.pid),
    'baseline-hop1': memoryOf(hop1.pid),
    'baseline-hop2': memoryOf(hop2.pid),
    'tuned-hop1': memoryOf(tuned1.pid),
    'tuned-hop2': memoryOf(tuned2.pid),
  };

  const chains = {
    baseline: { url: `http://127.0.0.1:${hop1.port}/bench`, host: 'app' },
    tuned: { url: `http://127.0.0.1:${tuned1.port}/bench`, host: 'app' },
    sidecar: { url: `http://127.0.0.1:${outbound.outbound}/bench`, host: 'app' },
  };
  const runs = { baseline: [], tuned: [], sidecar: [] };
  // CPU time per request of the chain's two proxy processes: it depends less than req/s on how much of the shared
  // machine the load generator and the app got during the run (not at all is too much to say: batching changes).
  const hopPids = { baseline: [hop1.pid, hop2.pid], tuned: [tuned1.pid, tuned2.pid], sidecar: [outbound.pid, inbound.pid] };
  const load = async (name, durationSeconds = settings.durationSeconds) => {
    const cpu0 = hopPids[name].map(cpuSecondsOf);
    const res = await loadRun({ ...chains[name], connections: settings.connections, durationSeconds });
    const cpu1 = hopPids[name].map(cpuSecondsOf);
    const cpuUsPerRequest = cpu1.map((c, i) => ((c - cpu0[i]) * 1e6) / Math.max(1, res.total));
    return { ...res, cpuUsPerRequest };
  };

  // Requests on the renewal route from now until the end of the load rounds: the token it uses is renewed under load.
  const trickle = startTrickle({ url: `http://127.0.0.1:${outbound.outbound}/bench`, host: 'app-renew', rate: settings.renewRate });
  process.stderr.write(`warming up (${settings.connections} connections, ${settings.warmupSeconds} s per chain)...\n`);
  const warmup = {};
  for (const name of CHAINS) warmup[name] = await load(name, settings.warmupSeconds);
  for (let r = 0; r < settings.rounds; r++) {
    // Interleaved, each chain first in turn (and in reverse every other round), so machine drift favours none.
    const turned = [...CHAINS.slice(r % CHAINS.length), ...CHAINS.slice(0, r % CHAINS.length)];
    const order = Math.floor(r / CHAINS.length) % 2 === 0 ? turned : turned.reverse();
    for (const name of order) {
      const res = await load(name);
      runs[name].push(res);
      process.stderr.write(
        `round ${r + 1}/${settings.rounds} ${name}: ${Math.round(res.rps)} rps, p50 ${res.p50} ms, p99 ${res.p99} ms, CPU µs/request per hop ${res.cpuUsPerRequest.map((c) => c.toFixed(0)).join(' + ')}${res.non2xx ? `, ${res.non2xx} non-2xx/errors` : ''}\n`,
      );
    }
  }

  const renewalTrickle = await trickle.stop();

  // Two passes over the same four targets: in blocks (each target warm, as under steady light traffic; the
  // figure the targets are checked against) and alternating on every request (each request finds the caches full
  // of the other chains' processes). The TCP relay chain is the floor: two more processes and loopback
  // connections, no HTTP.
  // Each kind of proxy also alone in front of the app (its chain's last hop for the relay and the baseline; the
  // outbound sidecar through its app-direct route; the inbound sidecar with the outbound's token): on a machine
  // with fewer cores than processes in a chain, a second hop costs more than a first.
  const probeTargets = [
    { name: 'direct', port: app.port, host: 'app' },
    { name: 'relay', port: relay1.port, host: 'app' },
    { name: 'baseline', port: hop1.port, host: 'app' },
    { name: 'tuned', port: tuned1.port, host: 'app' },
    { name: 'sidecar', port: outbound.outbound, host: 'app' },
    { name: 'relay-1', port: relay2.port, host: 'app' },
    { name: 'baseline-1', port: hop2.port, host: 'app' },
    { name: 'tuned-1', port: tuned2.port, host: 'app' },
    { name: 'sidecar-1', port: outbound.outbound, host: 'app-direct' },
    { name: 'inbound-1', port: inbound.inbound, host: 'app', headers: { authorization: await outboundAuthorization(outbound.outbound) } },
  ];
  const latency = {};
  for (const [mode, block] of [['steady', settings.probeBlock], ['alternating', 1]]) {
    process.stderr.write(`latency probe, ${mode} (${settings.samples} sequential requests per target, in turns of ${block})...\n`);
    latency[mode] = await latencyProbe(probeTargets, { samples: settings.samples, warmup: Math.max(block, Math.ceil(settings.samples / 10)), block });
  }

  const memory = {
    'sidecar-outbound': memoryOf(outbound.pid),
    'sidecar-inbound': memoryOf(inbound.pid),
    'baseline-hop1': memoryOf(hop1.pid),
    'baseline-hop2': memoryOf(hop2.pid),
    'tuned-hop1': memoryOf(tuned1.pid),
    'tuned-hop2': memoryOf(tuned2.pid),
  };
  const idpCounts = { ...idp.counts };
  // Each route's token, as the app receives it, names the route's audience.
  const audiences = {
    'bench-app': audienceOf(await outboundAuthorization(outbound.outbound, 'app-direct')),
    'bench-other': audienceOf(await outboundAuthorization(outbound.outbound, 'app-other')),
  };
  const renewal = { ttlSeconds: settings.renewTtlSeconds, rate: settings.renewRate, trickle: renewalTrickle, ...checkRenewals(renewIdp.tokenRequestTimes, settings.renewTtlSeconds) };

  for (const p of procs.reverse()) await p.stop();
  await idp.close();
  await renewIdp.close();
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });

  process.stderr.write('verify micro-benchmark...\n');
  const verify = await runVerifyMicro(childEnv);

  const report = {
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      memGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
      platform: `${process.platform} ${process.arch}`,
      loadAtStart,
      busyAtStart,
    },
    settings,
    warmup,
    runs,
    latency,
    memory,
    idle,
    idp: idpCounts,
    audiences,
    renewal,
    verify,
    seconds: Math.round((Date.now() - started) / 1000),
  };
  mkdirSync(resolve(here, '../.bench-out'), { recursive: true });
  writeFileSync(resolve(here, '../.bench-out/last.json'), JSON.stringify(report, null, 2));
  printReport(report);
  // A missed target is a result; errors and extra token requests mean the run itself went wrong.
  const failures = [];
  const { errors } = summarize(report);
  if (errors) failures.push(`${errors} non-2xx responses or errors during load`);
  const verdicts = verdictsOf(report);
  if (!verdicts.tokens) failures.push(`the IdP answered ${idpCounts.token} token requests, expected 2, one per audience, each route's token naming its own (${JSON.stringify(audiences)})`);
  if (!renewal.ok) failures.push(`the short-lived tokens were not renewed once per lifetime (${renewal.requests} requests, intervals ${renewal.intervalsSeconds.map((x) => x.toFixed(1)).join(', ')} s)`);
  if (renewal.trickle.errors) failures.push(`${renewal.trickle.errors} errors on the renewal route`);
  if (failures.length) {
    process.stderr.write(`bench failed: ${failures.join('; ')}\n`);
    process.exitCode = 1;
  }
}

main().catch(async (err) => {
  process.stderr.write(`bench failed: ${err.stack ?? err}\n`);
  for (const p of procs) await p.stop().catch(() => {});
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  process.exit(1);
});
