/**
 * Migration URIs as QEMU 7.2 spells them: `tcp:HOST:PORT` (IPv4, `[v6]`,
 * hostnames, empty host = any), `unix:PATH`, `fd:NAME`, `exec:CMD` and, for
 * incoming only, `defer`. Error texts are QEMU's (captured from
 * qemu-system-x86_64 7.2.22).
 */
import { PostcopyError } from '../errors.js';

/** A transport failure or a bad URI; the message is QEMU's wording where QEMU has one. */
export class TransportError extends PostcopyError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TRANSPORT', message, options);
  }
}

/** A parsed migration URI. */
export type MigrationUri =
  | { kind: 'tcp'; host: string; port: number; uri: string }
  | { kind: 'unix'; path: string; uri: string }
  | { kind: 'fd'; name: string; uri: string }
  | { kind: 'exec'; command: string; uri: string }
  | { kind: 'defer'; uri: string };

/**
 * One listening address as QEMU reports it in query-migrate
 * `socket-address` (SocketAddress): port is a string; `ipv4`/`ipv6` flag
 * the family.
 */
export type SocketAddress =
  | { port: string; ipv4: true; host: string; type: 'inet' }
  | { port: string; ipv6: true; host: string; type: 'inet' }
  | { path: string; type: 'unix' };

/** Which way the URI is used: QEMU's errors differ. */
export type UriDirection = 'outgoing' | 'incoming';

function badProtocol(uri: string, dir: UriDirection): TransportError {
  return new TransportError(
    dir === 'outgoing' ? "Parameter 'uri' expects a valid migration protocol" : `unknown migration protocol: ${uri}`,
  );
}

/** Parse `HOST:PORT` (HOST may be `[v6]` or empty). */
function parseInet(rest: string): { host: string; port: number } | undefined {
  let host: string;
  let portStr: string;
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end < 0 || rest[end + 1] !== ':') return undefined;
    host = rest.slice(1, end);
    portStr = rest.slice(end + 2);
  } else {
    const colon = rest.indexOf(':');
    if (colon < 0) return undefined;
    host = rest.slice(0, colon);
    portStr = rest.slice(colon + 1);
  }
  const comma = portStr.indexOf(',');
  if (comma >= 0) portStr = portStr.slice(0, comma); // QEMU options (ipv4=on, ...) are ignored here
  if (!/^[0-9]{1,5}$/.test(portStr) || Number(portStr) > 65535) return undefined;
  return { host, port: Number(portStr) };
}

/**
 * Parse a migration URI. Outgoing refuses `defer` and unknown schemes with
 * "Parameter 'uri' expects a valid migration protocol"; incoming says
 * "unknown migration protocol: URI". Schemes QEMU knows but we do not
 * implement (vsock, rdma) are refused with a clear message.
 */
export function parseMigrationUri(uri: string, dir: UriDirection): MigrationUri {
  if (uri === 'defer') {
    if (dir === 'incoming') return { kind: 'defer', uri };
    throw badProtocol(uri, dir);
  }
  const colon = uri.indexOf(':');
  const scheme = colon < 0 ? '' : uri.slice(0, colon);
  const rest = colon < 0 ? '' : uri.slice(colon + 1);
  switch (scheme) {
    case 'tcp': {
      const inet = parseInet(rest);
      if (!inet) throw new TransportError(`error parsing address '${rest}'`);
      return { kind: 'tcp', ...inet, uri };
    }
    case 'unix':
      if (rest === '') throw new TransportError('invalid Unix socket address');
      return { kind: 'unix', path: rest, uri };
    case 'fd':
      if (rest === '') throw new TransportError("File descriptor named '' has not been found");
      return { kind: 'fd', name: rest, uri };
    case 'exec':
      return { kind: 'exec', command: rest, uri };
    case 'vsock':
    case 'rdma':
      throw new TransportError(`Migration protocol '${scheme}' is not supported by this implementation`);
    default:
      throw badProtocol(uri, dir);
  }
}

/** How QEMU prints an inet address in errors: `host:port`, IPv6 without brackets. */
export function inetLabel(host: string, port: number): string {
  return `${host}:${port}`;
}
