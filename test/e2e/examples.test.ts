import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { DEFAULTS } from '../../src/config/defaults.js';
import { DEFAULT_DEV_CLIENTS, loadDevClientsFile } from '../../src/dev/clients-file.js';
import { startIdp, type TestIdp } from '../support/idp.js';
import { freePort, runCli, startSidecar, type SidecarProcess } from '../support/sidecar.js';
import { startUpstream, type UpstreamApp } from '../support/upstream.js';

const ROOT = resolve(import.meta.dirname, '../..');
const at = (...p: string[]) => join(ROOT, ...p);
/** The pod's service-account CA that config/base.yaml names: it exists in a pod, so these configs are checked outside one with --skip-file-checks. */
const POD_CA_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt';

/** Every sidecar config shipped, as the layers a user passes to `--config`, with the env it needs; `inPod` names files only a pod has. */
function sidecarConfigSets(): Array<{ name: string; layers: string[]; env?: Record<string, string>; service: string; inPod?: true }> {
  const namespaces = readdirSync(at('config/namespaces')).filter((f) => /\.ya?ml$/.test(f));
  const overlays = readdirSync(at('examples/kubernetes/overlays'));
  return [
    { name: 'config/base.yaml alone', layers: ['config/base.yaml'], service: 'workload', inPod: true },
    ...namespaces.map((f) => ({
      name: `config/base.yaml + config/namespaces/${f}`,
      layers: ['config/base.yaml', `config/namespaces/${f}`],
      service: f.replace(/\.ya?ml$/, ''),
      inPod: true as const,
    })),
    ...overlays.map((ns) => ({
      name: `kubernetes overlay ${ns}`,
      layers: ['examples/kubernetes/base/config/base.yaml', `examples/kubernetes/overlays/${ns}/config/namespace.yaml`],
      service: ns,
      inPod: true as const,
    })),
    { name: 'compose orders sidecar', layers: ['examples/docker-compose/sidecars/orders.yaml'], env: { ORDERS_CLIENT_SECRET: 'compose-secret-value' }, service: 'orders' },
    { name: 'compose payments sidecar', layers: ['examples/docker-compose/sidecars/payments.yaml'], service: 'payments' },
    { name: 'ci deploy gate: deployer sidecar', layers: ['examples/ci-deploy-gate/deployer-sidecar.yaml'], service: 'deployer' },
    { name: 'ci deploy gate: token config', layers: ['examples/ci-deploy-gate/ci-token.yaml'], service: 'deploy-job' },
  ];
}

/** YAML files that are not sidecar configs, each checked by its own test below. */
const OTHER_YAML = new Set([
  'examples/docker-compose/docker-compose.yaml',
  'examples/docker-compose/dev-clients.yaml',
  'examples/ci-deploy-gate/deploy.yml',
]);

function yamlFilesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(at(dir))) {
    const rel = `${dir}/${entry}`;
    if (statSync(at(rel)).isDirectory()) out.push(...yamlFilesUnder(rel));
    else if (/\.ya?ml$/.test(entry)) out.push(rel);
  }
  return out;
}

const hasCommand = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

