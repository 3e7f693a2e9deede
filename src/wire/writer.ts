/**
 * Writers. `WireSink` is what every encoder writes to; `ByteWriter` builds a
 * Uint8Array in memory, `StreamWriter` batches records into large writes on a
 * Node Writable (one write per page is ~5x slower, see LIMITS.md).
 */

import { Socket } from 'node:net';
import type { Writable } from 'node:stream';
import { PostcopyError } from '../errors.js';

const TWO_32 = 0x1_0000_0000;
const TEXT = new TextEncoder();
/** Batch buffers kept for reuse by a StreamWriter. */
const POOL_MAX = 4;

/** Encode a string to bytes (ASCII fast path, UTF-8 otherwise). */
export function stringToBytes(s: string): Uint8Array {
  let ascii = true;
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (!ascii) return TEXT.encode(s);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** Split a be64 value into [hi, lo] 32-bit halves; rejects negatives and unsafe numbers. */
export function be64Parts(v: number | bigint): [number, number] {
  if (typeof v === 'bigint') {
    if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`be64 out of range: ${v}`);
    return [Number(v >> 32n), Number(v & 0xffff_ffffn)];
  }
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`be64 out of range: ${v}`);
  return [Math.floor(v / TWO_32), v >>> 0];
}

/** Something encoders can append big-endian values and bytes to. */
export interface WireSink {
  u8(v: number): void;
  be16(v: number): void;
  be32(v: number): void;
  /** be64 from a non-negative safe integer or a bigint. */
  be64(v: number | bigint): void;
  /** Append (copy) `src`. */
  bytes(src: Uint8Array): void;
  /** Counted string: u8 length then the bytes (max 255). */
  cstr8(s: string): void;
  /** Reserve `n` bytes and return a writable view of them (fill it before the next call). */
  reserve(n: number): Uint8Array;
}

/** Shared implementation over a growable/replaceable buffer. */
abstract class BufferSink implements WireSink {
  protected buf: Uint8Array;
  protected dv: DataView;
  protected pos = 0;

  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Make room for `n` contiguous bytes at `pos`. */
  protected abstract ensure(n: number): void;

