import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { selfSignedCert } from '../support/certs.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { BIN, freePort, runCli, startSidecar, writeConfig, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';
import { eventually } from './inbound-support.js';

let idp: TestIdp;
let app: UpstreamApp;
let sidecar: SidecarProcess | undefined;

beforeAll(async () => {
  idp = await startIdp();
  // /slow/* answers after a delay so that requests are genuinely in flight during a drain; /long/* outlasts the two
  // seconds `run` gives stray handles once shutdown has returned, so only a drain that waits for it lets it finish.
  app = await startUpstream((req, res) => {
    const delay = req.url!.startsWith('/slow') ? 1500 : req.url!.startsWith('/long') ? 4000 : 0;
    setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(`done ${req.url}`), delay);
  });
});
afterAll(async () => {
  await app.close();
  await idp.close();
});
afterEach(async () => {
  await sidecar?.stop();
  sidecar = undefined;
});

function inboundConfig(rules: unknown[], lifecycle: Record<string, unknown> = {}) {
  return {
    service: 'orders',
    log: { level: 'info' },
    lifecycle: { watchConfig: false, ...lifecycle },
    inbound: { target: app.url, audience: 'orders', issuers: [{ issuer: idp.issuer }], rules },
  };
}

const allowSub = (sub: string) => [{ match: { path: '/**' }, allow: [{ sub }] }];

/** A config allowing `sub` whose key fetches (so each reload's warm-up, with the IdP hanging) wait `seconds`. */
const withKeyTimeout = (sub: string, seconds: number) => ({ ...inboundConfig(allowSub(sub)), inbound: { ...inboundConfig(allowSub(sub)).inbound, jwks: { timeoutSeconds: seconds } } });

async function call(path: string, token: string): Promise<number> {
  const r = await fetch(`${sidecar!.inbound}${path}`, { headers: { authorization: `Bearer ${token}` } });
  await r.arrayBuffer();
  return r.status;
}

/** SIGHUP, then wait until that reload's warm-up has asked the (hanging) IdP for its keys. */
async function sighupStuckOnIdp(s: SidecarProcess): Promise<void> {
  const asked = idp.counts.discovery + idp.counts.jwks;
  s.signal('SIGHUP');
  while (idp.counts.discovery + idp.counts.jwks === asked) await new Promise((r) => setTimeout(r, 20));
}

