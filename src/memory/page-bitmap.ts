/**
 * PageBitmap: one bit per target page, stored as 64-bit little-endian words
 * in the hot path's shared memory, so the WASM bitmap ops work on it in place.
 * Padding bits beyond `nbits` are always 0.
 */
import { ProtocolError } from '../errors.js';
import type { Hotpath } from '../hotpath/hotpath.js';

/** Largest batch of {@link PageBitmap.collect}. */
const COLLECT_BATCH = 4096;

/** A maximal run of set bits. */
export interface BitRun {
  start: number;
  length: number;
}

export class PageBitmap {
  /** The hot path whose memory holds the words. */
  readonly hp: Hotpath;
  /** Byte offset of the first word in wasm memory (8-aligned). */
  readonly offset: number;
  /** Number of bits (pages). */
  readonly nbits: number;
  private buf: ArrayBufferLike | undefined;
  private w32: Uint32Array = new Uint32Array(0);
  private outOff = -1;

  constructor(hp: Hotpath, offset: number, nbits: number) {
    if (!Number.isInteger(nbits) || nbits < 0 || nbits > 0x7fffffff) throw new RangeError(`bad bitmap size ${nbits}`);
    if (offset % 8 !== 0) throw new RangeError(`bitmap offset ${offset} is not 8-aligned`);
    this.hp = hp;
    this.offset = offset;
    this.nbits = nbits;
  }

  /** Allocates a zeroed bitmap of nbits in hp's memory. */
  static create(hp: Hotpath, nbits: number): PageBitmap {
    const bm = new PageBitmap(hp, hp.alloc(PageBitmap.byteLength(nbits), 64), nbits);
    bm.clearAll();
    return bm;
  }

  /** Bytes the words take: S = round_up(ceil(nbits / 8), 8) (SPEC §5.6). */
  static byteLength(nbits: number): number {
    return Math.ceil(nbits / 64) * 8;
  }

  /** Number of 64-bit words. */
  get nwords(): number {
    return Math.ceil(this.nbits / 64);
  }

  /** Size of the RECV_BITMAP payload for this bitmap (S). */
  get leByteLength(): number {
    return PageBitmap.byteLength(this.nbits);
  }

  /** Uint32 view of the words (refreshed after the memory grows). */
  words32(): Uint32Array {
    const b = this.hp.memory.buffer;
    if (b !== this.buf) {
      this.buf = b;
      this.w32 = new Uint32Array(b, this.offset, this.nwords * 2);
    }
    return this.w32;
  }

  private check(page: number): void {
    if (!Number.isInteger(page) || page < 0 || page >= this.nbits) {
      throw new RangeError(`page ${page} outside bitmap of ${this.nbits} pages`);
    }
  }

  private checkRange(start: number, length: number): void {
    if (!Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 0 || start + length > this.nbits) {
      throw new RangeError(`range [${start}, +${length}) outside bitmap of ${this.nbits} pages`);
    }
  }

  /** Sets bit `page`. */
  set(page: number): void {
    this.check(page);
    const w = this.words32();
    w[page >>> 5] = w[page >>> 5]! | (1 << (page & 31));
  }

  /** Clears bit `page`. */
  clear(page: number): void {
    this.check(page);
    const w = this.words32();
    w[page >>> 5] = w[page >>> 5]! & ~(1 << (page & 31));
  }

  /** Whether bit `page` is set. */
  test(page: number): boolean {
    this.check(page);
    return ((this.words32()[page >>> 5]! >>> (page & 31)) & 1) === 1;
  }

  /** Sets `length` bits from `start` (like QEMU's bitmap_set(map, start, nr)). */
  setRange(start: number, length: number): void {
    this.checkRange(start, length);
    this.hp.bitmapSetRange(this.offset, start, start + length);
  }

  /** Clears `length` bits from `start`. */
  clearRange(start: number, length: number): void {
    this.checkRange(start, length);
    this.hp.bitmapClearRange(this.offset, start, start + length);
  }

  /** Sets every bit (padding stays 0). */
  setAll(): void {
    this.hp.bitmapSetRange(this.offset, 0, this.nbits);
  }