  protected setBuf(buf: Uint8Array): void {
    this.buf = buf;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  be16(v: number): void {
    this.ensure(2);
    this.dv.setUint16(this.pos, v);
    this.pos += 2;
  }
  be32(v: number): void {
    this.ensure(4);
    const b = this.buf;
    const p = this.pos;
    b[p] = v >>> 24;
    b[p + 1] = v >>> 16;
    b[p + 2] = v >>> 8;
    b[p + 3] = v;
    this.pos = p + 4;
  }
  be64(v: number | bigint): void {
    const [hi, lo] = be64Parts(v);
    this.ensure(8);
    this.dv.setUint32(this.pos, hi);
    this.dv.setUint32(this.pos + 4, lo);
    this.pos += 8;
  }
  bytes(src: Uint8Array): void {
    this.ensure(src.length);
    this.buf.set(src, this.pos);
    this.pos += src.length;
  }
  cstr8(s: string): void {
    const b = stringToBytes(s);
    if (b.length > 255) throw new RangeError(`counted string longer than 255 bytes: ${s.slice(0, 40)}...`);
    this.ensure(1 + b.length);
    this.buf[this.pos] = b.length;
    this.buf.set(b, this.pos + 1);
    this.pos += 1 + b.length;
  }
  reserve(n: number): Uint8Array {
    this.ensure(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
}

/**
 * Builds bytes in memory. Grows as needed, or writes into a caller-supplied
 * buffer (`fixed: true` → throws RangeError instead of growing).
 */
export class ByteWriter extends BufferSink {
  private readonly fixed: boolean;

  constructor(initial: number | Uint8Array = 256, opts: { fixed?: boolean } = {}) {
    super(typeof initial === 'number' ? new Uint8Array(Math.max(16, initial)) : initial);
    this.fixed = opts.fixed ?? false;
  }

  /** Bytes written so far. */
  get length(): number {
    return this.pos;
  }

  protected ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    if (this.fixed) throw new RangeError(`ByteWriter: buffer full (${this.buf.length} bytes)`);
    let cap = this.buf.length * 2;
    while (cap < this.pos + n) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.buf.subarray(0, this.pos));
    this.setBuf(nb);
  }

  /** A view of the bytes written so far (valid until the next write or reset). */
  view(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }

  /** A copy of the bytes written so far. */
  toBytes(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  /** Forget the contents, keep the buffer. */
  reset(): void {
    this.pos = 0;
  }
}

/** Encode with a fresh ByteWriter and return the bytes. */
export function encodeToBytes(fn: (w: WireSink) => void, sizeHint = 64): Uint8Array {
  const w = new ByteWriter(sizeHint);
  fn(w);
  return w.view();
}

/** Options of StreamWriter. */
export interface StreamWriterOptions {
  /** Size of one batch (one underlying write), default 256 KiB. */
  batchSize?: number;
  /**
   * Reuse a batch buffer once its write callback has run. Safe only when the
   * stream is done with a chunk by then (sockets: the kernel has it); NOT for
   * streams that keep chunks, such as PassThrough pairs. Default: true for a
   * net.Socket, false otherwise.
   */
  recycle?: boolean;
}

/**
 * Batches encoded records into large writes on a Node Writable.
 * Encoders append synchronously; a full batch is handed to `out.write()` and a
 * fresh one started. Call `flush()` where QEMU flushes (after commands, at the
 * end of a section), and `await w.drain()` (when it returns a promise) to honour
 * backpressure. `transferred` counts every byte accepted.
 */
export class StreamWriter extends BufferSink {
  /** Bytes accepted (encoded) so far, including those still batched. */
  transferred = 0;
  /** Number of `write()` calls made on the underlying stream. */
  writeCalls = 0;
  private readonly batchSize: number;
  private readonly out: Writable;
  private blocked = false;
  private failure: Error | undefined;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private readonly pool: Uint8Array[] = [];
  /** Batches handed to the stream whose write callback has not run yet. */
  private inflight = 0;
  private readonly recycle: boolean;

  constructor(out: Writable, opts: StreamWriterOptions = {}) {
    const size = opts.batchSize ?? 256 * 1024;
    super(Buffer.allocUnsafeSlow(size));
    this.batchSize = size;
    this.out = out;
    this.recycle = opts.recycle ?? out instanceof Socket;
    out.on('drain', () => {
      this.blocked = false;
      if (!this.needsDrain) this.wake();
    });
    const fail = (e?: Error): void => {
      this.failure ??= e ?? new PostcopyError('IO', 'stream closed while writing');
      this.wake();
    };
    out.on('error', fail);
    out.on('close', () => {
      if (this.blocked) fail();
    });
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      if (this.failure) w.reject(this.failure);
      else w.resolve();
    }
  }

  /** Bytes batched but not yet handed to the stream. */
  get pending(): number {
    return this.pos;
  }

  /**
   * True when the stream is over its high-water mark, or (when recycling)
   * POOL_MAX batches are still in flight: waiting lets their buffers be reused
   * rather than allocating fresh memory for every batch. Await drain().
   */
  get needsDrain(): boolean {
    return this.blocked || this.inflight >= POOL_MAX;
  }

  protected ensure(n: number): void {
    if (this.failure) throw this.failure;
    this.transferred += n;
    if (this.pos + n <= this.buf.length) return;
    this.push();
    if (n > this.buf.length) {
      // Only reserve() can ask for more than a batch: give it a one-off buffer.
      this.setBuf(new Uint8Array(n));
    }
  }

  /** Copy `src` through the batch buffer, in batch-sized pieces if large. */
  override bytes(src: Uint8Array): void {
    if (this.failure) throw this.failure;
    let off = 0;
    while (off < src.length) {
      let room = this.buf.length - this.pos;
      if (room === 0) {
        this.push();
        room = this.buf.length;
      }
      const n = Math.min(room, src.length - off);
      this.buf.set(src.subarray(off, off + n), this.pos);
      this.pos += n;
      off += n;
    }
    this.transferred += src.length;
  }

  /** Hand the current batch to the stream (no waiting). */
  push(): void {
    if (this.pos === 0) return;
    const full = this.buf;
    const chunk = full.subarray(0, this.pos);
    const size = this.batchSize;
    this.setBuf(this.pool.pop() ?? Buffer.allocUnsafeSlow(size));
    this.pos = 0;
    this.writeCalls++;
    let ok: boolean;
    if (this.recycle) {
      // The socket calls back once the kernel has the bytes: reuse the buffer.
      this.inflight++;
      ok = this.out.write(chunk, (err) => {
        this.inflight--;
        if (!err && full.length === size && this.pool.length < POOL_MAX) this.pool.push(full);
        if (!this.needsDrain) this.wake();
      });
    } else {
      ok = this.out.write(chunk);
    }
    if (!ok) this.blocked = true;
  }

  /**
   * Throws if writing can no longer succeed: the stream failed (its error),
   * or it was destroyed or ended (PostcopyError IO "Channel closed").
   */
  check(): void {
    if (this.failure) throw this.failure;
    if (this.out.destroyed || this.out.writableEnded) throw new PostcopyError('IO', 'Channel closed');
  }

  /** A promise to await when the stream wants us to wait; undefined otherwise. */
  drain(): Promise<void> | undefined {
    if (this.failure) return Promise.reject(this.failure);
    if (!this.needsDrain) return undefined;
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Push the batch and wait for backpressure to clear. */
  async flush(): Promise<void> {
    this.push();
    await this.drain();
  }

  /** Flush and end the underlying stream, waiting until it has finished. */
  async end(): Promise<void> {
    await this.flush();
    await new Promise<void>((resolve, reject) => {
      this.out.end((err?: Error | null) => (err ? reject(err) : resolve()));
    });
  }
}