async function metric(name: string): Promise<string> {
  const text = await (await fetch(`${sidecar!.admin}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(name)).join('\n');
}

describe('a sidecar that cannot start', () => {
  it('asks the IdP for nothing and logs no key or token failure when a later listener cannot bind (admin port taken)', async () => {
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    const taken = `127.0.0.1:${(squatter.address() as AddressInfo).port}`;
    try {
      idp.resetCounts();
      const config = {
        ...inboundConfig([]),
        admin: { listen: taken },
        inbound: { ...inboundConfig([]).inbound, listen: '127.0.0.1:0' },
        outbound: {
          listen: '127.0.0.1:0',
          tokenSource: { type: 'client_credentials', issuer: idp.issuer, clientId: 'orders', clientSecret: 'orders-secret' },
          routes: [{ host: 'payments', audience: 'payments' }],
        },
      };
      const r = await runCli(['run', '--config', writeConfig(config)]);
      expect([r.code, r.stderr]).toEqual([1, `oidc-sidecar: admin.listen: cannot listen on ${taken}: address already in use\n`]);
      // The inbound and outbound sockets were bound first and started their key and token fetches, which the failed
      // start then cut: `jwks_fetch_failed` and `token_fetch_failed` (idp_unreachable) for an IdP that was up.
      const events = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l).event);
      expect(events).toEqual(['listening', 'listening']);
      expect(idp.counts).toEqual({ discovery: 0, jwks: 0, token: 0, other: 0 });
    } finally {
      squatter.close();
    }
  });
});

describe('SIGTERM drains in-flight requests', () => {
  it('finishes every in-flight request, turns /readyz 503, stops accepting, exits 0', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments'), { drainTimeoutSeconds: 10 }));
    const token = await idp.getToken('payments', 'orders');
    const before = app.seen.length;
    const inFlight = Array.from({ length: 8 }, (_, i) =>
      fetch(`${sidecar!.inbound}/slow/${i}`, { headers: { authorization: `Bearer ${token}` } }).then(async (r) => ({ status: r.status, body: await r.text() })),
    );
    // Wait until the app holds all eight, then ask the sidecar to stop.
    while (app.seen.length < before + 8) await new Promise((r) => setTimeout(r, 20));
    sidecar.signal('SIGTERM');
    await sidecar.waitForLog((l) => l.event === 'shutdown');
    // A signal after startup is an ordinary one (one held while starting says `whileStarting: true`).
    expect(sidecar.logs.find((l) => l.event === 'signal')).toEqual(expect.objectContaining({ signal: 'SIGTERM', msg: 'received SIGTERM' }));
    expect(sidecar.logs.find((l) => l.event === 'signal')).not.toHaveProperty('whileStarting');

    const ready = await fetch(`${sidecar.admin}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.text()).toBe('shutting down\n');
    await expect(fetch(`${sidecar.inbound}/fast`, { headers: { authorization: `Bearer ${token}` } })).rejects.toThrow();

    const results = await Promise.all(inFlight);
    // Nothing lost: every request that was in flight completed normally.
    expect(results).toEqual(Array.from({ length: 8 }, (_, i) => ({ status: 200, body: `done /slow/${i}` })));
    expect(await sidecar.exited).toBe(0);
    expect(sidecar.logs.some((l) => l.event === 'stopped')).toBe(true);
    expect(sidecar.logs.some((l) => l.event === 'drain_timeout')).toBe(false);
  });

  it('answers a request in flight on a keep-alive connection with `Connection: close`, so the client sends nothing more on it', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments'), { drainTimeoutSeconds: 10 }));
    const token = await idp.getToken('payments', 'orders');
    const { hostname, port } = new URL(sidecar.inbound!);
    const socket = connect(Number(port), hostname);
    let answer = '';
    socket.on('data', (d) => (answer += d));
    const ended = new Promise<void>((r) => socket.once('close', () => r()));
    const before = app.seen.length;
    socket.write(`GET /slow/keep-alive HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    while (app.seen.length < before + 1) await new Promise((r) => setTimeout(r, 20));
    sidecar.signal('SIGTERM');
    await sidecar.waitForLog((l) => l.event === 'shutdown');
    await ended;
    // It said `keep-alive`, and the drain then closed the connection as idle: a client's next request on it, sent
    // as the close came, was lost to a reset.
    const [head, body] = answer.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(head).toMatch(/\r\nConnection: close(\r\n|$)/i);
    expect(head).not.toMatch(/keep-alive/i);
    expect(body).toMatch(/done \/slow\/keep-alive/);
    expect(await sidecar.exited).toBe(0);
  });

  it('cuts requests that outlive the drain timeout and still exits 0', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments'), { drainTimeoutSeconds: 0.2 }));
    const token = await idp.getToken('payments', 'orders');
    const before = app.seen.length;
    const slow = fetch(`${sidecar.inbound}/slow/cut`, { headers: { authorization: `Bearer ${token}` } }).then(
      (r) => r.status,
      () => 'cut',
    );
    while (app.seen.length < before + 1) await new Promise((r) => setTimeout(r, 20));
    sidecar.signal('SIGTERM');
    expect(await slow).toBe('cut');
    expect(await sidecar.exited).toBe(0);
    // Said before the cut, so the operator can tell this drain from a clean one (both end `stopped`, exit 0).
    const drain = sidecar.logs.filter((l) => l.event === 'drain_timeout');
    expect(drain).toEqual([expect.objectContaining({ level: 'warn', drainTimeoutSeconds: 0.2, requests: 1, tunnels: 0 })]);
    expect(sidecar.logs.findIndex((l) => l.event === 'drain_timeout')).toBeLessThan(sidecar.logs.findIndex((l) => l.event === 'stopped'));
  });
});

describe('signals during the drain', () => {
  /** A sidecar draining after `signal`, with one slow request in flight: resolves to its answer, or 'cut'. */
  const drainingWithSlowRequest = async (path: string, signal: NodeJS.Signals) => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments'), { drainTimeoutSeconds: 10 }));
    const token = await idp.getToken('payments', 'orders');
    const before = app.seen.length;
    const inFlight = fetch(`${sidecar.inbound}${path}`, { headers: { authorization: `Bearer ${token}` } }).then(
      async (r) => ({ status: r.status, body: await r.text() }),
      () => 'cut' as const,
    );
    while (app.seen.length < before + 1) await new Promise((r) => setTimeout(r, 20));
    sidecar.signal(signal);
    await sidecar.waitForLog((l) => l.event === 'shutdown');
    return { sidecar, inFlight };
  };

  it('a second SIGTERM is ignored: the drain goes on, the in-flight request finishes, exit 0', async () => {
    const { sidecar, inFlight } = await drainingWithSlowRequest('/slow/twice', 'SIGTERM');
    // With a one-shot listener the second SIGTERM fell to Node's default and killed the process mid-drain.
    sidecar.signal('SIGTERM');
    await sidecar.waitForLog((l) => l.event === 'signal' && l.ignored === true);
    expect(await inFlight).toEqual({ status: 200, body: 'done /slow/twice' });
    expect(await sidecar.exited).toBe(0);
    expect(sidecar.logs.some((l) => l.event === 'stopped')).toBe(true);
  });

  it('SIGINT during the drain (a second Ctrl-C) stops at once with exit 130, never 0', async () => {
    const { sidecar, inFlight } = await drainingWithSlowRequest('/slow/forced', 'SIGINT');
    sidecar.signal('SIGINT');
    expect(await sidecar.exited).toBe(130);
    expect(await inFlight).toBe('cut');
    expect(sidecar.logs.filter((l) => l.event === 'shutdown_forced')).toEqual([expect.objectContaining({ level: 'warn', signal: 'SIGINT' })]);
    expect(sidecar.logs.some((l) => l.event === 'stopped')).toBe(false);
  });
});

describe('reload', () => {
  it('SIGHUP applies a good config without dropping the listener, and refuses a bad one while the old keeps serving', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('orders')));
    const inboundUrl = sidecar.inbound;
    const token = await idp.getToken('payments', 'orders');
    expect(await call('/x', token)).toBe(403);
    // Every reload result, and every upstream error of the listener's direction, is a series from the start, at 0:
    // one that first appeared at 1 would hide the first refused config from increase() and alerts on it.
    const reloadsAtStart = await metric('oidc_sidecar_config_reloads_total');
    for (const result of ['success', 'invalid', 'error']) expect(reloadsAtStart).toContain(`oidc_sidecar_config_reloads_total{result="${result}"} 0`);
    const upstreamAtStart = await metric('oidc_sidecar_upstream_errors_total');
    for (const reason of ['upstream_connect_failed', 'upstream_timeout', 'upstream_reset', 'upstream_bad_response']) {
      expect(upstreamAtStart).toContain(`oidc_sidecar_upstream_errors_total{direction="inbound",reason="${reason}"} 0`);
    }
    expect(upstreamAtStart).not.toContain('direction="outbound"');

    sidecar.rewriteConfig(inboundConfig(allowSub('payments')));
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' && l.trigger === 'SIGHUP');
    expect(sidecar.inbound).toBe(inboundUrl);
    expect(await call('/x', token)).toBe(200);

    // An invalid config (typo'd key) must be refused, listing the error, and the old rules keep applying.
    const bad = inboundConfig(allowSub('nobody')) as Record<string, any>;
    bad.inbound.rulez = bad.inbound.rules;
    sidecar.rewriteConfig(bad);
    sidecar.signal('SIGHUP');
    const refused = await sidecar.waitForLog((l) => l.event === 'config_reload_refused');
    expect(refused.errors).toContainEqual(expect.stringMatching(/^inbound\.rulez: unknown key \(did you mean rules\?\) \(line \d+\)$/));
    expect(await call('/x', token)).toBe(200);

    expect(await metric('oidc_sidecar_config_reloads_total')).toMatch(/result="success".* 1/);
    expect(await metric('oidc_sidecar_config_reloads_total')).toMatch(/result="invalid".* 1/);
    expect(sidecar.output()).not.toContain(token);
  });

  it('a config seen on disk that drops every inbound rule is held a while: written in two steps, its rule-less first part is never applied', async () => {
    const watched = (rules?: unknown[]) => {
      const c = inboundConfig(rules ?? []) as Record<string, any>;
      c.lifecycle.watchConfig = true;
      c.log.level = 'debug';
      if (!rules) delete c.inbound.rules;
      return c;
    };
    sidecar = await startSidecar(watched(allowSub('orders')));
    const token = await idp.getToken('payments', 'orders');
    expect(await call('/x', token)).toBe(403);
    // The writer stops after everything but the rules, for longer than the files must stay unchanged (1 s), so that
    // part is read...
    sidecar.rewriteConfig(watched());
    await sidecar.waitForLog((l) => l.event === 'config_reload_held');
    // ... and then writes the whole file, with other rules, within the hold.
    sidecar.rewriteConfig(watched(allowSub('nobody')));
    await sidecar.waitForLog((l) => l.event === 'config_reloaded', 15_000);
    expect(sidecar.logs.filter((l) => l.event === 'inbound_rules_removed')).toEqual([]);
    expect(sidecar.logs.filter((l) => l.event === 'config_reload_abandoned').map((l) => l.reason)).toEqual(['superseded']);
    expect(await call('/x', token)).toBe(403);
  });

  it('a SIGTERM during that hold gives the held config up at once, before the sidecar stops', async () => {
    const c = inboundConfig(allowSub('orders')) as Record<string, any>;
    c.lifecycle.watchConfig = true;
    c.log.level = 'debug';
    sidecar = await startSidecar(c);
    delete c.inbound.rules;
    sidecar.rewriteConfig(c);
    await sidecar.waitForLog((l) => l.event === 'config_reload_held');
    sidecar.signal('SIGTERM');
    expect(await sidecar.exited).toBe(0);
    const events = sidecar.logs.map((l) => l.event);
    expect(events.filter((e) => e === 'inbound_rules_removed')).toEqual([]);
    expect(sidecar.logs.find((l) => l.event === 'config_reload_abandoned')).toMatchObject({ reason: 'shutdown' });
    // The hold used to run its 3 s out under the shutdown, and say its piece after `stopped`.
    expect(events.indexOf('config_reload_abandoned')).toBeLessThan(events.indexOf('stopped'));
  });

  it('a SIGHUP vouches only for the files as they were when it came: one queued behind a slow reload holds what a writer left since', async () => {
    const withRules = (rules?: unknown[]) => {
      const c = inboundConfig(rules ?? []) as Record<string, any>;
      c.log.level = 'debug';
      c.inbound.jwks = { timeoutSeconds: 3 };
      if (!rules) delete c.inbound.rules;
      return c;
    };
    sidecar = await startSidecar(withRules(allowSub('orders')));
    const token = await idp.getToken('payments', 'orders');
    idp.setDown('hang');
    try {
      await sighupStuckOnIdp(sidecar);
      // Queued behind the reload stuck on the IdP, for the files as they are now...
      sidecar.signal('SIGHUP');
      await new Promise((r) => setTimeout(r, 200));
      // ... which a writer then leaves without their rules.
      sidecar.rewriteConfig(withRules());
      await sidecar.waitForLog((l) => l.event === 'config_reload_held' && l.trigger === 'SIGHUP', 15_000);
      sidecar.rewriteConfig(withRules(allowSub('nobody')));
      await sidecar.waitForLog((l) => l.event === 'config_reload_abandoned' && l.reason === 'superseded');
      expect(sidecar.logs.filter((l) => l.event === 'inbound_rules_removed')).toEqual([]);
    } finally {
      idp.setDown(false);
    }
    expect(await call('/x', token)).toBe(403);
  });

  it('applies a config without inbound.rules on SIGHUP, saying every valid token is now let in', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('orders')));
    const token = await idp.getToken('payments', 'orders');
    expect(await call('/x', token)).toBe(403);
    const open = inboundConfig([]) as Record<string, any>;
    delete open.inbound.rules;
    sidecar.rewriteConfig(open);
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded');
    expect(sidecar.logs.find((l) => l.event === 'inbound_rules_removed')).toMatchObject({ level: 'warn', trigger: 'SIGHUP' });
    expect(await call('/x', token)).toBe(200);
  });

  it('a refused reload logs only what is wrong: a missing file in words (no `usage:` code), a YAML error without the file\'s text', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments')));
    sidecar.rewriteConfig('service: orders\noutbound:\n  tokenSource: { type: client_credentials, tokenEndpoint: "http://127.0.0.1:1/t", clientId: a, clientSecret: *Sup3rS3cret }\n');
    sidecar.signal('SIGHUP');
    const quoted = await sidecar.waitForLog((l) => l.event === 'config_reload_refused');
    expect(quoted.errors).toEqual([`${sidecar.configPath}: an alias (*name) names no anchor (&name) set before it; quote a value that starts with * (line 3)`]);
    rmSync(sidecar.configPath);
    sidecar.signal('SIGHUP');
    const missing = await sidecar.waitForLog((l) => l.event === 'config_reload_refused' && String(l.errors).includes('cannot read config file'));
    expect(missing.errors).toEqual([`cannot read config file ${sidecar.configPath}: no such file`]);
    // A directory in its place is said as at startup, not as a pipe that a restart would read.
    mkdirSync(sidecar.configPath);
    sidecar.signal('SIGHUP');
    const directory = await sidecar.waitForLog((l) => l.event === 'config_reload_refused' && String(l.errors).includes('directory'));
    expect(directory.errors).toEqual([`cannot read config file ${sidecar.configPath}: is a directory`]);
    rmdirSync(sidecar.configPath);
    expect(sidecar.output()).not.toContain('Sup3rS3cret');
  });

  // Kubernetes updates a ConfigMap and the Secret it names apart, often tens of seconds apart: the config naming a file
  // that is not there yet is refused, and the file's arrival changes no config file. The refused reload is tried again.
  it('tries a refused reload again, with backoff, and applies it once the file it named is there; a retry refused the same way logs nothing new', { timeout: 45_000 }, async () => {
    // With the config watched, the edit the SIGHUP already read is seen again a moment later as a file change, which
    // finds it unchanged: that must leave the retry in place.
    sidecar = await startSidecar(inboundConfig(allowSub('orders'), { watchConfig: true }));
    const token = await idp.getToken('payments', 'orders');
    expect(await call('/x', token)).toBe(403);
    const caFile = join(mkdtempSync(join(tmpdir(), 'lifecycle-later-ca-')), 'idp-ca.pem');
    const next = inboundConfig(allowSub('payments'), { watchConfig: true }) as Record<string, any>;
    next.inbound.issuers[0].caFile = caFile;
    sidecar.rewriteConfig(next);
    sidecar.signal('SIGHUP');
    const refused = await sidecar.waitForLog((l) => l.event === 'config_reload_refused');
    expect(String(refused.errors)).toContain(caFile);
    // The first retry (5 s later) is refused the same way: counted, not logged again at error.
    await eventually(async () => /result="invalid"\} 2$/m.test(await metric('oidc_sidecar_config_reloads_total')), 15_000, 'the first retry');
    expect(sidecar.logs.filter((l) => l.event === 'config_reload_refused')).toHaveLength(1);
    expect(await call('/x', token)).toBe(403);
    copyFileSync(selfSignedCert('later-ca').cert, caFile);
    // The next retry (10 s after the first) applies it.
    const applied = await sidecar.waitForLog((l) => l.event === 'config_reloaded', 20_000);
    expect(applied.trigger).toBe('retry');
    expect(await call('/x', token)).toBe(200);
    expect(await metric('oidc_sidecar_config_reloads_total')).toMatch(/result="success"\} 1$/m);
  });

  // A FIFO in the config's place would have held the sidecar's one thread in the read until something wrote to it:
  // no request served, no /healthz, no SIGTERM handled. Startup still reads a pipe (`--config <(envsubst < f)`).
  it.runIf(process.platform !== 'win32')('refuses a FIFO put in the config file\'s place without waiting on it, and keeps serving', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments'), { watchConfig: true }));
    const token = await idp.getToken('payments', 'orders');
    rmSync(sidecar.configPath);
    execFileSync('mkfifo', [sidecar.configPath]);
    const refused = await sidecar.waitForLog((l) => l.event === 'config_reload_refused' && String(l.errors).includes('not a regular file'));
    expect(refused.errors).toEqual([`${sidecar.configPath}: not a regular file: a reload reads the config files again, which a pipe or device cannot give; restart the sidecar to read it`]);
    expect((await fetch(`${sidecar.admin}/healthz`)).status).toBe(200);
    expect(await call('/fifo', token)).toBe(200);
  });

  it('a reload that cannot bind its new address changes nothing and the old listener keeps serving', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments')));
    const token = await idp.getToken('payments', 'orders');
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    const taken = (squatter.address() as AddressInfo).port;
    try {
      const next = inboundConfig(allowSub('nobody')) as Record<string, any>;
      next.inbound.listen = `127.0.0.1:${taken}`;
      sidecar.rewriteConfig(next);
      sidecar.signal('SIGHUP');
      const failed = await sidecar.waitForLog((l) => l.event === 'config_reload_failed');
      expect(String(failed.error)).toBe(`listen_failed: inbound.listen: cannot listen on 127.0.0.1:${taken}: address already in use`);
      // Old rules and old socket: still allowed.
      expect(await call('/z', token)).toBe(200);
      expect(await metric('oidc_sidecar_config_reloads_total')).toMatch(/result="error".* 1/);
      // Not tried again (the first retry of a refused config comes after 5 s): each try would warm the config up
      // again, fetching keys, and fail the same way until someone frees the port or edits the config.
      await new Promise((r) => setTimeout(r, 6_000));
      expect(await metric('oidc_sidecar_config_reloads_total')).toMatch(/result="error".* 1/);
      expect(sidecar.logs.filter((l) => l.event === 'config_reload_failed')).toHaveLength(1);
    } finally {
      squatter.close();
    }
  });

  it('a reload that fails after opening a new listener takes its `listening` line back with `stopped_listening` (rolled_back)', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('payments')));
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    try {
      const free = await freePort();
      const next = inboundConfig(allowSub('payments')) as Record<string, any>;
      next.inbound.listen = `127.0.0.1:${free}`;
      // The admin listener opens after the sides, so the new inbound socket is open when this one fails.
      next.admin = { listen: `127.0.0.1:${(squatter.address() as AddressInfo).port}` };
      sidecar.rewriteConfig(next);
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog((l) => l.event === 'config_reload_failed');
      const opened = sidecar.logs.filter((l) => l.event === 'listening' && l.side === 'inbound').at(-1)!;
      expect(opened.address).toBe(`127.0.0.1:${free}`);
      expect(sidecar.logs.filter((l) => l.event === 'stopped_listening')).toEqual([expect.objectContaining({ side: 'inbound', address: opened.address, reason: 'rolled_back' })]);
    } finally {
      squatter.close();
    }
  });

  it('a reload that changes only the host of a listener to a wildcard, on the same port, says a restart does it (not "address already in use")', async () => {
    const port = await freePort();
    const first = inboundConfig(allowSub('payments')) as Record<string, any>;
    first.inbound.listen = `127.0.0.1:${port}`;
    sidecar = await startSidecar(first);
    const token = await idp.getToken('payments', 'orders');
    const next = inboundConfig(allowSub('nobody')) as Record<string, any>;
    next.inbound.listen = `0.0.0.0:${port}`;
    sidecar.rewriteConfig(next);
    sidecar.signal('SIGHUP');
    const failed = await sidecar.waitForLog((l) => l.event === 'config_reload_failed');
    expect(String(failed.error)).toBe(
      `restart_required: inbound.listen: moving from 127.0.0.1:${port} to 0.0.0.0:${port} keeps the port, which the listener there holds until the new one is open; restart the sidecar to change only the host, or move to another port`,
    );
    expect(await call('/z', token)).toBe(200);
    // Another loopback address on the same port is taken by another program, not by the sidecar: said as such.
    const squatter = createServer();
    await new Promise<void>((r, reject) => squatter.once('error', reject).listen(port, '127.0.0.2', r));
    try {
      next.inbound.listen = `127.0.0.2:${port}`;
      sidecar.rewriteConfig(next);
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog(() => sidecar!.logs.filter((l) => l.event === 'config_reload_failed').length === 2);
      expect(String(sidecar.logs.filter((l) => l.event === 'config_reload_failed')[1]!.error)).toBe(`listen_failed: inbound.listen: cannot listen on 127.0.0.2:${port}: address already in use`);
    } finally {
      squatter.close();
    }
  });

  it('a reload naming the admin port it is bound to (the config said port 0) keeps the admin listener', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('orders')));
    const token = await idp.getToken('payments', 'orders');
    const adminPort = new URL(sidecar.admin).port;
    // The same address, spelt differently: binding it a second time would fail with EADDRINUSE.
    sidecar.rewriteConfig({ ...inboundConfig(allowSub('payments')), admin: { listen: `127.0.0.1:${adminPort}` } });
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' || l.event === 'config_reload_failed');
    expect(sidecar.logs.filter((l) => l.event === 'config_reload_failed')).toEqual([]);
    expect(await call('/admin-kept', token)).toBe(200);
    expect((await fetch(`${sidecar.admin}/healthz`)).status).toBe(200);
  });

  /**
   * A sidecar with a 10 s drain and a request to /long/* in flight (the app answers after 4 s), whose inbound listener a
   * reload then moved to a port the OS just handed out: the reload opened a second socket and retired the first.
   */
  async function movedWithLongRequest(path: string) {
    const s = (sidecar = await startSidecar(inboundConfig(allowSub('payments'), { drainTimeoutSeconds: 10 })));
    const token = await idp.getToken('payments', 'orders');
    const before = app.seen.length;
    const inFlight = fetch(`${s.inbound}${path}`, { headers: { authorization: `Bearer ${token}` } }).then(
      async (r) => ({ status: r.status, body: await r.text() }),
      () => 'cut' as const,
    );
    while (app.seen.length < before + 1) await new Promise((r) => setTimeout(r, 20));
    const moved = inboundConfig(allowSub('payments'), { drainTimeoutSeconds: 10 }) as Record<string, any>;
    moved.inbound.listen = `127.0.0.1:${await freePort()}`;
    s.rewriteConfig(moved);
    s.signal('SIGHUP');
    await s.waitForLog((l) => l.event === 'config_reloaded');
    return { s, inFlight, moved };
  }

  it('a request in flight on a listener that a reload moved finishes when SIGTERM comes before it does', async () => {
    const { s, inFlight } = await movedWithLongRequest('/long/moved');
    // Shutdown drained only the new socket and exited while the old one still carried this request.
    s.signal('SIGTERM');
    expect(await inFlight).toEqual({ status: 200, body: 'done /long/moved' });
    expect(await s.exited).toBe(0);
  });

  it("SIGTERM's drain deadline cuts a request on a listener an earlier reload moved, as it cuts the others", async () => {
    // The first reload moves the listener and retires the old one under its 10 s drain; the second shortens the drain.
    const { s, inFlight, moved } = await movedWithLongRequest('/long/moved-then-cut');
    moved.lifecycle.drainTimeoutSeconds = 0.2;
    s.rewriteConfig(moved);
    s.signal('SIGHUP');
    await s.waitForLog(() => s.logs.filter((l) => l.event === 'config_reloaded').length === 2);
    s.signal('SIGTERM');
    // The app answers after 4 s; the 0.2 s deadline must end the request first (it used to finish, holding the exit).
    expect(await inFlight).toBe('cut');
    expect(await s.exited).toBe(0);
    expect(s.logs.filter((l) => l.event === 'drain_timeout')).toEqual([expect.objectContaining({ drainTimeoutSeconds: 0.2, requests: 1 })]);
  });

  it('says which listeners a reload closed: one it moved, and a side it removed, with the address each had', async () => {
    const both = { ...inboundConfig(allowSub('payments')), outbound: { tokenSource: { type: 'env', variable: 'UNUSED_TOKEN' }, routes: [] } };
    sidecar = await startSidecar(both);
    const [inboundAt, outboundAt] = [new URL(sidecar.inbound!).host, new URL(sidecar.outbound!).host];
    const port = await freePort();
    const next = inboundConfig(allowSub('payments')) as Record<string, any>;
    next.inbound.listen = `127.0.0.1:${port}`;
    sidecar.rewriteConfig(next);
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded');
    const stopped = sidecar.logs.filter((l) => l.event === 'stopped_listening').map(({ side, address, reason }) => ({ side, address, reason }));
    expect(stopped).toEqual([
      { side: 'inbound', address: inboundAt, reason: 'moved' },
      { side: 'outbound', address: outboundAt, reason: 'removed' },
    ]);
    // The removed side's port no longer takes connections once its drain is over (nothing was in flight).
    await eventually(async () => (await fetch(`http://${outboundAt}/`).then(() => false, () => true)), 5_000, 'the outbound port to close');
  });

  it('reloads when the config file changes on disk', async () => {
    sidecar = await startSidecar(inboundConfig(allowSub('orders'), { watchConfig: true }));
    const token = await idp.getToken('payments', 'orders');
    expect(await call('/y', token)).toBe(403);
    sidecar.rewriteConfig(inboundConfig(allowSub('payments'), { watchConfig: true }));
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' && l.trigger === 'file_changed');
    expect(await call('/y', token)).toBe(200);
  });

  it('an edit followed by SIGHUP is one reload: the watch, seeing the edit the SIGHUP already read, does not reload again', async () => {
    const debug = (sub: string) => ({ ...inboundConfig(allowSub(sub), { watchConfig: true }), log: { level: 'debug' } });
    sidecar = await startSidecar(debug('orders'));
    const token = await idp.getToken('payments', 'orders');
    sidecar.rewriteConfig(debug('payments'));
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_reloaded' && l.trigger === 'SIGHUP');
    await sidecar.waitForLog((l) => l.event === 'config_unchanged' && l.trigger === 'file_changed');
    expect(sidecar.logs.filter((l) => l.event === 'config_reloaded').map((l) => l.trigger)).toEqual(['SIGHUP']);
    expect(await metric('oidc_sidecar_config_reloads_total')).toMatch(/result="success".* 1$/m);
    expect(await call('/once', token)).toBe(200);
  });

  it('SIGHUPs sent while a reload waits on a hanging IdP make one more reload, not one each', async () => {
    // A short JWKS timeout: each reload's warm-up (refetching the keys) waits that long on the hanging IdP.
    // Long enough that the edit below surely lands while the first reload still waits, on a busy machine too.
    const withRules = (sub: string) => withKeyTimeout(sub, 5);
    sidecar = await startSidecar(withRules('orders'));
    const token = await idp.getToken('payments', 'orders');
    idp.setDown('hang');
    try {
      // The first reload is warming up, stuck on the IdP; four more SIGHUPs and an edit arrive meanwhile.
      await sighupStuckOnIdp(sidecar);
      for (let i = 0; i < 4; i++) {
        sidecar.signal('SIGHUP');
        await new Promise((r) => setTimeout(r, 100));
      }
      sidecar.rewriteConfig(withRules('payments'));
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog((l) => l.event === 'config_reloaded', 30_000);
      expect(await call('/merged', token)).toBe(200);
      // A reload still queued would now be warming up, and the SIGTERM would abandon it.
      sidecar.signal('SIGTERM');
      expect(await sidecar.exited).toBe(0);
      // The first reload read the files before the edit: it is given up for the one that reads the edit.
      expect(sidecar.logs.filter((l) => /^config_reload/.test(l.event ?? '')).map((l) => [l.event, l.reason])).toEqual([
        ['config_reload_abandoned', 'superseded'],
        ['config_reloaded', undefined],
      ]);
    } finally {
      idp.setDown(false);
    }
  });
});

