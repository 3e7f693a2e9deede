/**
 * Hotpath: one shared WebAssembly.Memory per VM plus an instance of the
 * AssemblyScript module on it. The only TypeScript that knows the layout.
 *
 * Layout: a small allocator header sits just above the module's static data;
 * `alloc` bumps a shared pointer kept in that header (atomically, so a worker
 * that attached to the same memory can allocate too) and grows the memory on
 * demand. Regions are never freed.
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { instantiate, WASM_MAX_PAGES, WASM_PAGE, type HotpathExports } from './wasm.js';

const HEADER_MAGIC = 0x50434850; // "PCHP"
const HEADER_BYTES = 64;
/** Highest usable end offset: keep top representable as a u32. */
const MAX_TOP = 0xffffffff;

/** Options of {@link Hotpath.create}. */
export interface HotpathOptions {
  /** An existing shared memory (e.g. received by a worker); a new one is made if absent. */
  memory?: WebAssembly.Memory;
  /** Initial size in bytes of a new memory (rounded up to 64 KiB). Default 1 MiB. */
  initialBytes?: number;
  /** Maximum size in bytes of a new memory (rounded up to 64 KiB). Default 4 GiB. */
  maximumBytes?: number;
}

/** Negative results of {@link Hotpath.xbzrleDecodeAt}, with QEMU-like descriptions. */
export const XBZRLE_DECODE_ERRORS: Readonly<Record<number, string>> = {
  [-1]: 'fewer than 2 bytes left where a zero run starts',
  [-2]: 'zero-run length is not a 14-bit ULEB128',
  [-3]: 'zero-run length 0 after the first tuple',
  [-4]: 'zero run goes past the end of the page',
  [-5]: 'fewer than 2 bytes left where a non-zero run starts',
  [-6]: 'non-zero-run length is not a 14-bit ULEB128',
  [-7]: 'non-zero-run length 0',
  [-8]: 'non-zero run goes past the end of the page',
  [-9]: 'non-zero run goes past the end of the encoded data',
};

export class Hotpath {
  /** The shared memory (its buffer is a SharedArrayBuffer). */
  readonly memory: WebAssembly.Memory;
  /** Raw module exports (byte offsets); prefer the typed methods. */
  readonly wasm: HotpathExports;
  private readonly headerOff: number;
  private u8: Uint8Array;

  private constructor(memory: WebAssembly.Memory) {
    this.memory = memory;
    this.wasm = instantiate(memory);
    this.headerOff = align(this.wasm.heapBase(), 64);
    this.u8 = new Uint8Array(memory.buffer);
    const h = this.header();
    if (Atomics.compareExchange(h, 0, 0, HEADER_MAGIC) === 0) {
      Atomics.store(h, 1, this.headerOff + HEADER_BYTES);
    } else if (Atomics.load(h, 0) !== HEADER_MAGIC) {
      throw new Error('memory was not laid out by Hotpath (allocator header missing)');
    }
  }

  /**
   * Creates a hot path on a new shared memory, or attaches to `opts.memory`
   * (a memory made by another Hotpath, possibly in another thread).
   */
  static create(opts: HotpathOptions = {}): Hotpath {
    let memory = opts.memory;
    if (!memory) {
      const initial = Math.max(1, Math.ceil((opts.initialBytes ?? 1 << 20) / WASM_PAGE));
      const maximum = Math.min(WASM_MAX_PAGES, Math.ceil((opts.maximumBytes ?? 2 ** 32) / WASM_PAGE));
      if (initial > maximum) throw new RangeError(`initialBytes exceeds maximumBytes`);
      memory = new WebAssembly.Memory({ initial, maximum, shared: true });
    }
    if (!(memory.buffer instanceof SharedArrayBuffer)) {
      throw new TypeError('Hotpath needs a shared WebAssembly.Memory (shared: true)');
    }
    return new Hotpath(memory);
  }

  private header(): Int32Array {
    return new Int32Array(this.memory.buffer, this.headerOff, 2);
  }

  /** A fresh Uint8Array over the whole memory (refreshed after a grow). */
  bytes(): Uint8Array {
    if (this.u8.byteLength !== this.memory.buffer.byteLength) this.u8 = new Uint8Array(this.memory.buffer);
    return this.u8;
  }

  /** Bytes of memory in use by allocations so far (the bump pointer). */
  get top(): number {
    return Atomics.load(this.header(), 1) >>> 0;
  }

