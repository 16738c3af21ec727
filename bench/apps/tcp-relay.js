// The floor of a hop: a byte relay (node:net, one upstream connection per client connection, piped both ways) with
// no HTTP parsing at all. What one more process and one more loopback connection cost on this machine, before any
// proxy logic: the benchmark subtracts it to show what the HTTP proxying itself adds.
// Usage: node bench/apps/tcp-relay.js <target-port>   (prints {"listening": port} on stdout)
import { connect, createServer } from 'node:net';

const targetPort = Number(process.argv[2]);
const server = createServer((client) => {
  const upstream = connect(targetPort, '127.0.0.1');
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  client.pipe(upstream);
  upstream.pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