describe('reloads given up for newer files', () => {
  it('the reload after one given up is applied even if the files change again meanwhile: edits faster than a warm-up still land', async () => {
    const withRules = (sub: string) => withKeyTimeout(sub, 3);
    sidecar = await startSidecar(withRules('orders'));
    const token = await idp.getToken('payments', 'orders');
    idp.setDown('hang');
    try {
      sidecar.rewriteConfig(withRules('a'));
      await sighupStuckOnIdp(sidecar);
      // B supersedes A; C arrives while B warms up, and must wait for B rather than give it up too.
      sidecar.rewriteConfig(withRules('b'));
      await sighupStuckOnIdp(sidecar);
      sidecar.rewriteConfig(withRules('payments'));
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog(() => sidecar!.logs.filter((l) => l.event === 'config_reloaded').length === 2, 30_000);
      expect(sidecar.logs.filter((l) => /^config_reload/.test(l.event ?? '')).map((l) => [l.event, l.reason])).toEqual([
        ['config_reload_abandoned', 'superseded'],
        ['config_reloaded', undefined],
        ['config_reloaded', undefined],
      ]);
      expect(await call('/last', token)).toBe(200);
    } finally {
      idp.setDown(false);
    }
  });
});

/**
 * Starts a sidecar and calls `signal(child)` once the launcher starts loading the bundle, as a module hook reports
 * (test/support/bundle-loads/): from then on the launcher's own signal listeners are in place, while most of the
 * sidecar's startup (the bundle itself, the config, the listeners) is still ahead.
 */
