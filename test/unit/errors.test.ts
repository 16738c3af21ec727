import { describe, expect, it } from 'vitest';
import { KeysUnavailableError, PolicyDeniedError, RouteNotFoundError, SidecarError, TokenRejectedError, TokenUnavailableError, UpstreamError } from '../../src/errors.js';
import { BadPathError } from '../../src/inbound/path.js';

const FRAMES = /\n\s+at /;

describe('the stacks of errors', () => {
  const answers: Array<[string, () => Error]> = [
    ['TokenRejectedError', () => new TokenRejectedError('expired', 'token expired')],
    ['PolicyDeniedError', () => new PolicyDeniedError()],
    ['KeysUnavailableError', () => new KeysUnavailableError('https://idp.example', 'no keys')],
    ['BadPathError', () => new BadPathError('path has a "\\\\"')],
    ['RouteNotFoundError', () => new RouteNotFoundError('payments')],
    ['a subclass of one', () => new (class RefusedAgainError extends TokenRejectedError {})('expired', 'token expired')],
  ];

  it.each(answers)('%s, an answer to a caller, captures none, and leaves the stack limit as it was', (_name, make) => {
    const limit = Error.stackTraceLimit;
    const err = make();
    expect(err.stack).not.toMatch(FRAMES);
    expect(err.stack).toMatch(/^\w+Error: /);
    expect(Error.stackTraceLimit).toBe(limit);
  });

  it('a fault keeps its stack', () => {
    for (const err of [new SidecarError('internal_error', 'a fault', 500), new TokenUnavailableError('no token'), new UpstreamError('upstream_reset', 'reset')]) {
      expect(err.stack).toMatch(FRAMES);
    }
  });

  it('where the limit cannot be set (--frozen-intrinsics), an answer is still made, with the stack it then gets', () => {
    const descriptor = Object.getOwnPropertyDescriptor(Error, 'stackTraceLimit')!;
    Object.defineProperty(Error, 'stackTraceLimit', { ...descriptor, writable: false });
    try {
      const err = new TokenRejectedError('expired', 'token expired');
      expect(err).toMatchObject({ code: 'expired', status: 401 });
      expect(err.stack).toMatch(FRAMES);
    } finally {
      Object.defineProperty(Error, 'stackTraceLimit', descriptor);
    }
  });
});
