import { createHash } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A small real WebSocket echo server (RFC 6455 handshake and framing, text and
 * close frames only) on 127.0.0.1:0, recording the upgrade requests it saw.
 * Enough to prove a tunnel carries a real WebSocket client end to end.
 */
export interface WsEcho {
  url: string;
  /** Headers of every upgrade request, in order. */
  seen: Array<{ url: string; headers: IncomingHttpHeaders }>;
  /** Server-side sockets of tunnels that are still open. */
  open: Set<Socket>;
  server: Server;
  close(): Promise<void>;
}

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export async function startWsEcho(opts: { refuse?: { status: number; body: string }; ignoreEnd?: boolean } = {}): Promise<WsEcho> {
  const seen: WsEcho['seen'] = [];
  const open = new Set<Socket>();
  const server = createServer((_req, res) => res.writeHead(426, { 'content-type': 'text/plain' }).end('upgrade required'));
  server.on('upgrade', (req, socket: Socket, head: Buffer) => {
    seen.push({ url: req.url!, headers: req.headers });
    if (opts.refuse) {
      socket.end(`HTTP/1.1 ${opts.refuse.status} Refused\r\ncontent-type: text/plain\r\ncontent-length: ${opts.refuse.body.length}\r\nx-app: ws\r\n\r\n${opts.refuse.body}`);
      return;
    }
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${GUID}`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nX-App: ws\r\n\r\n`);
    open.add(socket);
    socket.on('close', () => open.delete(socket));
    socket.on('error', () => {});
    // Like real WebSocket servers: the peer's FIN ends the session (unless told to misbehave).
    if (!opts.ignoreEnd) socket.on('end', () => socket.end());
    let buf = head;
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const frame = parseFrame(buf);
        if (!frame) return;
        buf = buf.subarray(frame.size);
        if (frame.opcode === 0x8) {
          socket.end(encodeFrame(0x8, frame.payload));
          return;
        }
        if (frame.opcode === 0x1) socket.write(encodeFrame(0x1, Buffer.from(`echo:${frame.payload.toString()}`)));
      }
    };
    socket.on('data', onData);
    if (head.length) onData(Buffer.alloc(0));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    open,
    server,
    close: () =>
      new Promise((r) => {
        for (const s of open) s.destroy();
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function parseFrame(buf: Buffer): { opcode: number; payload: Buffer; size: number } | undefined {
  if (buf.length < 2) return undefined;
  const opcode = buf[0]! & 0x0f;
  const masked = (buf[1]! & 0x80) !== 0;
  let len = buf[1]! & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return undefined;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return undefined;
    len = Number(buf.readBigUInt64BE(2));
    off = 10;
  }
  const maskOff = off;
  if (masked) off += 4;
  if (buf.length < off + len) return undefined;
  const payload = Buffer.from(buf.subarray(off, off + len));
  if (masked) for (let i = 0; i < len; i++) payload[i]! ^= buf[maskOff + (i % 4)]!;
  return { opcode, payload, size: off + len };
}

function encodeFrame(opcode: number, payload: Buffer): Buffer {
  const head = payload.length < 126 ? Buffer.from([0x80 | opcode, payload.length]) : Buffer.from([0x80 | opcode, 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([head, payload]);
}