function startAndSignalEarly(service: string, signal: (child: ChildProcess) => void) {
  const config = writeConfig({ service, admin: { listen: '127.0.0.1:0' }, outbound: { listen: '127.0.0.1:0', routes: [] } });
  const hook = resolve(import.meta.dirname, '../support/bundle-loads/register.mjs');
  const child = spawn(process.execPath, [BIN, 'run', '--config', config], {
    env: { ...process.env, NODE_OPTIONS: `--import="${hook}"` },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = { stdout: '', stderr: '' };
  let signalled = false;
  child.stdout.on('data', (d) => (out.stdout += d));
  child.stderr.on('data', (d) => {
    out.stderr += d;
    if (!signalled && out.stderr.includes('bundle-load: main.js')) {
      signalled = true;
      signal(child);
    }
  });
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (code, sig) => r([code, sig])));
  return { child, out, exited };
}

describe('SIGHUP while the sidecar starts', () => {
  it('is ignored until the sidecar listens (Node would end the process), then reloads as usual', async () => {
    let hups = 0;
    let timer: NodeJS.Timeout | undefined;
    const { child, out, exited } = startAndSignalEarly('early-hup', (c) => {
      timer = setInterval(() => {
        if (out.stdout.includes('"event":"started"')) return clearInterval(timer);
        hups++;
        c.kill('SIGHUP');
      }, 2);
    });
    try {
      const started = await Promise.race([
        (async () => {
          while (!out.stdout.includes('"event":"started"')) await new Promise((r) => setTimeout(r, 10));
          return true;
        })(),
        exited.then(() => false),
      ]);
      expect(started, `the process ended after ${hups} SIGHUPs:\n${out.stderr}`).toBe(true);
      expect(hups).toBeGreaterThan(0);
      // Started: SIGHUP is the reload signal again.
      child.kill('SIGHUP');
      while (!out.stdout.includes('"event":"config_reloaded"')) await new Promise((r) => setTimeout(r, 10));
      child.kill('SIGTERM');
      expect(await exited).toEqual([0, null]);
    } finally {
      clearInterval(timer);
      child.kill('SIGKILL');
    }
  });
});