describe('shipped configs validate with the CLI', () => {
  for (const set of sidecarConfigSets()) {
    it(`${set.name}`, async () => {
      const flags = set.inPod ? ['--skip-file-checks'] : [];
      const r = await runCli(['validate', ...flags, ...set.layers.flatMap((l) => ['--config', at(l)])], { env: set.env ?? {} });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(parse(r.stdout)).toMatchObject({ service: set.service });
      for (const secret of Object.values(set.env ?? {})) expect(r.stdout).not.toContain(secret);
    });
  }

  it('every YAML file under config/ and examples/ is covered by a test', () => {
    const covered = new Set([...sidecarConfigSets().flatMap((s) => s.layers), ...OTHER_YAML]);
    const manifests = (f: string) => f.startsWith('examples/kubernetes/') && !f.includes('/config/');
    const uncovered = [...yamlFilesUnder('config'), ...yamlFilesUnder('examples')].filter((f) => !covered.has(f) && !manifests(f));
    expect(uncovered).toEqual([]);
  });

  // Kubernetes puts <SERVICE>_PORT=tcp://ip:port, <SERVICE>_SERVICE_HOST and the like into every pod of a namespace
  // (service links, on by default): a config variable of that shape, such as APP_PORT, takes a Service's address as
  // soon as someone creates a Service with that name, and every sidecar of the namespace then fails to start.
  it('reads no ${VAR} whose name Kubernetes service links can set', () => {
    const serviceLink = /(_SERVICE_HOST|_SERVICE_PORT(_[A-Z0-9_]+)?|_PORT|_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$/;
    const names = new Set(sidecarConfigSets().flatMap((set) => set.layers.flatMap((l) => [...readFileSync(at(l), 'utf8').matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!))));
    expect(names).toContain('OIDC_SIDECAR_APP_URL');
    expect([...names].filter((n) => serviceLink.test(n))).toEqual([]);
  });

  it('the Kubernetes ConfigMap sources are exactly config/base.yaml and config/namespaces/<ns>.yaml', () => {
    expect(readFileSync(at('examples/kubernetes/base/config/base.yaml'), 'utf8')).toBe(readFileSync(at('config/base.yaml'), 'utf8'));
    const overlays = readdirSync(at('examples/kubernetes/overlays'));
    expect(overlays.sort()).toEqual(readdirSync(at('config/namespaces')).map((f) => f.replace(/\.ya?ml$/, '')).sort());
    for (const ns of overlays) {
      expect(readFileSync(at(`examples/kubernetes/overlays/${ns}/config/namespace.yaml`), 'utf8')).toBe(readFileSync(at(`config/namespaces/${ns}.yaml`), 'utf8'));
    }
  });

  it.skipIf(existsSync(POD_CA_FILE))('the commands in config/ headers work as written: validate lines run here, run lines say they are for the pod', async () => {
    const files = ['config/base.yaml', ...readdirSync(at('config/namespaces')).map((f) => `config/namespaces/${f}`)];
    let validates = 0;
    for (const file of files) {
      for (const line of readFileSync(at(file), 'utf8').split('\n')) {
        const m = /^#\s+oidc-sidecar (validate|run)\s+(.*?)(?:\s+#\s*(.*))?$/.exec(line);
        if (!m) continue;
        const [, command, args, note] = m;
        if (command === 'run') {
          expect(note, `${file}: ${line}`).toBe('in the pod');
          continue;
        }
        const r = await runCli([command!, ...args!.split(/\s+/)], { cwd: ROOT });
        expect(r.stderr, `${file}: ${line}`).toBe('');
        expect(r.code).toBe(0);
        validates++;
      }
    }
    expect(validates).toBeGreaterThanOrEqual(files.length);
  });

  it.skipIf(existsSync(POD_CA_FILE))('outside a pod, validate without --skip-file-checks still reads the cluster CA: refused with its key path', async () => {
    const r = await runCli(['validate', '--config', at('config/base.yaml')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^oidc-sidecar: invalid config: inbound\\.issuers\\.0\\.caFile: cannot read ${POD_CA_FILE.replaceAll('.', '\\.')}: no such file \\(line \\d+\\)\n$`));
  });

  it('an invalid overlay is refused with its key path (the layering really merges)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'examples-'));
    try {
      const bad = join(dir, 'bad-ns.yaml');
      writeFileSync(bad, 'inbound:\n  rules:\n    - match: { path: nope }\n      public: true\n');
      const r = await runCli(['validate', '--skip-file-checks', '--config', at('config/base.yaml'), '--config', bad]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('inbound.rules.0.match.path');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('docker-compose example', () => {
  const composeDir = at('examples/docker-compose');
  const compose = parse(readFileSync(join(composeDir, 'docker-compose.yaml'), 'utf8'), { merge: true }) as { services: Record<string, any>; networks: Record<string, any>; volumes?: Record<string, unknown> };

  /** The volume entry (`source:target[:ro]`) whose target is `path` or a directory holding it. */
  const mountOf = (svc: any, path: string) =>
    ((svc.volumes ?? []) as string[]).find((v) => {
      const target = v.split(':')[1]!;
      return path === target || path.startsWith(`${target.replace(/\/$/, '')}/`);
    });
  /** Where a path inside a service's container is on the host, through its volumes. */
  const hostPathOf = (svc: any, path: string) => {
    const [source, target] = mountOf(svc, path)?.split(':') ?? [];
    return resolve(composeDir, source ?? '/nonexistent', path.slice(target?.length ?? 0).replace(/^\//, ''));
  };

  it.skipIf(!hasCommand('docker-compose', ['version']))('passes `docker-compose config`', () => {
    const r = spawnSync('docker-compose', ['-f', join(composeDir, 'docker-compose.yaml'), 'config', '-q'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('references only files that exist, and a build context with the Dockerfile', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      for (const v of (svc.volumes ?? []) as string[]) {
        const source = v.split(':')[0]!;
        if (source.startsWith('.')) expect(existsSync(resolve(composeDir, source)), `${name}: ${source}`).toBe(true);
      }
      if (svc.build) expect(existsSync(resolve(composeDir, svc.build.context, svc.build.dockerfile ?? 'Dockerfile')), `${name}: build`).toBe(true);
      const cfg = svc.environment?.OIDC_SIDECAR_CONFIG as string | undefined;
      if (cfg) expect(existsSync(hostPathOf(svc, cfg)), `${name}: ${cfg} is mounted`).toBe(true);
    }
  });

  it("mounts each sidecar's config through its directory, so an edit saved by rename (vim, sed -i) reaches the config watch", () => {
    // A single-file bind mount pins the inode the host had at start: after a rename-save the container still reads
    // the old file, and the reload it logs applies nothing.
    for (const [name, svc] of Object.entries(compose.services)) {
      const cfg = svc.environment?.OIDC_SIDECAR_CONFIG as string | undefined;
      if (!cfg) continue;
      const target = mountOf(svc, cfg)!.split(':')[1]!;
      expect(target, `${name}: mounts ${cfg} through its directory`).not.toBe(cfg);
    }
  });

  it('reaches each app only through its sidecar: the two share a network namespace, where only the sidecar\'s ports are published', () => {
    for (const app of ['orders', 'payments']) {
      const pod = `${app}-pod`;
      for (const name of [app, `${app}-sidecar`]) {
        expect(compose.services[name].network_mode, name).toBe(`service:${pod}`);
        expect(compose.services[name].ports, name).toBeUndefined();
      }
      expect(compose.services[pod].ports.map((p: string) => p.split(':').at(-1)).sort()).toEqual(['15006', '15020']);
      // The peers and the README call the sidecar by its service name.
      expect(compose.services[pod].networks.mesh.aliases).toEqual([`${app}-sidecar`]);
    }
    expect(compose.networks.mesh.internal).toBe(true);
  });

  // Docker gives a restarted container a new network namespace; one that joined the old one stays there, cut off
  // (docker/compose#8918). Held by a container of its own, as a pod's pause container holds a pod's, a namespace
  // outlives a restart of either the app or its sidecar.
  it('holds each shared network namespace in a container that only sleeps, neither the app nor its sidecar', () => {
    const owners = new Set(Object.values(compose.services).flatMap((svc) => (/^service:(.+)$/.exec(svc.network_mode ?? '') ?? []).slice(1)));
    expect([...owners].sort()).toEqual(['orders-pod', 'payments-pod']);
    for (const owner of owners) {
      const svc = compose.services[owner];
      expect(svc.command, owner).toEqual(['sleep', 'infinity']);
      expect(svc.environment?.OIDC_SIDECAR_CONFIG, owner).toBeUndefined();
      expect(svc.network_mode, owner).toBeUndefined();
    }
  });

  it('publishes its ports on 127.0.0.1 only (Docker would bind every interface), and restarts the sidecars as it does the apps', () => {
    const published = Object.entries(compose.services).flatMap(([name, svc]) => ((svc.ports ?? []) as string[]).map((p) => [name, String(p)]));
    expect(published.length).toBeGreaterThan(0);
    for (const [name, port] of published) expect(port, `${name}: ${port}`).toMatch(/^127\.0\.0\.1:\d+:\d+$/);
    for (const [name, svc] of Object.entries(compose.services)) expect(svc.restart, name).toBe('unless-stopped');
  });

  it('sets each proxy variable in both spellings (curl reads only the lowercase one)', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      const env = (svc.environment ?? {}) as Record<string, string>;
      for (const upper of ['HTTP_PROXY', 'NO_PROXY']) {
        if (env[upper] !== undefined) expect(env[upper.toLowerCase()], `${name}: ${upper.toLowerCase()}`).toBe(env[upper]);
      }
    }
    expect(compose.services.orders.environment.http_proxy).toBe('http://127.0.0.1:15001');
  });

  it('its demo app stops on SIGTERM with exit 0 (as PID 1 in its container, Node ignores a signal it does not handle)', async () => {
    const app = await startApp({ SERVICE: 'payments' });
    const exited = new Promise<[number | null, string | null]>((res) => app.child.once('exit', (code, signal) => res([code, signal])));
    app.child.kill('SIGTERM');
    expect(await exited).toEqual([0, null]);
  });

  it("gives each sidecar time to drain before the SIGKILL (Docker's default is 10 s)", () => {
    const sidecars = Object.entries(compose.services).filter(([, svc]) => svc.environment?.OIDC_SIDECAR_CONFIG);
    expect(sidecars.map(([name]) => name).sort()).toEqual(['orders-sidecar', 'payments-sidecar']);
    for (const [name, svc] of sidecars) {
      const drain = parse(readFileSync(hostPathOf(svc, svc.environment.OIDC_SIDECAR_CONFIG), 'utf8')).lifecycle?.drainTimeoutSeconds ?? DEFAULTS.lifecycle.drainTimeoutSeconds;
      const grace = /^(\d+)s$/.exec(String(svc.stop_grace_period ?? '10s'));
      expect(grace, `${name}: stop_grace_period in seconds`).not.toBeNull();
      expect(Number(grace![1]), `${name}: stop_grace_period`).toBeGreaterThanOrEqual(drain + 5);
    }
  });

  it('keeps the dev issuer signing key on a volume, in a directory its image lets the non-root user write', () => {
    // Restarted without it (after an edit of dev-clients.yaml), the issuer signed with a new key, and every token the
    // sidecars held was refused as unknown_key until they renewed it, minutes later.
    const issuer = compose.services['dev-issuer'];
    const keyFile = (issuer.command as string[]).find((a) => a.startsWith('--key-file='))?.slice('--key-file='.length);
    expect(keyFile).toBeDefined();
    const volume = mountOf(issuer, keyFile!)!.split(':')[0]!;
    expect(Object.keys(compose.volumes ?? {})).toContain(volume);
    // A new named volume takes the owner of the image's directory it is mounted on: the one the Dockerfile makes for 1000.
    const dir = mountOf(issuer, keyFile!)!.split(':')[1]!;
    expect(readFileSync(at('Dockerfile'), 'utf8')).toContain(`mkdir -p ${dir} && chown 1000:1000 ${dir}`);
  });

  it('its dev-clients.yaml is a valid dev issuer clients file', () => {
    const file = loadDevClientsFile(join(composeDir, 'dev-clients.yaml'), {});
    expect(file.clients.map((c) => c.clientId)).toEqual(['orders', 'payments']);
  });

  describe('its sidecar configs and demo app work together (compose hostnames mapped to loopback)', () => {
    let idp: TestIdp;
    const children: ChildProcess[] = [];
    const sidecars: SidecarProcess[] = [];
    beforeAll(async () => {
      idp = await startIdp({ clients: [{ clientId: 'orders', clientSecret: 'orders-secret' }, { clientId: 'payments', clientSecret: 'payments-secret' }] });
    });
    afterAll(async () => {
      await Promise.all(sidecars.map((s) => s.stop()));
      for (const c of children) c.kill('SIGTERM');
      await idp.close();
    });

    it('GET /checkout on orders reaches payments through both sidecars, as the README says', async () => {
      const mapHosts = (text: string, map: Record<string, string>) => Object.entries(map).reduce((t, [from, to]) => t.replaceAll(from, to), text);
      const payApp = await startApp({ SERVICE: 'payments' });
      children.push(payApp.child);
      const paymentsCfg = parse(mapHosts(readFileSync(join(composeDir, 'sidecars/payments.yaml'), 'utf8'), { 'http://dev-issuer:9000': idp.issuer, 'http://127.0.0.1:8080': payApp.url }));
      paymentsCfg.inbound.listen = '127.0.0.1:0';
      paymentsCfg.admin.listen = '127.0.0.1:0';
      const payments = await startSidecar(paymentsCfg);
      sidecars.push(payments);

      const outboundPort = await freePort();
      const ordersApp = await startApp({ SERVICE: 'orders', HTTP_PROXY: `http://127.0.0.1:${outboundPort}`, PEER_URL: 'http://payments/payments/charge' });
      children.push(ordersApp.child);
      const ordersCfg = parse(
        mapHosts(readFileSync(join(composeDir, 'sidecars/orders.yaml'), 'utf8'), {
          'http://dev-issuer:9000': idp.issuer,
          'http://payments-sidecar:15006': payments.inbound!,
          'http://127.0.0.1:8080': ordersApp.url,
        }),
      );
      ordersCfg.inbound.listen = '127.0.0.1:0';
      ordersCfg.outbound.listen = `127.0.0.1:${outboundPort}`;
      ordersCfg.admin.listen = '127.0.0.1:0';
      const orders = await startSidecar(ordersCfg, { env: { ORDERS_CLIENT_SECRET: 'orders-secret' } });
      sidecars.push(orders);

      const res = await fetch(`${orders.inbound}/checkout`);
      const body = (await res.json()) as any;
      expect(res.status).toBe(200);
      expect(body).toMatchObject({
        service: 'orders',
        peerStatus: 200,
        peerAnswer: { service: 'payments', method: 'POST', path: '/payments/charge', caller: { sub: 'orders', iss: idp.issuer, client: 'orders' }, bearerTokenReachedApp: false },
      });

      // README steps 2-5 against the payments sidecar; the README shows each refusal's header and body as sent.
      const readme = readFileSync(join(composeDir, 'README.md'), 'utf8');
      const shown = async (res: Response) => {
        const body = await res.text();
        expect(readme).toContain(`# www-authenticate: ${res.headers.get('www-authenticate')}\n`);
        expect(readme).toContain(`# ${body}\n`);
        return JSON.parse(body).reason as string;
      };
      const none = await fetch(`${payments.inbound}/payments/charge`, { method: 'POST' });
      expect([none.status, await shown(none)]).toEqual([401, 'missing_token']);
      const call = (token: string) => fetch(`${payments.inbound}/payments/charge`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
      expect((await call(await idp.getToken('orders', 'payments', { audienceParam: 'audience' }))).status).toBe(200);
      const wrong = await call(await idp.getToken('orders', 'orders', { audienceParam: 'audience' }));
      expect([wrong.status, await shown(wrong)]).toEqual([401, 'audience_mismatch']);
      const other = await call(await idp.getToken('payments', 'payments', { audienceParam: 'audience' }));
      expect([other.status, await shown(other)]).toEqual([403, 'policy_denied']);
      expect(readme).not.toMatch(/\| *head\b/);
    });
  });
});

describe('kubernetes example', () => {
  const overlays = readdirSync(at('examples/kubernetes/overlays'));
  const hasKubectl = hasCommand('kubectl', ['version', '--client']);
  expect(overlays.length).toBeGreaterThanOrEqual(2);

  for (const ns of overlays) {
    it.skipIf(!hasKubectl)(`overlay ${ns} builds with kubectl kustomize into a hardened pod with a projected token`, async () => {
      const rendered = execFileSync('kubectl', ['kustomize', at(`examples/kubernetes/overlays/${ns}`)], { encoding: 'utf8' });
      const docs = parseAllDocuments(rendered).map((d) => d.toJS()) as any[];
      const byKind = (kind: string) => docs.filter((d) => d.kind === kind);
      for (const d of docs) if (d.kind !== 'Namespace') expect(d.metadata.namespace, `${d.kind}/${d.metadata.name}`).toBe(ns);

      const [deploy] = byKind('Deployment');
      const pod = deploy.spec.template.spec;
      const selects = (selector: any) => Object.entries(selector.matchLabels).every(([k, v]) => deploy.spec.template.metadata.labels[k] === v);
      expect(pod.serviceAccountName).toBe(ns);
      expect(byKind('ServiceAccount').map((s) => s.metadata.name)).toContain(ns);
      expect(pod.securityContext.runAsNonRoot).toBe(true);
      const sidecar = pod.containers.find((c: any) => c.name === 'oidc-sidecar');
      // The layers come from OIDC_SIDECAR_CONFIG, so `kubectl exec` of validate, verify or token finds them too.
      expect(sidecar.args).toEqual(['run']);
      const configMount = sidecar.volumeMounts.find((m: any) => m.name === 'oidc-sidecar-config').mountPath as string;
      expect(sidecar.env.find((e: any) => e.name === 'OIDC_SIDECAR_CONFIG')?.value).toBe(`${configMount}/base.yaml,${configMount}/namespace.yaml`);
      expect(sidecar.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
      expect(sidecar.livenessProbe.httpGet).toMatchObject({ path: '/healthz', port: 'admin' });
      expect(sidecar.readinessProbe.httpGet).toMatchObject({ path: '/readyz', port: 'admin' });
      expect(sidecar.ports).toEqual(expect.arrayContaining([{ name: 'admin', containerPort: 15020 }, { name: 'inbound', containerPort: 15006 }]));

      // The projected tokens cover exactly the audiences of the namespace config's outbound routes.
      const nsConfig = parse(readFileSync(at(`config/namespaces/${ns}.yaml`), 'utf8'));
      const audiences = ((nsConfig.outbound?.routes ?? []) as Array<{ audience: string }>).map((r) => r.audience).sort();
      const tokens = pod.volumes.find((v: any) => v.name === 'oidc-tokens').projected.sources.map((s: any) => s.serviceAccountToken);
      expect(tokens.map((t: any) => t.audience).sort()).toEqual(audiences);
      for (const t of tokens) {
        expect(t.path).toBe(t.audience);
        expect(t.expirationSeconds).toBeGreaterThanOrEqual(600);
      }

      const [svc] = byKind('Service');
      expect(svc.spec.ports.map((p: any) => p.targetPort)).toEqual(['inbound']);

      // Other pods get in through the sidecar only: a NetworkPolicy on this pod admits its inbound and admin ports,
      // not the app's (which declares none: it listens on loopback).
      const policies = byKind('NetworkPolicy').filter((p) => selects(p.spec.podSelector));
      expect(policies).toHaveLength(1);
      expect(policies[0].spec.policyTypes).toContain('Ingress');
      expect(policies[0].spec.ingress.flatMap((r: any) => r.ports.map((p: any) => p.port)).sort()).toEqual([15006, 15020]);
      expect(pod.containers.find((c: any) => c.name === 'app').ports).toBeUndefined();

      // The ConfigMap as rendered validates as the sidecar would load it.
      const [cm] = byKind('ConfigMap');
      expect(Object.keys(cm.data).sort()).toEqual(['base.yaml', 'namespace.yaml']);
      const dir = mkdtempSync(join(tmpdir(), `k8s-${ns}-`));
      let effective: any;
      try {
        for (const [file, text] of Object.entries(cm.data as Record<string, string>)) writeFileSync(join(dir, file), text);
        // The Deployment's env as the container gets it, the ConfigMap's mount point moved here; as `oidc-sidecar validate`
        // run in the container, but with --skip-file-checks: the mounted files (the cluster CA) exist only in the pod.
        const env = Object.fromEntries((sidecar.env as Array<{ name: string; value: string }>).map((e) => [e.name, e.value]));
        env.OIDC_SIDECAR_CONFIG = env.OIDC_SIDECAR_CONFIG!.replaceAll(configMount, dir);
        const r = await runCli(['validate', '--skip-file-checks'], { env });
        expect(r.stderr).toBe('');
        effective = parse(r.stdout);
        expect(effective).toMatchObject({ service: ns, inbound: { audience: ns } });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }

      // Evictions (node drains, upgrades) leave at least one replica of several serving.
      const budgets = byKind('PodDisruptionBudget').filter((b) => selects(b.spec.selector));
      expect(budgets).toHaveLength(1);
      expect(deploy.spec.replicas).toBeGreaterThanOrEqual(2);
      expect(budgets[0].spec.minAvailable).toBeGreaterThanOrEqual(1);
      expect(budgets[0].spec.minAvailable).toBeLessThan(deploy.spec.replicas);

      // The sidecar's memory request covers its peak (docs/performance.md, "Memory": up to ~90 MB), so the
      // scheduler does not pack pods onto a node that cannot hold them under load.
      expect(bytes(sidecar.resources.requests.memory)).toBeGreaterThanOrEqual(90 * 2 ** 20);
      expect(bytes(sidecar.resources.limits.memory)).toBeGreaterThanOrEqual(bytes(sidecar.resources.requests.memory));

      // The app proxies through the sidecar's outbound listener in both spellings (curl reads only http_proxy).
      const appEnv = Object.fromEntries((pod.containers.find((c: any) => c.name === 'app').env as Array<{ name: string; value: string }>).map((e) => [e.name, e.value]));
      expect(appEnv).toMatchObject({ HTTP_PROXY: `http://${effective.outbound.listen}`, http_proxy: `http://${effective.outbound.listen}` });
      expect(appEnv.no_proxy).toBe(appEnv.NO_PROXY);

      // Shutdown: endpoint removal takes seconds to reach every node, and until then callers' connections keep
      // arriving at the sidecar, which hands them to the app. So the app sleeps before its SIGTERM too (without it,
      // the app stops at once and those calls get 502 upstream_connect_failed from a sidecar still serving), and the
      // sidecar sleeps longer, so the app keeps its outbound proxy while it winds down. The grace period covers the
      // sidecar's sleep, its drain and a margin before the SIGKILL.
      const app = pod.containers.find((c: any) => c.name === 'app');
      const appPreStop = preStopSeconds(app);
      const sidecarPreStop = preStopSeconds(sidecar);
      expect(appPreStop, 'the app waits out endpoint removal').toBeGreaterThanOrEqual(3);
      expect(sidecarPreStop - appPreStop, 'the sidecar outlives the app').toBeGreaterThanOrEqual(3);
      expect(pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(sidecarPreStop + effective.lifecycle.drainTimeoutSeconds + 5);
    });
  }

  for (const ns of overlays) {
    it.skipIf(!hasKubectl)(`overlay ${ns} sets both images (placeholders), and what a user sets there is what the pod runs`, () => {
      const dir = mkdtempSync(join(tmpdir(), `k8s-images-${ns}-`));
      try {
        cpSync(at('examples/kubernetes'), dir, { recursive: true });
        const file = join(dir, 'overlays', ns, 'kustomization.yaml');
        const kustomization = parse(readFileSync(file, 'utf8'));
        expect((kustomization.images as Array<{ name: string }>).map((i) => i.name).sort()).toEqual(['app', 'oidc-sidecar']);
        // What `kustomize edit set image oidc-sidecar=... app=...` writes.
        kustomization.images = [
          { name: 'oidc-sidecar', newName: 'registry.test/oidc-sidecar', newTag: '9.9.9' },
          { name: 'app', newName: `registry.test/${ns}`, newTag: '2.0.0' },
        ];
        writeFileSync(file, stringify(kustomization));
        const docs = parseAllDocuments(execFileSync('kubectl', ['kustomize', join(dir, 'overlays', ns)], { encoding: 'utf8' })).map((d) => d.toJS()) as any[];
        const containers = docs.find((d) => d.kind === 'Deployment').spec.template.spec.containers as Array<{ name: string; image: string }>;
        expect(Object.fromEntries(containers.map((c) => [c.name, c.image]))).toEqual({ app: `registry.test/${ns}:2.0.0`, 'oidc-sidecar': 'registry.test/oidc-sidecar:9.9.9' });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  it('its listeners take IPv6 and IPv4 connections: probes and the Service reach the pod on an IPv6, IPv4 or dual-stack cluster', async () => {
    const r = await runCli(['validate', '--skip-file-checks', '--config', at('config/base.yaml'), '--config', at('config/namespaces/orders.yaml')]);
    expect(r.code).toBe(0);
    const effective = parse(r.stdout);
    const host = (listen: string) => listen.replace(/:\d+$/, '');
    expect([host(effective.inbound.listen), host(effective.admin.listen)]).toEqual(['[::]', '[::]']);
    const sidecar = await startSidecar({
      service: 'dual-stack',
      inbound: {
        listen: `${host(effective.inbound.listen)}:0`,
        target: 'http://127.0.0.1:1',
        audience: 'x',
        issuers: [{ issuer: 'http://127.0.0.1:1', jwksUri: 'http://127.0.0.1:1/jwks' }],
        rules: [{ match: { path: '/healthz', methods: ['GET'] }, public: true }],
      },
      admin: { listen: `${host(effective.admin.listen)}:0` },
    }, { waitReady: false });
    try {
      const status = (url: string) => fetch(url).then((res) => res.status, (err: Error) => String(err.cause ?? err));
      for (const loopback of ['127.0.0.1', '[::1]']) {
        expect(await status(`http://${loopback}:${new URL(sidecar.admin).port}/healthz`), `admin over ${loopback}`).toBe(200);
        // The app behind it is not there: any HTTP answer shows the listener took the connection.
        expect(typeof (await status(`http://${loopback}:${new URL(sidecar.inbound!).port}/healthz`)), `inbound over ${loopback}`).toBe('number');
      }
    } finally {
      await sidecar.stop();
    }
  });

  it.skipIf(!hasKubectl)('cluster/ builds (the issuer discovery binding)', () => {
    const rendered = execFileSync('kubectl', ['kustomize', at('examples/kubernetes/cluster')], { encoding: 'utf8' });
    expect(parse(rendered)).toMatchObject({ kind: 'ClusterRoleBinding', roleRef: { name: 'system:service-account-issuer-discovery' } });
  });
});

describe('ci deploy gate example', () => {
  let idp: TestIdp;
  let deployer: UpstreamApp;
  let sidecar: SidecarProcess | undefined;
  const gate = at('examples/ci-deploy-gate');

  beforeAll(async () => {
    // The dev issuer's GitHub-Actions-shaped clients, with its GitHub token request emulation.
    const github = DEFAULT_DEV_CLIENTS.filter((c) => c.clientId.startsWith('github-')).map((c) => ({
      clientId: c.clientId,
      clientSecret: c.clientSecret!,
      subject: c.subject!,
      extraClaims: c.extraClaims!,
    }));
    // Every name as github-main's, under other ids: acme/app registered again by someone else after a rename.
    const main = github.find((c) => c.clientId === 'github-main')!;
    const recycled = { ...main, clientId: 'github-recycled', clientSecret: 'github-recycled-secret', extraClaims: { ...main.extraClaims, repository_id: '555', repository_owner_id: '666' } };
    idp = await startIdp({ clients: [...github, recycled] });
    deployer = await startUpstream();
  });
  afterAll(async () => {
    await sidecar?.stop();
    await deployer.close();
    await idp.close();
  });
  afterEach(() => {
    deployer.seen.length = 0;
  });

  it('the workflow asks for id-token: write and fetches its token with `oidc-sidecar token` from the github_actions config', () => {
    const wf = parse(readFileSync(join(gate, 'deploy.yml'), 'utf8'));
    expect(wf.permissions['id-token']).toBe('write');
    const job = Object.values(wf.jobs as Record<string, any>)[0];
    expect(job.environment).toBe('production');
    const script = (job.steps as Array<{ run?: string }>).map((s) => s.run ?? '').join('\n');
    expect(script).toMatch(/oidc-sidecar token --config \S*ci-token\.yaml --audience deployer/);
    // Nothing is published as `oidc-sidecar` on the public npm registry: installing that name would fail, or run
    // whatever someone else published under it in a job that can mint deploy tokens. It comes from a tarball.
    expect(script).not.toMatch(/\b(?:npm\s+(?:install|i|add|exec)|npx)\b[^\n]*\soidc-sidecar(?:@|\s|$)/m);
    const install = (job.steps as Array<{ run?: string; env?: Record<string, string> }>).find((s) => /\bnpm\s+install\b/.test(s.run ?? ''));
    expect(install?.env?.OIDC_SIDECAR_TARBALL).toMatch(/^https:\/\/.+\.tgz$/);
    expect(install?.env?.OIDC_SIDECAR_TARBALL_SHA256).toMatch(/^[0-9a-f]{64}$/);
    // The tarball is installed only once its checksum is checked, and only that file: never the URL itself.
    const lines = install!.run!.split('\n');
    const check = lines.findIndex((l) => /sha256sum --check/.test(l) && l.includes('${OIDC_SIDECAR_TARBALL_SHA256}'));
    const npmInstall = lines.findIndex((l) => /\bnpm\s+install\b/.test(l));
    expect(check).toBeGreaterThanOrEqual(0);
    expect(npmInstall).toBeGreaterThan(check);
    expect(lines[npmInstall]).not.toContain('${OIDC_SIDECAR_TARBALL}');
    expect(install!.run).toMatch(/^set -euo pipefail$/m);
    expect(parse(readFileSync(join(gate, 'ci-token.yaml'), 'utf8')).outbound.tokenSource.type).toBe('github_actions');
  });

  async function ciToken(client: 'github-main' | 'github-feature' | 'github-recycled'): Promise<string> {
    const r = await runCli(['token', '--config', join(gate, 'ci-token.yaml'), '--audience', 'deployer'], {
      env: { ACTIONS_ID_TOKEN_REQUEST_URL: `${idp.issuer}/github-actions/token?client=${client}`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: `${client}-secret` },
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return r.stdout.trim();
  }

  it('lets main/production deploy and refuses a feature branch, a GET and no token (the deployer sees only the allowed call)', async () => {
    const cfg = parse(readFileSync(join(gate, 'deployer-sidecar.yaml'), 'utf8'));
    cfg.inbound.listen = '127.0.0.1:0';
    cfg.admin.listen = '127.0.0.1:0';
    sidecar = await startSidecar(cfg, { env: { DEPLOY_GATE_ISSUER: idp.issuer, DEPLOYER_APP_URL: deployer.url } });
    const deploy = (token: string | undefined, method = 'POST') =>
      fetch(`${sidecar!.inbound}/deploy`, { method, headers: token ? { authorization: `Bearer ${token}` } : {}, ...(method === 'POST' ? { body: '{"sha":"abc"}' } : {}) });

    const main = await ciToken('github-main');
    const ok = await deploy(main);
    expect(ok.status).toBe(200);
    expect(deployer.seen).toHaveLength(1);
    expect(deployer.seen[0]!.headers).toMatchObject({ 'x-deploy-repository': 'acme/app', 'x-deploy-ref': 'refs/heads/main', 'x-peer-sub': 'repo:acme/app:environment:production' });
    expect(deployer.seen[0]!.headers.authorization).toBeUndefined();

    const feature = await deploy(await ciToken('github-feature'));
    expect([feature.status, ((await feature.json()) as any).reason]).toEqual([403, 'policy_denied']);
    const recycled = await deploy(await ciToken('github-recycled'));
    expect([recycled.status, ((await recycled.json()) as any).reason]).toEqual([403, 'policy_denied']);
    expect((await deploy(main, 'GET')).status).toBe(403);
    const none = await deploy(undefined);
    expect([none.status, ((await none.json()) as any).reason]).toEqual([401, 'missing_token']);
    expect(deployer.seen).toHaveLength(1);
    expect(sidecar.output()).not.toContain(main);
  });
});

/** Runs examples/docker-compose/app/app.mjs on a free loopback port. */
async function startApp(env: Record<string, string>): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [at('examples/docker-compose/app/app.mjs')], { env: { ...process.env, PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<string>((res, rej) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) res(m[1]!);
    });
    child.once('exit', (code) => rej(new Error(`app exited with ${code}`)));
  });
  return { url: `http://127.0.0.1:${port}`, child };
}

/** How long a container's preStop hook sleeps (`sleep: { seconds }` or `exec: sleep N`); NaN when it has none. */
function preStopSeconds(container: any): number {
  const preStop = container.lifecycle?.preStop;
  return preStop?.sleep?.seconds ?? (preStop?.exec?.command?.[0] === 'sleep' ? Number(preStop.exec.command[1]) : NaN);
}

/** A Kubernetes memory quantity (`96Mi`, `100M`, `1Gi`, plain bytes) in bytes. */
function bytes(quantity: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?$/.exec(quantity);
  if (!m) throw new Error(`unexpected memory quantity ${quantity}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, k: 1e3, M: 1e6, G: 1e9 }[m[2] as string] ?? 1;
  return Number(m[1]) * unit;
}


