/**
 * Incoming side: `listen(uri)` for migrate-incoming / migrate-recover / the
 * `-incoming` option. Socket listeners report their bound address the way
 * query-migrate's `socket-address` shows it; port 0 picks a free port.
 * Errors are QEMU 7.2's texts ("Failed to find an available port: Address
 * already in use", "Failed to bind socket to PATH: No such file or directory").
 */
import { lookup } from 'node:dns/promises';
import { existsSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import net from 'node:net';
import { toChannel, type Channel } from './channel.js';
import { errnoText, socketChannel } from './connect.js';
import { commandDuplex, killGroup, spawnCommand } from './exec.js';
import { takeFd } from './fds.js';
import { parseMigrationUri, TransportError, type SocketAddress } from './uri.js';

/** A source of incoming channels. */
export interface Listener {
  /** The URI it was opened with. */
  readonly uri: string;
  /** Bound addresses for socket transports (QEMU's socket-address), undefined otherwise. */
  readonly socketAddress: SocketAddress[] | undefined;
  /** The next incoming channel (queued if it arrived earlier). */
  accept(signal?: AbortSignal): Promise<Channel>;
  /**
   * Stop listening (queued, unaccepted channels are closed; accepted ones
   * live on). A unix socket file is removed. Resolves once no longer listening.
   */
  close(): Promise<void>;
}

/** Accept queue shared by the listener kinds. */
class Queue {
  private readonly ready: Channel[] = [];
  private readonly waiting: Array<{ resolve: (c: Channel) => void; reject: (e: Error) => void }> = [];
  private closedError: Error | undefined;

  push(c: Channel): void {
    const w = this.waiting.shift();
    if (w) w.resolve(c);
    else if (this.closedError) c.destroy();
    else this.ready.push(c);
  }

  take(signal?: AbortSignal): Promise<Channel> {
    const c = this.ready.shift();
    if (c) return Promise.resolve(c);
    if (this.closedError) return Promise.reject(this.closedError);
    if (signal?.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new TransportError('accept aborted'));
    return new Promise((resolve, reject) => {
      const entry = {
        resolve: (ch: Channel) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(ch);
        },
        reject: (e: Error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal!.reason instanceof Error ? signal!.reason : new TransportError('accept aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  close(err: Error): void {
    this.closedError ??= err;
    for (const w of this.waiting.splice(0)) w.reject(err);
    for (const c of this.ready.splice(0)) c.destroy();
  }
}

function serverListen(server: net.Server, opts: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

function addressOf(server: net.Server): SocketAddress | undefined {
  const addr = server.address();
  if (addr && typeof addr === 'object') {
    return addr.family === 'IPv6'
      ? { port: String(addr.port), ipv6: true, host: addr.address, type: 'inet' }
      : { port: String(addr.port), ipv4: true, host: addr.address, type: 'inet' };
  }
  return typeof addr === 'string' ? { path: addr, type: 'unix' } : undefined;
}

function socketListener(uri: string, servers: net.Server[], kind: 'tcp' | 'unix', unixPath?: string): Listener {
  const queue = new Queue();
  for (const server of servers) {
    server.on('connection', (sock) => {
      const desc = kind === 'tcp' ? `${sock.remoteAddress}:${sock.remotePort}` : unixPath!;
      queue.push(socketChannel(sock, kind, desc));
    });
  }
  return {
    uri,
    socketAddress: servers.map(addressOf).filter((a): a is SocketAddress => a !== undefined),
    accept: (signal) => queue.take(signal),
    close: async () => {
      queue.close(new TransportError('Listener closed'));
      // server.close() stops listening at once (a unix socket file is unlinked
      // with the handle); its callback would wait until every accepted channel
      // has ended too — a migration running on one must not keep close() pending.
      for (const server of servers) if (server.listening) server.close();
      await new Promise<void>((resolve) => setImmediate(resolve));
    },
  };
}

function execListener(uri: string, command: string): Listener {
  const queue = new Queue();
  const child = spawnCommand(command);
  const duplex = commandDuplex(child);
  child.stdin.on('error', () => {});
  child.once('error', (e) => duplex.destroy(new TransportError(`Unable to run command: ${errnoText(e)}`, { cause: e })));
  queue.push(
    toChannel(
      duplex,
      { transport: 'exec', description: uri },
      {
        onShutdown: () => killGroup(child),
      },
    ),
  );
  return {
    uri,
    socketAddress: undefined,
    accept: (signal) => queue.take(signal),
    close: async () => queue.close(new TransportError('Listener closed')),
  };
}

/**
 * Start listening on an incoming URI (tcp, unix; fd and exec yield exactly one channel). `defer` is not a
 * transport: the caller waits for migrate-incoming instead. Rejects with a
 * TransportError worded like QEMU's.
 */
export async function listen(uri: string): Promise<Listener> {
  const u = parseMigrationUri(uri, 'incoming');
  switch (u.kind) {
    case 'tcp': {
      // An empty host listens on every address, like QEMU: one socket for
      // "::" (IPv6 only) and one for "0.0.0.0", each reported (with port 0
      // they get different ports, as in QEMU).
      let hosts = u.host === '' ? ['::', '0.0.0.0'] : [u.host];
      if (u.host !== '' && !net.isIP(u.host)) {
        try {
          hosts = [(await lookup(u.host)).address];
        } catch (e) {
          throw new TransportError(`address resolution failed for ${u.host}:${u.port}: ${errnoText(e)}`, { cause: e });
        }
      }
      const servers: net.Server[] = [];
      try {
        for (const host of hosts) {
          const server = net.createServer({ noDelay: true });
          await serverListen(server, { host, port: u.port, exclusive: true, ipv6Only: host === '::' });
          servers.push(server);
        }
      } catch (e) {
        for (const server of servers) server.close();
        throw new TransportError(`Failed to find an available port: ${errnoText(e)}`, { cause: e });
      }
      return socketListener(uri, servers, 'tcp');
    }
    case 'unix': {
      try {
        unlinkSync(u.path); // QEMU removes a stale socket file before binding
      } catch {
        /* absent */
      }
      const server = net.createServer();
      try {
        await serverListen(server, { path: u.path, exclusive: true });
      } catch (e) {
        // libuv reports a missing directory as EACCES; QEMU (bind(2)) says ENOENT.
        const text = (e as { code?: string }).code === 'EACCES' && !existsSync(dirname(u.path)) ? 'No such file or directory' : errnoText(e);
        throw new TransportError(`Failed to bind socket to ${u.path}: ${text}`, { cause: e });
      }
      return socketListener(uri, [server], 'unix', u.path);
    }
    case 'fd': {
      // As in QEMU, the fd is an already connected stream, not a listening socket.
      const fd = takeFd(u.name, true);
      const queue = new Queue();
      queue.push(socketChannel(new net.Socket({ fd, readable: true, writable: true }), 'fd', uri));
      return {
        uri,
        socketAddress: undefined,
        accept: (signal) => queue.take(signal),
        close: async () => queue.close(new TransportError('Listener closed')),
      };
    }
    case 'exec':
      return execListener(uri, u.command);
    case 'defer':
      throw new TransportError("'defer' is not a transport: wait for migrate-incoming");
  }
}
