import { startApp, type RunningApp } from '../app.js';
import { createMetrics } from '../admin/metrics.js';
import { parseConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { DEFAULT_DEV_CLIENTS } from './clients-file.js';
import { startDemoApp, type DemoApp } from './demo-apps.js';
import { startDevIssuer, type RunningDevIssuer } from './issuer.js';

/** Everything the demo runs, all on 127.0.0.1 with ports the OS picked. */
export interface DemoTopology {
  issuer: RunningDevIssuer;
  apps: { orders: DemoApp; payments: DemoApp; deployer: DemoApp };
  sidecars: { orders: RunningApp; payments: RunningApp; deployer: RunningApp };
  /** `http://127.0.0.1:PORT` of each sidecar listener. */
  urls: {
    ordersInbound: string;
    ordersOutbound: string;
    ordersAdmin: string;
    paymentsInbound: string;
    paymentsAdmin: string;
    deployerInbound: string;
    deployerAdmin: string;
  };
  /** Every log line the sidecars wrote (JSON), kept in memory instead of on the terminal. */
  logLines: string[];
  close(): Promise<void>;
}

/** The rule of the deployer: what a deploy token must carry (GitHub Actions claims). */
export const DEPLOY_RULE = { repository: 'acme/app', ref: 'refs/heads/main', environment: 'production' } as const;

const quiet = { drainTimeoutSeconds: 1, watchConfig: false };

/**
 * Starts the dev issuer, the three demo apps and one sidecar per app (in this
 * process, through the same startApp() the `run` command uses), and waits
 * until every sidecar is ready. On failure, whatever started is stopped.
 */
export async function startDemoTopology(opts: { readyTimeoutMs?: number } = {}): Promise<DemoTopology> {
  const logLines: string[] = [];
  const sink = { write: (line: string) => void logLines.push(line) };
  const closers: Array<() => Promise<void>> = [];
  const close = async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
  };
  try {
    const issuer = await startDevIssuer({
      clients: DEFAULT_DEV_CLIENTS,
      logger: createLogger({ level: 'info', service: 'dev-issuer', destination: sink }),
    });
    closers.push(() => issuer.close());
    const trust = [{ issuer: issuer.issuer }];

    const start = async (service: string, doc: Record<string, unknown>) => {
      const config = parseConfig({ service, admin: { listen: '127.0.0.1:0' }, lifecycle: quiet, ...doc });
      const app = await startApp(config, {
        logger: createLogger({ level: 'info', service, destination: sink }),
        metrics: createMetrics({ service, processMetrics: false }),
      });
      closers.push(() => app.shutdown());
      return app;
    };

    const paymentsApp = await startDemoApp('payments');
    closers.push(() => paymentsApp.close());
    const payments = await start('payments', {
      inbound: {
        listen: '127.0.0.1:0',
        target: paymentsApp.url,
        audience: 'payments',
        issuers: trust,
        rules: [
          { match: { path: '/healthz', methods: ['GET'] }, public: true },
          { match: { path: '/payments/**', methods: ['GET', 'POST'] }, allow: [{ sub: 'orders' }] },
        ],
      },
    });
    const paymentsInbound = url(payments.addresses.inbound);

    let ordersOutbound: string | undefined;
    const ordersApp = await startDemoApp('orders', { peer: { url: 'http://payments/payments/charge', outboundProxy: () => ordersOutbound } });
    closers.push(() => ordersApp.close());
    const orders = await start('orders', {
      inbound: {
        listen: '127.0.0.1:0',
        target: ordersApp.url,
        audience: 'orders',
        issuers: trust,
        rules: [
          { match: { path: '/healthz', methods: ['GET'] }, public: true },
          // The demo's entry point: open, so one request shows the whole chain.
          { match: { path: '/checkout', methods: ['GET', 'POST'] }, public: true },
        ],
      },
      outbound: {
        listen: '127.0.0.1:0',
        tokenSource: { type: 'client_credentials', issuer: issuer.issuer, clientId: 'orders', clientSecret: 'orders-secret' },
        routes: [{ host: 'payments', target: paymentsInbound, audience: 'payments' }],
      },
    });
    ordersOutbound = url(orders.addresses.outbound);

    const deployerApp = await startDemoApp('deployer');
    closers.push(() => deployerApp.close());
    const deployer = await start('deployer', {
      inbound: {
        listen: '127.0.0.1:0',
        target: deployerApp.url,
        audience: 'deployer',
        issuers: trust,
        rules: [{ match: { path: '/deploy', methods: ['POST'] }, allow: [{ claims: { ...DEPLOY_RULE } }] }],
        forward: { claimHeaders: { 'x-deploy-ref': 'ref' } },
      },
    });

    await waitReady([orders, payments, deployer], opts.readyTimeoutMs ?? 15_000);
    return {
      issuer,
      apps: { orders: ordersApp, payments: paymentsApp, deployer: deployerApp },
      sidecars: { orders, payments, deployer },
      urls: {
        ordersInbound: url(orders.addresses.inbound),
        ordersOutbound,
        ordersAdmin: url(orders.addresses.admin),
        paymentsInbound,
        paymentsAdmin: url(payments.addresses.admin),
        deployerInbound: url(deployer.addresses.inbound),
        deployerAdmin: url(deployer.addresses.admin),
      },
      logLines,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

function url(address: string | undefined): string {
  if (!address) throw new Error('a demo sidecar listener has no address');
  return `http://${address}`;
}

async function waitReady(apps: RunningApp[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!apps.every((a) => a.isReady())) {
    if (Date.now() > deadline) throw new Error(`the demo sidecars were not ready after ${timeoutMs} ms (issuer keys or tokens missing)`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