  /**
   * Reserves `size` bytes aligned to `align` (a power of two) and returns the
   * byte offset. Grows the memory when needed. Contents are zero on a fresh
   * memory. Safe to call from several threads sharing the memory.
   */
  alloc(size: number, alignment = TARGET_PAGE_SIZE): number {
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`alloc: bad size ${size}`);
    if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
      throw new RangeError(`alloc: alignment ${alignment} is not a power of two`);
    }
    const h = this.header();
    for (;;) {
      const cur = Atomics.load(h, 1) >>> 0;
      const start = align(cur, alignment);
      const end = start + size;
      if (end > MAX_TOP) throw new RangeError(`alloc: ${size} bytes do not fit in a 4 GiB wasm32 memory`);
      if (Atomics.compareExchange(h, 1, cur | 0, end | 0) >>> 0 === cur) {
        this.ensure(end);
        return start;
      }
    }
  }

  /** Grows the memory so that [0, end) is addressable. */
  ensure(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const pages = Math.ceil((end - have) / WASM_PAGE);
    try {
      this.memory.grow(pages);
    } catch (e) {
      // another thread may have grown it meanwhile
      if (this.memory.buffer.byteLength < end) {
        throw new RangeError(`cannot grow wasm memory to ${end} bytes`, { cause: e });
      }
    }
  }

  // ------------------------------------------------------------ XBZRLE / zero

  /** True if the 4 KiB page at `off` is all zero (SIMD). */
  isZeroPageAt(off: number, len = TARGET_PAGE_SIZE): boolean {
    return this.wasm.isZeroSimd(off, len) !== 0;
  }

  /** Scalar twin of {@link isZeroPageAt} (for tests and benchmarks). */
  isZeroPageScalarAt(off: number, len = TARGET_PAGE_SIZE): boolean {
    return this.wasm.isZeroScalar(off, len) !== 0;
  }

  /**
   * XBZRLE-encodes the page at newOff against the page at oldOff into outOff
   * (needs `dlen` bytes of room, 4096 by default). Returns the encoded length,
   * 0 if unchanged, -1 if it would not fit (QEMU's exact overflow rule).
   */
  xbzrleEncodeAt(oldOff: number, newOff: number, outOff: number, pageSize = TARGET_PAGE_SIZE, dlen = pageSize): number {
    return this.wasm.xbzrleEncodeSimd(oldOff, newOff, pageSize, outOff, dlen);
  }

  /** Scalar twin of {@link xbzrleEncodeAt}; same output. */
  xbzrleEncodeScalarAt(oldOff: number, newOff: number, outOff: number, pageSize = TARGET_PAGE_SIZE, dlen = pageSize): number {
    return this.wasm.xbzrleEncodeScalar(oldOff, newOff, pageSize, outOff, dlen);
  }

  /**
   * Applies `len` encoded bytes at srcOff onto the page at dstOff. Returns the
   * end of the last changed run, or a negative code (see XBZRLE_DECODE_ERRORS;
   * the input position is {@link lastDecodeErrorPos}). Never writes outside
   * the page.
   */
  xbzrleDecodeAt(srcOff: number, len: number, dstOff: number, pageSize = TARGET_PAGE_SIZE): number {
    return this.wasm.xbzrleDecode(srcOff, len, dstOff, pageSize);
  }

  /** Position in the encoded input of the last decode error. */
  lastDecodeErrorPos(): number {
    return this.wasm.decodeErrorPos();
  }

  // ---------------------------------------------------------------- bitmaps
  // `bm` is the byte offset of an 8-aligned array of ceil(nbits/64) u64 words.

  /** Fetch-and-clear `log` into `bm` (nwords words); returns newly set bits in bm. */
  bitmapSyncClear(logOff: number, bmOff: number, nwords: number): number {
    return this.wasm.bitmapSyncClear(logOff, bmOff, nwords);
  }
  /** First set bit >= from, or nbits. */
  bitmapFindNext(bmOff: number, nbits: number, from: number): number {
    return this.wasm.bitmapFindNext(bmOff, nbits, from);
  }
  /** First clear bit >= from, or nbits. */
  bitmapFindNextZero(bmOff: number, nbits: number, from: number): number {
    return this.wasm.bitmapFindNextZero(bmOff, nbits, from);
  }
  /** Writes up to `max` set-bit indexes >= from as u32 at outOff; returns the count. */
  bitmapCollect(bmOff: number, nbits: number, from: number, outOff: number, max: number): number {
    return this.wasm.bitmapCollect(bmOff, nbits, from, outOff, max);
  }
  /** Set bits in [start, end). */
  bitmapCount(bmOff: number, start: number, end: number): number {
    return this.wasm.bitmapCount(bmOff, start, end);
  }
  /** Sets bits [start, end). */
  bitmapSetRange(bmOff: number, start: number, end: number): void {
    this.wasm.bitmapFillRange(bmOff, start, end, 1);
  }
  /** Clears bits [start, end). */
  bitmapClearRange(bmOff: number, start: number, end: number): void {
    this.wasm.bitmapFillRange(bmOff, start, end, 0);
  }
  /** dst[b] = !src[b] for b in [start, end); other bits of dst unchanged. */
  bitmapComplementRange(srcOff: number, dstOff: number, start: number, end: number): void {
    this.wasm.bitmapComplementRange(srcOff, dstOff, start, end);
  }
  /** Copies ceil(nbits/64) words src → dst and zeroes dst's padding bits. */
  bitmapCopyMasked(srcOff: number, dstOff: number, nbits: number): void {
    this.wasm.bitmapCopyMasked(srcOff, dstOff, nbits);
  }
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
