/**
 * Byte I/O for the engines: a batching big-endian writer over a Node
 * Writable and an async buffered reader over a Node Readable. Both count
 * bytes so statistics can be checked against what really crossed the wire.
 *
 * These are the engine's own thin layer; the wire/ codecs work on buffers,
 * and these feed them.
 */
import type { Readable, Writable } from 'node:stream';
import { PostcopyError, TruncatedError } from '../errors.js';

const DEFAULT_CHUNK = 256 * 1024;

/**
 * Batching writer: appends to a chunk, hands full chunks to the stream
 * without copying and lets the caller await back-pressure at points it
 * chooses (`drain()`), so the sender never blocks per record.
 */
export class ChannelWriter {
  private buf: Uint8Array;
  private view: DataView;
  private pos = 0;
  private error: Error | undefined;
  /** Total bytes accepted so far (queued or written). */
  bytesWritten = 0;

  constructor(
    private readonly out: Writable,
    private readonly chunkSize = DEFAULT_CHUNK,
  ) {
    this.buf = new Uint8Array(chunkSize);
    this.view = new DataView(this.buf.buffer);
    out.on('error', (e: Error) => {
      this.error ??= e;
    });
  }

  /** Throws the stream's error, if any. */
  check(): void {
    if (this.error) throw this.error;
    if (this.out.destroyed || this.out.writableEnded) throw new PostcopyError('IO', 'Channel closed');
  }

  private room(n: number): void {
    if (this.pos + n > this.buf.length) this.push();
    if (n > this.buf.length) {
      this.buf = new Uint8Array(n);
      this.view = new DataView(this.buf.buffer);
    }
  }

  private push(): void {
    if (this.pos === 0) return;
    const chunk = this.buf.subarray(0, this.pos);
    this.buf = new Uint8Array(this.chunkSize);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
    if (!this.out.destroyed && !this.out.writableEnded) this.out.write(chunk);
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
    this.bytesWritten += 1;
  }
  be16(v: number): void {
    this.room(2);
    this.view.setUint16(this.pos, v);
    this.pos += 2;
    this.bytesWritten += 2;
  }
  be32(v: number): void {
    this.room(4);
    this.view.setUint32(this.pos, v >>> 0);
    this.pos += 4;
    this.bytesWritten += 4;
  }
  /** be64 from a non-negative safe integer or a bigint. */
  be64(v: number | bigint): void {
    this.room(8);
    if (typeof v === 'bigint') this.view.setBigUint64(this.pos, v);
    else {
      this.view.setUint32(this.pos, Math.floor(v / 0x100000000));
      this.view.setUint32(this.pos + 4, v >>> 0);
    }
    this.pos += 8;
    this.bytesWritten += 8;
  }
  bytes(b: Uint8Array): void {
    if (b.length > this.chunkSize / 2) {
      this.push();
      if (!this.out.destroyed && !this.out.writableEnded) this.out.write(Uint8Array.from(b));
      this.bytesWritten += b.length;
      return;
    }
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    this.bytesWritten += b.length;
  }
  /** cstr8: u8 length then the bytes (latin1/utf8 as given; idstrs are ASCII). */
  cstr8(s: string): void {
    const b = Buffer.from(s, 'utf8');
    if (b.length > 255) throw new PostcopyError('ARG', `idstr too long: ${s}`);
    this.u8(b.length);
    this.bytes(b);
  }

  /** Reserves n bytes and returns a view to fill before the next call (WireSink). */
  reserve(n: number): Uint8Array {
    this.room(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    this.bytesWritten += n;
    return v;
  }

  /** Hands buffered bytes to the stream and waits while it asks for back-pressure. */
  async drain(): Promise<void> {
    this.check();
    this.push();
    const out = this.out;
    if (out.writableNeedDrain) {
      await new Promise<void>((resolve, reject) => {
        const done = (): void => {
          out.off('drain', done);
          out.off('close', closed);
          out.off('error', fail);
          resolve();
        };
        const closed = (): void => {
          out.off('drain', done);
          out.off('error', fail);
          reject(this.error ?? new PostcopyError('IO', 'Channel closed'));
        };
        const fail = (e: Error): void => {
          out.off('drain', done);
          out.off('close', closed);
          reject(e);
        };
        out.once('drain', done);
        out.once('close', closed);
        out.once('error', fail);
      });
    }
    this.check();
  }
}

/**
 * Async buffered reader. Call `await need(n)` (or `ensure`), then the
 * synchronous accessors. `offset` is the count of bytes consumed.
 */
export class ChannelReader {
  private buf = new Uint8Array(64 * 1024);
  private start = 0;
  private end = 0;
  private ended = false;
  private error: Error | undefined;
  private waiter: (() => void) | undefined;
  /** Bytes consumed so far. */
  offset = 0;
  private paused = false;
  private readonly highWater = 4 * 1024 * 1024;
  /** Optional observer of every incoming chunk (used to capture raw streams). */
  onChunk: ((chunk: Uint8Array) => void) | undefined;

