import { describeFailure } from '../cli-failure.js';
import { runScenarios, type ScenarioResult } from './demo-scenarios.js';
import { renderTable } from './demo-table.js';
import { DEPLOY_RULE, startDemoTopology, type DemoTopology } from './demo-topology.js';

export interface DemoOptions {
  /** Leave everything running and print how to curl it, until SIGINT/SIGTERM. */
  keep?: boolean;
  /** Print the results as JSON instead of the table. */
  json?: boolean;
  /** Table width in columns; default 150. */
  width?: number;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Resolves when a --keep demo should stop (default: SIGINT or SIGTERM). */
  untilStopped?: () => Promise<void>;
}

/** JWT-shaped text (a base64url JSON header and payload); none may appear in a log line. */
const JWT_PATTERN = /eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}/;

/**
 * `oidc-sidecar demo`: starts the whole topology on loopback, runs every
 * scenario, prints what happened and returns the exit code: 0 only when every
 * outcome was the expected one and no token leaked into a log line.
 */
export async function runDemo(opts: DemoOptions): Promise<number> {
  const out = (s: string) => opts.stdout.write(`${s}\n`);
  let t: DemoTopology;
  try {
    t = await startDemoTopology();
  } catch (err) {
    opts.stderr.write(`oidc-sidecar: demo could not start: ${describeFailure(err)}\n`);
    return 1;
  }
  try {
    const results = await runScenarios(t);
    const leaked = t.logLines.filter((l) => JWT_PATTERN.test(l)).length;
    const passed = results.filter((r) => r.passed).length;
    const ok = passed === results.length && leaked === 0;
    if (opts.json) {
      out(JSON.stringify({ ok, results, logLines: t.logLines.length, logLinesWithTokens: leaked, urls: t.urls, issuer: t.issuer.issuer }, null, 2));
    } else {
      out(header(t));
      out(renderTable(results, opts.width ?? 150));
      out('');
      out(summary(results, t.logLines.length, leaked));
    }
    if (opts.keep) {
      // With --json, stdout stays one JSON document (its `urls` say where everything listens); the how-to goes to stderr.
      const say = opts.json ? (text: string) => opts.stderr.write(`${text}\n`) : out;
      say('');
      say(keepInstructions(t));
      await (opts.untilStopped ?? untilSignal)();
    }
    return ok ? 0 : 1;
  } finally {
    await t.close();
  }
}

function header(t: DemoTopology): string {
  const u = t.urls;
  return [
    'oidc-sidecar demo: every service on 127.0.0.1, ports picked by the OS',
    '',
    `  dev issuer      ${t.issuer.issuer}   (development only)`,
    `  orders          app ◀── sidecar  inbound ${u.ordersInbound}  outbound ${u.ordersOutbound}  (calls payments)`,
    `  payments        app ◀── sidecar  inbound ${u.paymentsInbound}  (POST /payments/**: only sub=orders)`,
    `  deployer        app ◀── sidecar  inbound ${u.deployerInbound}  (POST /deploy: ${Object.entries(DEPLOY_RULE).map(([k, v]) => `${k}=${v}`).join(', ')})`,
    '',
  ].join('\n');
}

function summary(results: ScenarioResult[], lines: number, leaked: number): string {
  const passed = results.filter((r) => r.passed).length;
  const verdict = passed === results.length ? `All ${passed} outcomes were as expected.` : `${results.length - passed} of ${results.length} outcomes were NOT as expected.`;
  const logs = leaked === 0 ? `No token appeared in any of the ${lines} log lines.` : `${leaked} of ${lines} log lines contain a token!`;
  return `${verdict} ${logs}`;
}

function keepInstructions(t: DemoTopology): string {
  const u = t.urls;
  const ciToken = (client: string) =>
    `$(curl -s -H 'authorization: bearer ${client}-secret' '${t.issuer.issuer}/github-actions/token?client=${client}&audience=deployer' | sed -E 's/.*"value":"([^"]+)".*/\\1/')`;
  const token = (client: string, aud: string) =>
    `$(curl -s -u ${client}:${client}-secret -d grant_type=client_credentials -d audience=${aud} ${t.issuer.tokenEndpoint} | sed -E 's/.*"access_token":"([^"]+)".*/\\1/')`;
  return [
    'Still running (--keep). Try it (demo client secrets are <client>-secret; development only):',
    '',
    `  curl -s ${u.ordersInbound}/checkout                                   # orders -> payments, shows the identity payments saw`,
    `  curl -si -X POST ${u.paymentsInbound}/payments/charge                  # 401 missing_token`,
    `  TOKEN=${token('orders', 'payments')}`,
    `  curl -s -X POST -H "authorization: Bearer $TOKEN" ${u.paymentsInbound}/payments/charge   # 200`,
    `  WRONG=${token('orders', 'orders')}`,
    `  curl -si -X POST -H "authorization: Bearer $WRONG" ${u.paymentsInbound}/payments/charge  # 401 audience_mismatch`,
    `  OTHER=${token('analytics', 'payments')}`,
    `  curl -si -X POST -H "authorization: Bearer $OTHER" ${u.paymentsInbound}/payments/charge  # 403 policy_denied`,
    `  CI=${ciToken('github-main')}`,
    `  curl -s -X POST -H "authorization: Bearer $CI" ${u.deployerInbound}/deploy                 # 200`,
    `  BRANCH=${ciToken('github-feature')}`,
    `  curl -si -X POST -H "authorization: Bearer $BRANCH" ${u.deployerInbound}/deploy            # 403 policy_denied`,
    `  curl -s ${u.paymentsAdmin}/metrics | grep oidc_sidecar_inbound_requests_total    # the payments sidecar's counters`,
    '',
    'Press Ctrl-C to stop and clean up.',
  ].join('\n');
}

function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}
