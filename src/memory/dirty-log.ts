/**
 * DirtyLog: one shared bitmap per RAM block that the guest workload marks
 * (possibly from a worker thread, with Atomics.or on 32-bit words) and that
 * the migration side fetches-and-clears into its own bitmap (64-bit atomic
 * exchange in WASM). Both agree on little-endian memory: page p is 32-bit
 * word p>>5 bit p&31 = 64-bit word p>>6 bit p&63.
 */
import type { Hotpath } from '../hotpath/hotpath.js';
import { PageBitmap } from './page-bitmap.js';
import type { RamBlock } from './ram-block.js';

export class DirtyLog {
  private readonly hp: Hotpath;
  private readonly logs = new Map<string, PageBitmap>();
  private buf: ArrayBufferLike | undefined;
  private i32: Int32Array = new Int32Array(0);

  /** `offsets`: idstr → byte offset of that block's log words. */
  constructor(hp: Hotpath, blocks: readonly RamBlock[], offsets: ReadonlyMap<string, number>) {
    this.hp = hp;
    for (const b of blocks) {
      const off = offsets.get(b.idstr);
      if (off === undefined) throw new RangeError(`no dirty log offset for block ${b.idstr}`);
      this.logs.set(b.idstr, new PageBitmap(hp, off, b.pages));
    }
  }

  /** The log bitmap of a block (read it; mark through markDirty). */
  logOf(block: RamBlock | string): PageBitmap {
    const id = typeof block === 'string' ? block : block.idstr;
    const log = this.logs.get(id);
    if (!log) throw new RangeError(`Unknown ramblock "${id}"`);
    return log;
  }

  private view(): Int32Array {
    const b = this.hp.memory.buffer;
    if (b !== this.buf) {
      this.buf = b;
      this.i32 = new Int32Array(b);
    }
    return this.i32;
  }

  /** Atomically marks target page `page` of `block` dirty (safe from any thread). */
  markDirty(block: RamBlock | string, page: number): void {
    const log = this.logOf(block);
    if (!Number.isInteger(page) || page < 0 || page >= log.nbits) {
      throw new RangeError(`page ${page} outside block ${typeof block === 'string' ? block : block.idstr} (${log.nbits} pages)`);
    }
    Atomics.or(this.view(), (log.offset >>> 2) + (page >>> 5), 1 << (page & 31));
  }

  /** Marks `count` pages from `page` dirty, atomically word by word. */
  markDirtyRange(block: RamBlock | string, page: number, count: number): void {
    const log = this.logOf(block);
    if (page < 0 || count < 0 || page + count > log.nbits) throw new RangeError(`range outside block`);
    const v = this.view();
    const base = log.offset >>> 2;
    let p = page;
    const end = page + count;
    while (p < end) {
      const bit = p & 31;
      const n = Math.min(32 - bit, end - p);
      const mask = n === 32 ? -1 : ((1 << n) - 1) << bit;
      Atomics.or(v, base + (p >>> 5), mask);
      p += n;
    }
  }

  /**
   * Fetch-and-clear the block's log into `bitmap` (OR). Returns the number of
   * pages that were clear in `bitmap` and are now set (newly dirty).
   */
  syncInto(bitmap: PageBitmap, block: RamBlock | string): number {
    const log = this.logOf(block);
    if (bitmap.nbits !== log.nbits) throw new RangeError(`bitmap has ${bitmap.nbits} pages, block has ${log.nbits}`);
    if (bitmap.hp.memory !== this.hp.memory) throw new RangeError('bitmap lives in a different memory');
    return this.hp.bitmapSyncClear(log.offset, bitmap.offset, log.nwords);
  }
}