  constructor(private readonly input: Readable) {
    input.on('data', (c: Uint8Array) => this.onData(c));
    input.on('end', () => {
      this.ended = true;
      this.wake();
    });
    input.on('close', () => {
      this.ended = true;
      this.wake();
    });
    input.on('error', (e: Error) => {
      this.error ??= e;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private onData(c: Uint8Array): void {
    this.onChunk?.(c);
    const n = c.length;
    if (this.end + n > this.buf.length) {
      const live = this.end - this.start;
      if (live + n <= this.buf.length && this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const nb = new Uint8Array(Math.max(this.buf.length * 2, live + n));
        nb.set(this.buf.subarray(this.start, this.end));
        this.buf = nb;
      }
      this.start = 0;
      this.end = live;
    }
    this.buf.set(c, this.end);
    this.end += n;
    if (this.end - this.start > this.highWater && !this.paused) {
      this.paused = true;
      this.input.pause();
    }
    this.wake();
  }

  /** Bytes buffered and not yet consumed. */
  get available(): number {
    return this.end - this.start;
  }

  /** True once the input has ended and everything was consumed. */
  get atEnd(): boolean {
    return this.ended && this.available === 0;
  }

  /** Waits until n bytes are buffered; rejects with TruncatedError at end of input. */
  async need(n: number, what = 'stream'): Promise<void> {
    while (this.end - this.start < n) {
      if (this.error) throw this.error;
      if (this.ended) throw new TruncatedError(what, n - (this.end - this.start), this.offset);
      if (this.paused) {
        this.paused = false;
        this.input.resume();
      }
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  /** Waits until at least one more byte arrives or the input ends; false at end. */
  async more(): Promise<boolean> {
    if (this.error) throw this.error;
    if (this.ended) return false;
    if (this.paused) {
      this.paused = false;
      this.input.resume();
    }
    const before = this.end - this.start;
    while (this.end - this.start === before && !this.ended && !this.error) {
      await new Promise<void>((r) => (this.waiter = r));
    }
    if (this.error) throw this.error;
    return this.end - this.start > before;
  }

  private consumed(n: number): void {
    this.start += n;
    this.offset += n;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    if (this.paused && this.end - this.start < this.highWater / 2) {
      this.paused = false;
      this.input.resume();
    }
  }

  u8(): number {
    const v = this.buf[this.start]!;
    this.consumed(1);
    return v;
  }
  be16(): number {
    const b = this.buf;
    const s = this.start;
    const v = (b[s]! << 8) | b[s + 1]!;
    this.consumed(2);
    return v;
  }
  be32(): number {
    const b = this.buf;
    const s = this.start;
    const v = ((b[s]! << 24) | (b[s + 1]! << 16) | (b[s + 2]! << 8) | b[s + 3]!) >>> 0;
    this.consumed(4);
    return v;
  }
  /** be64 as a number; callers use it for offsets and lengths below 2^53. */
  be64(): number {
    const hi = this.be32();
    const lo = this.be32();
    return hi * 0x100000000 + lo;
  }
  /** Peeks at byte i ahead without consuming (must be buffered). */
  peek(i = 0): number {
    return this.buf[this.start + i]!;
  }
  /** Returns a copy of the next n bytes. */
  take(n: number): Uint8Array {
    const out = this.buf.slice(this.start, this.start + n);
    this.consumed(n);
    return out;
  }
  /** Copies the next n bytes into dst at dstOff. */
  copyTo(dst: Uint8Array, dstOff: number, n: number): void {
    dst.set(this.buf.subarray(this.start, this.start + n), dstOff);
    this.consumed(n);
  }
  /** A view (valid until the next read) of the next n bytes, consumed. */
  view(n: number): Uint8Array {
    const v = this.buf.subarray(this.start, this.start + n);
    this.consumed(n);
    return v;
  }
  /** Reads a cstr8 (after need()). Returns undefined when not fully buffered. */
  async cstr8(what = 'idstr'): Promise<string> {
    await this.need(1, what);
    const len = this.peek();
    await this.need(1 + len, what);
    this.consumed(1);
    const s = Buffer.from(this.buf.buffer, this.buf.byteOffset + this.start, len).toString('latin1');
    this.consumed(len);
    return s;
  }
  /** All currently buffered bytes, consumed. */
  drainBuffered(): Uint8Array {
    return this.take(this.available);
  }
}
