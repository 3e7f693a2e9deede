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
  private readonly dv: DataView;

  constructor(buf: Uint8Array, pos = 0, base = 0, end = buf.length) {
    this.buf = buf;
    this.pos = pos;
    this.base = base;
    this.end = end;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
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
    const v = this.dv.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  be32(what = 'be32'): number {
    this.need(4, what);
    const v = this.dv.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  /** be64 as a bigint (exact). */
  be64(what = 'be64'): bigint {
    this.need(8, what);
    const v = this.dv.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }

  /** be64 as a number; throws ProtocolError if it exceeds Number.MAX_SAFE_INTEGER. */
  be64n(what = 'be64'): number {
    this.need(8, what);
    const hi = this.dv.getUint32(this.pos);
    const lo = this.dv.getUint32(this.pos + 4);
    if (hi > 0x1fffff) {
      throw this.error(what, `value 0x${((BigInt(hi) << 32n) | BigInt(lo)).toString(16)} too large`);
    }
    this.pos += 8;
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
