import { describe, expect, it } from 'vitest';
import { parseMigrationUri } from '../../src/transport/uri.js';
import { registerFd, takeFd } from '../../src/transport/fds.js';

describe('parseMigrationUri', () => {
  it('reads the schemes QEMU spells', () => {
    expect(parseMigrationUri('tcp:127.0.0.1:4444', 'outgoing')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 4444, uri: 'tcp:127.0.0.1:4444' });
    expect(parseMigrationUri('tcp:[::1]:0', 'incoming')).toMatchObject({ kind: 'tcp', host: '::1', port: 0 });
    expect(parseMigrationUri('tcp:localhost:5', 'outgoing')).toMatchObject({ host: 'localhost', port: 5 });
    expect(parseMigrationUri('tcp::4444', 'incoming')).toMatchObject({ host: '', port: 4444 });
    expect(parseMigrationUri('unix:/tmp/a:b', 'outgoing')).toMatchObject({ kind: 'unix', path: '/tmp/a:b' });
    expect(parseMigrationUri('fd:mig', 'outgoing')).toMatchObject({ kind: 'fd', name: 'mig' });
    expect(parseMigrationUri('exec:cat > /dev/null', 'outgoing')).toMatchObject({ kind: 'exec', command: 'cat > /dev/null' });
    expect(parseMigrationUri('defer', 'incoming')).toMatchObject({ kind: 'defer' });
  });

  // Texts captured from qemu-system-x86_64 7.2.22 (migrate / migrate-incoming).
  it('refuses bad URIs with QEMU texts, which differ by direction', () => {
    expect(() => parseMigrationUri('foo:bar', 'outgoing')).toThrow("Parameter 'uri' expects a valid migration protocol");
    expect(() => parseMigrationUri('defer', 'outgoing')).toThrow("Parameter 'uri' expects a valid migration protocol");
    expect(() => parseMigrationUri('foo:x', 'incoming')).toThrow('unknown migration protocol: foo:x');
    expect(() => parseMigrationUri('localhost:0', 'incoming')).toThrow('unknown migration protocol: localhost:0');
    expect(() => parseMigrationUri('tcp:127.0.0.1', 'outgoing')).toThrow("error parsing address '127.0.0.1'");
    expect(() => parseMigrationUri('tcp:127.0.0.1:99999', 'outgoing')).toThrow("error parsing address '127.0.0.1:99999'");
    expect(() => parseMigrationUri('unix:', 'outgoing')).toThrow('invalid Unix socket address');
    expect(() => parseMigrationUri('vsock:1:2', 'outgoing')).toThrow(/not supported by this implementation/);
  });
});

describe('fd registry', () => {
  it('takes a named fd once; outgoing never parses numbers, incoming does', () => {
    registerFd('mig', 7);
    expect(takeFd('mig')).toBe(7);
    expect(() => takeFd('mig')).toThrow("File descriptor named 'mig' has not been found");
    expect(() => takeFd('99')).toThrow("File descriptor named '99' has not been found");
    expect(takeFd('5', true)).toBe(5);
    expect(() => takeFd('5x', true)).toThrow("Invalid file descriptor number '5x'");
  });
});
