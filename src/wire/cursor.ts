/**
 * ByteCursor: a read position over one Uint8Array, with big-endian readers.
 * Pure and synchronous; running out of bytes throws TruncatedError, and
 * records how many bytes (from byte 0 of the buffer) would have been enough
 * in `wanted`, so a stream reader can fetch exactly that much and retry.
 */

import { ProtocolError, TruncatedError } from '../errors.js';

const TEXT = new TextDecoder('utf-8', { fatal: false });
const TWO_32 = 0x1_0000_0000;

/** Decode bytes as text (UTF-8; QEMU's idstrs are ASCII in practice). */
export function bytesToString(b: Uint8Array): string {
  // Fast path for short ASCII strings (idstrs), avoiding TextDecoder overhead.
  if (b.length <= 64) {
    let s = '';
    for (let i = 0; i < b.length; i++) {
      const ch = b[i]!;
      if (ch >= 0x80) return TEXT.decode(b);
      s += String.fromCharCode(ch);
    }
    return s;
  }
  return TEXT.decode(b);
}

/**
 * Thrown instead of a TruncatedError by cursors in `lazy` mode (used by
 * StreamReader, which retries after more data arrives): building a real Error
 * with a stack trace at every chunk boundary is far too slow on the hot path.
 * The details are left on the cursor (`truncation()`).
 */
export const NEED_MORE: unique symbol = Symbol('NEED_MORE');

/** A read cursor over `buf[start..end)`; `base` is the stream offset of `buf[0]`. */
export class ByteCursor {
  /** The underlying bytes. */
  readonly buf: Uint8Array;
  /** Index in `buf` of the next byte to read. */
  pos: number;
  /** Stream offset of `buf[0]` (used in error offsets). */
  readonly base: number;
  /** Index one past the last readable byte. */
  readonly end: number;
  /** After a TruncatedError: the `buf` index up to which bytes were needed. */
  wanted = 0;
  /** Lazy mode: throw NEED_MORE rather than a TruncatedError (see NEED_MORE). */
  lazy = false;
  private truncWhat = '';
  private truncPos = 0;

  constructor(buf: Uint8Array, pos = 0, base = 0, end = buf.length) {
    this.buf = buf;
    this.pos = pos;
    this.base = base;
    this.end = end;
  }

  /** The TruncatedError for the last shortfall (after NEED_MORE in lazy mode). */
  truncation(): TruncatedError {
    return new TruncatedError(this.truncWhat, this.wanted - this.end, this.base + this.truncPos);
  }

  /** Stream offset of the next byte. */
  get offset(): number {
    return this.base + this.pos;
  }

  /** Bytes left before `end`. */
  get remaining(): number {
    return this.end - this.pos;
  }

  /** Throw TruncatedError unless `n` more bytes are available. */
  need(n: number, what: string): void {
    if (this.end - this.pos < n) {
      this.wanted = this.pos + n;
      this.truncWhat = what;
      this.truncPos = this.pos;
      if (this.lazy) throw NEED_MORE;
      throw new TruncatedError(what, this.pos + n - this.end, this.base + this.pos);
    }
  }

  /** A ProtocolError at stream offset `base + at` (default: current position). */
  error(what: string, message: string, at = this.pos): ProtocolError {
    return new ProtocolError(what, message, this.base + at);
  }

  /** Next byte without consuming it. */
  peekU8(what = 'u8'): number {
    this.need(1, what);
    return this.buf[this.pos]!;
  }

  u8(what = 'u8'): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  be16(what = 'be16'): number {
    this.need(2, what);
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 2;
    return (b[p]! << 8) | b[p + 1]!;
  }

  be32(what = 'be32'): number {
    this.need(4, what);
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 4;
    return b[p]! * 0x1000000 + ((b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!);
  }

  /** be64 as a bigint (exact). */
  be64(what = 'be64'): bigint {
    this.need(8, what);
    const hi = this.be32();
    const lo = this.be32();
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** be64 as a number; throws ProtocolError if it exceeds Number.MAX_SAFE_INTEGER. */
  be64n(what = 'be64'): number {
    this.need(8, what);
    const at = this.pos;
    const hi = this.be32();
    const lo = this.be32();
    if (hi > 0x1fffff) {
      throw this.error(what, `value 0x${((BigInt(hi) << 32n) | BigInt(lo)).toString(16)} too large`, at);
    }
    return hi * TWO_32 + lo;
  }

  /** The next `n` bytes as a view (no copy). */
  bytes(n: number, what = 'bytes'): Uint8Array {
    this.need(n, what);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** Skip `n` bytes. */
  skip(n: number, what = 'bytes'): void {
    this.need(n, what);
    this.pos += n;
  }

  /** A counted string: u8 length L, then L bytes (no NUL). */
  cstr8(what = 'cstr8'): string {
    this.need(1, what);
    const len = this.buf[this.pos]!;
    this.need(1 + len, what);
    const s = bytesToString(this.buf.subarray(this.pos + 1, this.pos + 1 + len));
    this.pos += 1 + len;
    return s;
  }
}
