import { describe, expect, it } from 'vitest';
import { describeFailure, oneLine } from '../../src/cli-failure.js';
import { ConfigError, ListenError, TokenUnavailableError, UsageError } from '../../src/errors.js';

describe('describeFailure: what a failed command prints after `oidc-sidecar: `, always one line', () => {
  it('gives one config issue as `invalid config: path.to.key: message`', () => {
    expect(describeFailure(new ConfigError([{ path: 'inbound.clockSkew', message: 'unknown key' }]))).toBe('invalid config: inbound.clockSkew: unknown key');
  });

  it('says in words why a listener could not bind, a host name that does not resolve too (not a bare ENOTFOUND)', () => {
    const cause = Object.assign(new Error('getaddrinfo ENOTFOUND sidecar.invalid'), { code: 'ENOTFOUND' });
    expect(describeFailure(new ListenError('admin.listen', 'sidecar.invalid:15020', cause))).toBe('admin.listen: cannot listen on sidecar.invalid:15020: host name not found');
    // A listener the config never named (a second sidecar on one host, both on the default admin port) says so.
    const inUse = Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE' });
    expect(describeFailure(new ListenError('admin.listen', '0.0.0.0:15020', inUse, true))).toBe(
      'admin.listen: cannot listen on 0.0.0.0:15020: address already in use (the default admin.listen; set it to a free address, such as 127.0.0.1:0 for any free port)',
    );
    // Peers are pointed at the inbound listener: any free port would not do there.
    expect(describeFailure(new ListenError('inbound.listen', '0.0.0.0:15006', inUse, true))).toBe(
      'inbound.listen: cannot listen on 0.0.0.0:15006: address already in use (the default inbound.listen; set it to another port)',
    );
  });

  it('counts several issues and joins them with "; "', () => {
    const err = new ConfigError([
      { path: 'a', message: 'x' },
      { path: 'b.0', message: 'y' },
      { path: '', message: 'configure `inbound`, `outbound` or both' },
    ]);
    expect(describeFailure(err)).toBe('invalid config (3 problems): a: x; b.0: y; configure `inbound`, `outbound` or both');
  });

  it('escapes line breaks and other control characters that a config value or a file path brings into an issue', () => {
    const err = new ConfigError([
      { path: 'inbound.issuers.0.caFile', message: 'cannot read /etc/ca\nINJECTED\r\n.pem: no such file' },
      { path: 'service', message: 'bad \u001b[31mred\u001b[0m\u2028next\u0085end\ttab' },
    ]);
    const line = describeFailure(err);
    expect(line).not.toMatch(/[\r\n\u0000-\u001f\u007f-\u009f\u2028\u2029]/);
    expect(line).toBe(
      'invalid config (2 problems): inbound.issuers.0.caFile: cannot read /etc/ca\\nINJECTED\\r\\n.pem: no such file; service: bad \\x1b[31mred\\x1b[0m\\u2028next\\x85end\\ttab',
    );
  });

  it("joins yargs' own multi-line layout and points at --help", () => {
    const err = new UsageError('Invalid values:\n  Argument: alg, Given: "x", Choices: "RS256", "ES256"', true);
    expect(describeFailure(err)).toBe('Invalid values: Argument: alg, Given: "x", Choices: "RS256", "ES256" (see "oidc-sidecar --help")');
    // With the command known, at that command's help, which lists the option.
    expect(describeFailure(new UsageError('Missing required argument: audience', true, 'token'))).toBe('Missing required argument: audience (see "oidc-sidecar token --help")');
  });

  it('makes any other multi-line message one line (an IdP error_description, a code frame)', () => {
    expect(describeFailure(new TokenUnavailableError('token endpoint refused the request (HTTP 400): invalid_request (line one\nline two)'))).toBe(
      'token endpoint refused the request (HTTP 400): invalid_request (line one\\nline two)',
    );
    expect(describeFailure(new Error('Unexpected token at line 3, column 1:\n\n  bad: [\n  ^\n'))).toBe('Unexpected token at line 3, column 1:\\n\\n  bad: [\\n  ^');
    expect(describeFailure('plain\nstring')).toBe('plain\\nstring');
  });

  it('leaves a one-line message, backslashes included, as it is', () => {
    expect(oneLine('cannot read C:\\ca.pem: no such file')).toBe('cannot read C:\\ca.pem: no such file');
  });
});
