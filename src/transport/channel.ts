/**
 * Channel: a Node Duplex (the real socket or pipe pair, no extra copy layer)
 * with the controls migration needs: `shutdown()` forces an error on local
 * reads and writes and ends the connection, like QEMU's qemu_file_shutdown
 * (what migrate-pause uses); `close()` ends it gracefully; `peer` says what
 * is on the other side.
 */
import { Duplex } from 'node:stream';
import { PostcopyError } from '../errors.js';

/** Who is on the other side of a channel. */
export interface PeerInfo {
  transport: 'tcp' | 'unix' | 'fd' | 'exec' | 'memory';
  /** Human-readable: "127.0.0.1:5701", "/tmp/sock", "fd:name", "exec:cmd", "memory". */
  description: string;
  /** tcp: the peer's address and port, and family. */
  address?: string;
  port?: number;
  family?: 'IPv4' | 'IPv6';
}

/** The error local I/O sees after {@link ChannelControl.shutdown}. */
export class ChannelShutdownError extends PostcopyError {
  constructor(reason = 'Channel shut down') {
    super('SHUTDOWN', reason);
  }
}

/** Options of {@link ChannelControl.shutdown}. */
export interface ShutdownOptions {
  /** Message of the local error (default "Channel shut down"). */
  reason?: string;
  /** Make the peer see a reset (an error) rather than an end of stream. */
  reset?: boolean;
}

/** What a channel adds to the Duplex. */
export interface ChannelControl {
  /** The other side. */
  readonly peer: PeerInfo;
  /** True once shutdown() has been called. */
  readonly isShutdown: boolean;
  /**
   * Force a failure now: pending and later reads and writes fail with a
   * {@link ChannelShutdownError}; the peer sees the connection end (EOF, or
   * a reset with `reset: true`). Idempotent.
   */
  shutdown(opts?: ShutdownOptions): void;
  /** End gracefully: flush, half-close, then release; resolves when closed. */
  close(): Promise<void>;
}

/** A migration channel. */
export type Channel = Duplex & ChannelControl;

/**
 * Turn a Duplex into a Channel in place. `hooks.reset` implements the
 * reset flavour of shutdown (e.g. socket.resetAndDestroy); `hooks.onShutdown`
 * runs extra cleanup (e.g. killing an exec child).
 *
 * A no-op 'error' listener is attached so a shutdown never becomes an
 * uncaught exception; consumers still receive the 'error' event.
 */
export function toChannel<T extends Duplex>(
  stream: T,
  peer: PeerInfo,
  hooks: { reset?: () => void; onShutdown?: () => void; onClose?: () => Promise<void> } = {},
): T & ChannelControl {
  let shut = false;
  stream.on('error', () => {});
  const control: ChannelControl = {
    peer,
    get isShutdown() {
      return shut;
    },
    shutdown(opts: ShutdownOptions = {}) {
      if (shut) return;
      shut = true;
      const err = new ChannelShutdownError(opts.reason);
      if (opts.reset && hooks.reset) hooks.reset();
      hooks.onShutdown?.();
      stream.destroy(err);
    },
    async close() {
      if (stream.destroyed) return;
      await new Promise<void>((resolve) => {
        stream.once('close', () => resolve());
        if (!stream.writableEnded) stream.end();
        // A readable side nobody drains would keep the stream open: release it
        // once our side is flushed.
        stream.once('finish', () => setImmediate(() => stream.destroy()));
      });
      await hooks.onClose?.();
    },
  };
  return Object.defineProperties(stream, Object.getOwnPropertyDescriptors(control)) as T & ChannelControl;
}

class MemoryEnd extends Duplex {
  other!: MemoryEnd;
  /** Our peer's write callback, held while our read buffer is full. */
  heldWrite: (() => void) | undefined;

  constructor(highWaterMark: number) {
    super({ highWaterMark, allowHalfOpen: true });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    const p = this.other;
    if (p.destroyed || p.readableEnded) {
      cb(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
      return;
    }
    if (p.push(chunk)) cb();
    else p.heldWrite = () => cb();
  }

  override _read(): void {
    const held = this.heldWrite;
    this.heldWrite = undefined;
    held?.();
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (!this.other.destroyed) this.other.push(null);
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    const p = this.other;
    // The peer sees end of stream, as after a TCP FIN.
    if (!p.destroyed && !p.readableEnded) p.push(null);
    const held = this.heldWrite;
    this.heldWrite = undefined;
    held?.();
    cb(err);
  }
}

/**
 * Two connected in-memory channels (for tests): what one writes the other
 * reads, with back-pressure (`highWaterMark` bytes buffered per direction),
 * half-close on end(), and the same shutdown semantics as sockets.
 */
export function memoryChannelPair(highWaterMark = 1 << 20): [Channel, Channel] {
  const a = new MemoryEnd(highWaterMark);
  const b = new MemoryEnd(highWaterMark);
  a.other = b;
  b.other = a;
  const peer: PeerInfo = { transport: 'memory', description: 'memory' };
  const reset = (other: MemoryEnd) => () => {
    if (!other.destroyed) other.destroy(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
  };
  return [toChannel(a, peer, { reset: reset(b) }), toChannel(b, { ...peer }, { reset: reset(a) })];
}