  /** Clears every bit. */
  clearAll(): void {
    this.hp.bytes().fill(0, this.offset, this.offset + this.leByteLength);
  }

  /** Set bits in [start, end) (default: all). */
  count(start = 0, end = this.nbits): number {
    return this.hp.bitmapCount(this.offset, Math.max(0, start), Math.min(end, this.nbits));
  }

  /** First set bit >= from, or nbits if none (QEMU's find_next_bit convention). */
  findNext(from = 0): number {
    return this.hp.bitmapFindNext(this.offset, this.nbits, from);
  }

  /** First clear bit >= from, or nbits if none. */
  findNextZero(from = 0): number {
    return this.hp.bitmapFindNextZero(this.offset, this.nbits, from);
  }

  /**
   * Up to `max` (<= 4096) set-bit indexes >= from, in order, as a new array
   * (one WASM call per batch; the batch area is allocated on first use).
   * An empty array means there are no more.
   */
  collect(from = 0, max = COLLECT_BATCH): Uint32Array {
    if (max > COLLECT_BATCH || max < 1) throw new RangeError(`collect: max ${max} outside 1..${COLLECT_BATCH}`);
    if (this.outOff < 0) this.outOff = this.hp.alloc(COLLECT_BATCH * 4, 64);
    const n = this.hp.bitmapCollect(this.offset, this.nbits, from, this.outOff, max);
    return new Uint32Array(this.hp.memory.buffer, this.outOff, n).slice();
  }

  /** Calls fn(page) for every set bit >= from, in order (batched through WASM). */
  forEachSet(fn: (page: number) => void, from = 0): void {
    for (;;) {
      const batch = this.collect(from);
      for (let i = 0; i < batch.length; i++) fn(batch[i]!);
      if (batch.length < COLLECT_BATCH) return;
      from = batch[batch.length - 1]! + 1;
    }
  }

  /** The next maximal run of set bits starting at or after `from` (postcopy discard ranges). */
  nextRun(from = 0): BitRun | null {
    const start = this.findNext(from);
    if (start >= this.nbits) return null;
    return { start, length: this.findNextZero(start) - start };
  }

  /**
   * this[b] = NOT other[b] for b in [start, end) (default: all bits):
   * "not received → must send". Bits outside the range are unchanged.
   */
  invertFrom(other: PageBitmap, start = 0, end = this.nbits): void {
    if (other.nbits !== this.nbits) throw new RangeError(`bitmap sizes differ (${other.nbits} vs ${this.nbits})`);
    if (other.hp.memory !== this.hp.memory) throw new RangeError('bitmaps live in different memories');
    this.checkRange(start, end - start);
    this.hp.bitmapComplementRange(other.offset, this.offset, start, end);
  }

  /** Copies another bitmap of the same size (same memory) into this one. */
  copyFrom(other: PageBitmap): void {
    if (other.nbits !== this.nbits) throw new RangeError(`bitmap sizes differ (${other.nbits} vs ${this.nbits})`);
    this.hp.bitmapCopyMasked(other.offset, this.offset, this.nbits);
  }

  /** The RECV_BITMAP payload: S bytes, LE 64-bit words, page p = byte p/8 bit p%8, padding 0. */
  toLeBytes(): Uint8Array {
    return this.hp.bytes().slice(this.offset, this.offset + this.leByteLength);
  }

  /**
   * Loads a RECV_BITMAP payload. Its length must be exactly S (QEMU fails
   * with "bitmap size mismatch" otherwise). Padding bits are cleared.
   */
  fromLeBytes(bytes: Uint8Array): void {
    if (bytes.length !== this.leByteLength) {
      throw new ProtocolError(
        'RECV_BITMAP',
        `bitmap size mismatch: got ${bytes.length} bytes, expected ${this.leByteLength} for ${this.nbits} pages`,
        0,
      );
    }
    this.hp.bytes().set(bytes, this.offset);
    this.hp.bitmapCopyMasked(this.offset, this.offset, this.nbits);
  }
}
