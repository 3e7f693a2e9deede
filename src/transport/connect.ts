/**
 * Outgoing connections for `migrate`: tcp, unix, fd and exec URIs, each
 * giving a {@link Channel}. Failures carry QEMU 7.2's texts (they become
 * query-migrate's error-desc): "Failed to connect to '127.0.0.1:1':
 * Connection refused", "address resolution failed for h:1: Name or service
 * not known", "File descriptor named 'x' has not been found".
 */
import net from 'node:net';
import { toChannel, type Channel } from './channel.js';
import { commandDuplex, killGroup, spawnCommand } from './exec.js';
import { takeFd } from './fds.js';
import { inetLabel, parseMigrationUri, TransportError, type MigrationUri } from './uri.js';

const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: 'Connection refused',
  ENOENT: 'No such file or directory',
  ETIMEDOUT: 'Connection timed out',
  EHOSTUNREACH: 'No route to host',
  ENETUNREACH: 'Network is unreachable',
  EACCES: 'Permission denied',
  ECONNRESET: 'Connection reset by peer',
  EADDRINUSE: 'Address already in use',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  ENOTSOCK: 'Socket operation on non-socket',
  EPIPE: 'Broken pipe',
  ENOTDIR: 'Not a directory',
  ECONNABORTED: 'Software caused connection abort',
  ENOTFOUND: 'Name or service not known',
  EAI_AGAIN: 'Temporary failure in name resolution',
};

/** The strerror()-like text of a Node system error. */
export function errnoText(e: unknown): string {
  const code = (e as { code?: string }).code;
  if (code && ERRNO_TEXT[code]) return ERRNO_TEXT[code]!;
  return e instanceof Error ? e.message : String(e);
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new TransportError('Connection attempt aborted');
}

/** Make a connected socket a Channel (TCP_NODELAY on: the return path is latency-sensitive). */
export function socketChannel(sock: net.Socket, transport: 'tcp' | 'unix' | 'fd', description: string): Channel {
  if (transport === 'tcp') sock.setNoDelay(true);
  const peer =
    transport === 'tcp'
      ? {
          transport,
          description,
          address: sock.remoteAddress,
          port: sock.remotePort,
          family: sock.remoteFamily === 'IPv6' ? ('IPv6' as const) : ('IPv4' as const),
        }
      : { transport, description };
  return toChannel(sock, peer, { reset: () => sock.resetAndDestroy() });
}

function connectSocket(u: MigrationUri & { kind: 'tcp' | 'unix' }, signal?: AbortSignal): Promise<Channel> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const label = u.kind === 'tcp' ? inetLabel(u.host, u.port) : u.path;
    const sock = u.kind === 'tcp' ? net.connect({ host: u.host || 'localhost', port: u.port }) : net.connect({ path: u.path });
    const onAbort = (): void => {
      sock.destroy();
      reject(abortError(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      signal?.removeEventListener('abort', onAbort);
      if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN' || e.syscall === 'getaddrinfo') {
        reject(new TransportError(`address resolution failed for ${label}: ${errnoText(e)}`, { cause: e }));
      } else {
        reject(new TransportError(`Failed to connect to '${label}': ${errnoText(e)}`, { cause: e }));
      }
    });
    sock.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      sock.removeAllListeners('error');
      resolve(socketChannel(sock, u.kind, u.kind === 'tcp' ? `${sock.remoteAddress}:${sock.remotePort}` : u.path));
    });
  });
}

/**
 * Run `command` with /bin/sh -c (in its own process group); the channel writes to its stdin and reads
 * from its stdout (stderr is inherited). Shutdown kills the child; close()
 * ends stdin and waits for it to exit.
 */
export function execChannel(command: string): Channel {
  const child = spawnCommand(command);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null) resolve();
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
  const duplex = commandDuplex(child);
  child.stdin.on('error', (e: NodeJS.ErrnoException) => {
    duplex.destroy(new TransportError(`Unable to write to command: ${errnoText(e)}`, { cause: e }));
  });
  child.once('error', (e) => duplex.destroy(new TransportError(`Unable to run command: ${errnoText(e)}`, { cause: e })));
  return toChannel(
    duplex,
    { transport: 'exec', description: `exec:${command}` },
    {
      onShutdown: () => killGroup(child),
      onClose: () => exited,
    },
  );
}

/**
 * Open the outgoing channel for a `migrate` URI. Rejects with a
 * TransportError worded like QEMU; `signal` cancels the attempt.
 */
export async function connect(uri: string, signal?: AbortSignal): Promise<Channel> {
  const u = parseMigrationUri(uri, 'outgoing');
  switch (u.kind) {
    case 'tcp':
    case 'unix':
      return connectSocket(u, signal);
    case 'fd': {
      const fd = takeFd(u.name);
      const sock = new net.Socket({ fd, readable: true, writable: true });
      return socketChannel(sock, 'fd', `fd:${u.name}`);
    }
    case 'exec':
      if (signal?.aborted) throw abortError(signal);
      return execChannel(u.command);
    case 'defer':
      throw new TransportError("Parameter 'uri' expects a valid migration protocol");
  }
}