describe('SIGTERM and SIGINT while the sidecar starts', () => {
  it('SIGTERM is held until the sidecar can stop the usual way (Node would end it with 143 and no log line): started, signal, drained, exit 0', async () => {
    const { child, out, exited } = startAndSignalEarly('early-term', (c) => c.kill('SIGTERM'));
    try {
      expect(await exited, out.stderr).toEqual([0, null]);
      const events = out.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event?: string; signal?: string; whileStarting?: boolean });
      const lifecycle = ['started', 'signal', 'shutdown', 'stopped'];
      expect(events.map((e) => e.event).filter((e) => lifecycle.includes(e!))).toEqual(lifecycle);
      // `whileStarting: true` when Node ran the launcher's listener before `run` had its own. Node 22 and later load
      // the bundle without turning the event loop, so the signal often reaches JavaScript only once `run` listens.
      expect(events.find((e) => e.event === 'signal')).toMatchObject({ signal: 'SIGTERM' });
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a second SIGINT while starting (Ctrl-C twice) ends it at once with exit 130', async () => {
    // Apart, so that the kernel delivers both rather than merging the second into the first still pending.
    const { child, out, exited } = startAndSignalEarly('early-int', (c) => {
      c.kill('SIGINT');
      setTimeout(() => c.kill('SIGINT'), 20);
    });
    try {
      // Either the launcher's listener took both (Node 20 runs it while the bundle loads) or `run` did, the first
      // starting a drain and the second ending it; Node's default would have ended it on the first with no code.
      expect(await exited, out.stderr).toEqual([130, null]);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('a bug that escapes every handler', () => {
  it('ends the process with exit 1 after one JSON log line (level fatal, event crashed), with JWT-like text masked', async () => {
    // A fault put into the process from outside, as a bug would throw: a listener of a signal the sidecar does not use.
    const dir = mkdtempSync(join(tmpdir(), 'crash-'));
    const bug = join(dir, 'bug.cjs');
    writeFileSync(bug, "process.on('SIGUSR2', () => { throw new Error('a bug holding eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJvcmRlcnMifQ.c2ln'); });\n");
    try {
      sidecar = await startSidecar(inboundConfig(allowSub('orders')), { env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${bug}`.trim() } });
      sidecar.signal('SIGUSR2');
      expect(await sidecar.exited).toBe(1);
      const last = sidecar.logs.at(-1)!;
      expect(last).toMatchObject({ level: 'fatal', event: 'crashed', origin: 'uncaughtException', error: 'a bug holding [redacted]' });
      expect(String(last.stack)).toMatch(/^Error: a bug holding \[redacted\]\n\s+at /);
      // Nothing else, and no stack trace of Node's own on stderr.
      expect(sidecar.output()).not.toContain('eyJ');
      expect(sidecar.output().trim().split('\n').every((l) => l.startsWith('{'))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('SIGTERM with an open WebSocket tunnel', () => {
  it('exits 0 even when the app ignores the end of the tunnel (tunnels are drained, then cut)', async () => {
    const { startWsEcho } = await import('../unit/proxy-ws-echo.js');
    const { WebSocket } = await import('undici');
    const wsApp = await startWsEcho({ ignoreEnd: true });
    try {
      sidecar = await startSidecar({
        service: 'chat',
        lifecycle: { watchConfig: false, drainTimeoutSeconds: 0.5 },
        inbound: { target: wsApp.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
      });
      const token = await idp.getToken('payments', 'orders');
      const ws = new WebSocket(`${sidecar.inbound!.replace(/^http/, 'ws')}/ws`, { headers: { authorization: `Bearer ${token}` } } as never);
      await new Promise((resolve, reject) => {
        ws.addEventListener('open', resolve);
        ws.addEventListener('error', reject);
      });
      const closed = new Promise((r) => ws.addEventListener('close', r));
      sidecar.signal('SIGTERM');
      expect(await sidecar.exited).toBe(0);
      await closed;
      expect(sidecar.logs.filter((l) => l.event === 'drain_timeout')).toEqual([expect.objectContaining({ requests: 0, tunnels: 1 })]);
    } finally {
      await wsApp.close();
    }
  });
});

describe('reload that moves the listener of an open WebSocket tunnel', () => {
  it('keeps the tunnel open past the drain timeout, as at the same address; SIGTERM then cuts it and exits 0', async () => {
    const { startWsEcho } = await import('../unit/proxy-ws-echo.js');
    const { WebSocket } = await import('undici');
    const wsApp = await startWsEcho();
    try {
      const config = (listen: string) => ({
        service: 'chat',
        lifecycle: { watchConfig: false, drainTimeoutSeconds: 0.3 },
        inbound: { listen, target: wsApp.url, audience: 'orders', issuers: [{ issuer: idp.issuer }] },
      });
      sidecar = await startSidecar(config('127.0.0.1:0'));
      const token = await idp.getToken('payments', 'orders');
      const ws = new WebSocket(`${sidecar.inbound!.replace(/^http/, 'ws')}/ws`, { headers: { authorization: `Bearer ${token}` } } as never);
      const messages: string[] = [];
      ws.addEventListener('message', (e) => messages.push(String(e.data)));
      await new Promise((resolve, reject) => {
        ws.addEventListener('open', resolve);
        ws.addEventListener('error', reject);
      });
      let closed = false;
      const closedEvent = new Promise((r) => ws.addEventListener('close', r));
      void closedEvent.then(() => (closed = true));
      // A port the OS just handed out and took back: the reload opens a second inbound socket and retires the first.
      const port = await freePort();
      sidecar.rewriteConfig(config(`127.0.0.1:${port}`));
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog((l) => l.event === 'config_reloaded');
      // Well past the 0.3 s drain of the retired listener, which used to cut its tunnels with its keep-alive connections.
      await new Promise((r) => setTimeout(r, 1000));
      expect(closed).toBe(false);
      ws.send('after-reload');
      await eventually(() => messages.includes('echo:after-reload') || closed, 5000, 'the echo');
      expect(messages).toEqual(['echo:after-reload']);

      sidecar.signal('SIGTERM');
      expect(await sidecar.exited).toBe(0);
      await closedEvent;
    } finally {
      await wsApp.close();
    }
  });
});

describe('reload with an open CONNECT tunnel (outbound passthrough)', () => {
  it('keeps the tunnel open past the drain timeout, as it does WebSocket tunnels; SIGTERM then cuts it and exits 0', async () => {
    // The drain deadline resets the tunnel's upstream side too.
    const echo = createServer((s) => s.on('error', () => {}).pipe(s));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    const echoPort = (echo.address() as AddressInfo).port;
    const config = (level: string) => ({
      service: 'tunnels',
      log: { level },
      lifecycle: { watchConfig: false, drainTimeoutSeconds: 0.3 },
      outbound: { routes: [], unknownHosts: 'passthrough' },
    });
    let socket: Socket | undefined;
    try {
      sidecar = await startSidecar(config('info'));
      const { hostname, port } = new URL(sidecar.outbound!);
      const tunnel = connect(Number(port), hostname);
      socket = tunnel;
      let received = '';
      tunnel.on('data', (d: Buffer) => (received += d.toString('latin1')));
      // The drain deadline cuts a tunnel with a reset: a stream cut short must not read as ended.
      let cutWith: string | undefined;
      tunnel.on('error', (err: NodeJS.ErrnoException) => (cutWith = err.code));
      const closed = new Promise<void>((r) => tunnel.once('close', () => r()));
      const until = async (text: string) => {
        while (!received.includes(text)) {
          if (tunnel.destroyed) throw new Error(`the tunnel closed before "${text}" came back; got ${JSON.stringify(received)}`);
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      tunnel.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
      await until('\r\n\r\n');
      expect(received).toMatch(/^HTTP\/1\.1 200 /);
      tunnel.write('before-reload');
      await until('before-reload');

      sidecar.rewriteConfig(config('debug'));
      sidecar.signal('SIGHUP');
      await sidecar.waitForLog((l) => l.event === 'config_reloaded');
      // Well past the 0.3 s in which the retired component's work had to finish; it used to take its tunnels along.
      await new Promise((r) => setTimeout(r, 1000));
      tunnel.write('after-reload');
      await until('after-reload');

      sidecar.signal('SIGTERM');
      await closed;
      expect(await sidecar.exited).toBe(0);
      expect(cutWith).toBe('ECONNRESET');
    } finally {
      socket?.destroy();
      echo.close();
    }
  });
});
