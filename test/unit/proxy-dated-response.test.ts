import { createServer, request, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DatedResponse } from '../../src/proxy/dated-response.js';
import { sendError } from '../../src/proxy/respond.js';

// A real server with the listeners' response class, and a real client reading what went on the wire.
const servers: ReturnType<typeof createServer>[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

async function answer(handle: (res: ServerResponse) => void): Promise<{ status: number; headers: IncomingHttpHeaders; raw: string[] }> {
  const server = createServer({ ServerResponse: DatedResponse }, (_req, res) => handle(res));
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return new Promise((resolve, reject) => {
    request({ port, host: '127.0.0.1', agent: false }, (res) => {
      res.resume().on('end', () => resolve({ status: res.statusCode!, headers: res.headers, raw: res.rawHeaders }));
    })
      .on('error', reject)
      .end();
  });
}

const IMF_FIXDATE = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$/;
const names = (raw: string[]) => raw.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());

describe('DatedResponse: the Date header written by the sidecar, not by Node', () => {
  it('adds one Date to each form of writeHead and to implicit headers, and keeps one that was given, in any letter case', async () => {
    const forms: Array<(res: ServerResponse) => void> = [
      (res) => res.writeHead(200, { 'x-a': '1' }).end(),
      (res) => res.writeHead(200, 'Fine', { 'x-a': '1' }).end(),
      (res) => res.writeHead(200, ['x-a', '1']).end(),
      (res) => res.writeHead(200, [['x-a', '1']] as unknown as string[]).end(),
      (res) => res.writeHead(204).end(),
      (res) => res.setHeader('x-a', '1') && res.end('body'),
    ];
    for (const form of forms) {
      const { headers, raw } = await answer(form);
      expect(headers.date).toMatch(IMF_FIXDATE);
      expect(names(raw).filter((n) => n === 'date')).toHaveLength(1);
    }
    for (const given of [{ DATE: 'Wed, 21 Oct 2015 07:28:00 GMT' }, ['Date', 'Wed, 21 Oct 2015 07:28:00 GMT']]) {
      const { headers, raw } = await answer((res) => res.writeHead(200, given).end());
      expect(headers.date).toBe('Wed, 21 Oct 2015 07:28:00 GMT');
      expect(names(raw).filter((n) => n === 'date')).toHaveLength(1);
    }
  });

  it('keeps every value of a name a raw header array repeats', async () => {
    // Merged in through setHeader (Node 20), only the last Set-Cookie went out.
    const { headers } = await answer((res) => res.writeHead(200, ['Set-Cookie', 'a=1', 'Set-Cookie', 'b=2']).end());
    expect(headers['set-cookie']).toEqual(['a=1', 'b=2']);
  });

  it('leaves no header of a writeHead that failed on the answer sent instead', async () => {
    // forward() catches a header Node refuses and answers 502: that answer must not carry the upstream's other headers.
    const { status, headers } = await answer((res) => {
      expect(() => res.writeHead(200, { 'set-cookie': 'session=upstream', 'x-bad': 'a\nb' })).toThrow();
      sendError(res, 502, 'upstream_bad_response', 'bad header');
    });
    expect(status).toBe(502);
    expect(headers['set-cookie']).toBeUndefined();
    expect(headers.date).toMatch(IMF_FIXDATE);
  });
});
