/**
 * The source's XBZRLE page cache with QEMU's semantics (SPEC §4.3):
 * direct-mapped by global RAM offset, age = bitmap-sync generation, an
 * insert refuses to evict a different page used within the last two
 * generations. The page copies live in memory from `alloc` (the hot path's
 * shared memory in production).
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';

const TP = TARGET_PAGE_SIZE;
/** QEMU's CACHED_PAGE_LIFETIME. */
export const CACHED_PAGE_LIFETIME = 2;

/** Direct-mapped page cache. */
export class XbzrleCache {
  /** Number of slots (a power of two). */
  readonly slots: number;
  /** slots × 4096 bytes of page copies. */
  readonly data: Uint8Array;
  private readonly addrs: Float64Array;
  private readonly ages: Float64Array;

  /** `cacheSize` bytes (power of two ≥ 4096, as xbzrle-cache-size). */
  constructor(
    readonly cacheSize: number,
    alloc: (bytes: number) => Uint8Array = (n) => new Uint8Array(n),
  ) {
    const slots = Math.floor(cacheSize / TP);
    if (slots < 1 || (slots & (slots - 1)) !== 0) {
      throw new RangeError("Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size");
    }
    this.slots = slots;
    this.data = alloc(slots * TP);
    this.addrs = new Float64Array(slots).fill(-1);
    this.ages = new Float64Array(slots);
  }

  /** Slot index of the page at global RAM address `ramAddr`. */
  slotOf(ramAddr: number): number {
    return Math.floor(ramAddr / TP) & (this.slots - 1);
  }

  /** Byte offset of a slot's page copy in `data`. */
  offsetOf(slot: number): number {
    return slot * TP;
  }

  /** True if `ramAddr` is cached; a hit refreshes the slot's age. */
  isCached(ramAddr: number, generation: number): boolean {
    const s = this.slotOf(ramAddr);
    if (this.addrs[s] !== ramAddr) return false;
    this.ages[s] = generation;
    return true;
  }

  /**
   * Inserts a copy of src[srcOff..+4096] for `ramAddr`. Fails (returns false,
   * slot untouched) when the slot holds another page aged within
   * CACHED_PAGE_LIFETIME generations.
   */
  insert(ramAddr: number, src: Uint8Array, srcOff: number, generation: number): boolean {
    const s = this.slotOf(ramAddr);
    const cur = this.addrs[s]!;
    if (cur !== -1 && cur !== ramAddr && this.ages[s]! + CACHED_PAGE_LIFETIME > generation) return false;
    this.data.set(src.subarray(srcOff, srcOff + TP), s * TP);
    this.addrs[s] = ramAddr;
    this.ages[s] = generation;
    return true;
  }

  /** Inserts an all-zero page (a ZERO record was sent). */
  insertZero(ramAddr: number, generation: number): boolean {
    const s = this.slotOf(ramAddr);
    const cur = this.addrs[s]!;
    if (cur !== -1 && cur !== ramAddr && this.ages[s]! + CACHED_PAGE_LIFETIME > generation) return false;
    this.data.fill(0, s * TP, s * TP + TP);
    this.addrs[s] = ramAddr;
    this.ages[s] = generation;
    return true;
  }
}

export type { XbzrleCacheStats } from '../control/info.js';
