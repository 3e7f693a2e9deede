/**
 * The RAM page sender (QEMU's ram_find_and_save_block and friends): dirty
 * bitmaps per block, a persistent scan position, the CONTINUE rule, zero
 * pages, XBZRLE with the page cache, and an urgent queue served before the
 * background scan (postcopy page requests will use it).
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { RamRecordEncoder } from '../wire/ram.js';
import type { WireSink } from '../wire/writer.js';
import type { EngineRamBlock, PageBits, PageOps } from '../engine/ports.js';
import { XbzrleCache, type XbzrleCacheStats } from './xbzrle-cache.js';

const TP = TARGET_PAGE_SIZE;

/** Counters of pages sent, by kind. */
export interface RamCounters {
  /** Zero pages sent as ZERO records ("duplicate"). */
  duplicate: number;
  /** Pages sent as PAGE records ("normal"). */
  normal: number;
  /** All pages handled (sent in any form, or skipped as unchanged). */
  targetPageCount: number;
  /** Bytes of page records (headers included). */
  pageBytes: number;
}

/** Index of the next set bit at or after `from`, or -1. */
export function nextSetBit(bits: PageBits, from: number, nbits: number): number {
  if (from >= nbits) return -1;
  let w = from >>> 5;
  let word = bits[w]! & (~0 << (from & 31));
  const nwords = (nbits + 31) >>> 5;
  for (;;) {
    if (word !== 0) {
      const i = (w << 5) + (31 - Math.clz32(word & -word));
      return i < nbits ? i : -1;
    }
    if (++w >= nwords) return -1;
    word = bits[w]!;
  }
}

/** Counts set bits. */
export function popcount(bits: PageBits): number {
  let n = 0;
  for (let i = 0; i < bits.length; i++) {
    let v = bits[i]!;
    v = v - ((v >>> 1) & 0x55555555);
    v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
    n += (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
  }
  return n;
}

/** Page sender state for one outgoing migration. */
export class RamSaver {
  /** One dirty bitmap per block. */
  readonly bitmaps: PageBits[];
  /** Pages per block. */
  readonly pages: number[];
  /** Dirty pages over all blocks. */
  dirtyPages = 0;
  private claimsElsewhere: (() => number) | undefined;
  private claimsSeen = 0;
  /** Scan position. */
  private blockIdx = 0;
  private pageIdx = 0;
  /** Page-record encoder: applies the CONTINUE rule (its last block). */
  readonly enc = new RamRecordEncoder();
  /** True once a whole pass wrapped around (XBZRLE may start). */
  completeRound = false;
  xbzrleEnabled = false;
  /** Pages queued for urgent sending (served first). */
  readonly urgent: { block: number; page: number }[] = [];
  readonly counters: RamCounters = { duplicate: 0, normal: 0, targetPageCount: 0, pageBytes: 0 };
  cache: XbzrleCache | undefined;
  readonly xbzrle = { bytes: 0, pages: 0, cacheMiss: 0, overflow: 0, cacheMissRate: 0, encodingRate: 0 };
  private readonly encoded: Uint8Array;
  private readonly scratch: Uint8Array;
  /** Plain (non-shared), aligned page for copies out of shared memory. */
  private readonly bounce = new Uint8Array(TP);
  /** Bitmap-sync generation (dirty-sync-count), the cache's age. */
  generation = 0;
  /**
   * Postcopy mode: no XBZRLE, and after a requested page the background scan
   * continues from it (QEMU's locality heuristic).
   */
  private postcopy = false;
  /** release-ram in postcopy: a page's memory is zeroed once it is on the wire. */
  releaseAfterSend = false;
  /** Pages zeroed by release-ram. */
  releasedPages = 0;
  /** Urgent queue entries dropped because the page was already sent. */
  urgentSkipped = 0;

  constructor(
    readonly blocks: readonly EngineRamBlock[],
    private readonly ops: PageOps,
    private readonly useXbzrle: boolean,
    cacheSize: number,
  ) {
    this.encoded = ops.alloc(TP);
    this.scratch = ops.alloc(TP);
    this.pages = blocks.map((b) => Math.floor(b.usedLength / TP));
    // Shared memory: in postcopy another thread may claim pages (preempt/urgent/).
    this.bitmaps = this.pages.map((n) => new Uint32Array(new SharedArrayBuffer(((n + 31) >>> 5) * 4)));
    if (useXbzrle) this.cache = new XbzrleCache(cacheSize, ops.alloc);
  }

  /** Marks every page dirty (QEMU's initial bitmap). */
  setAllDirty(): void {
    let total = 0;
    this.bitmaps.forEach((bm, i) => {
      const n = this.pages[i]!;
      bm.fill(0xffffffff);
      if (n & 31) bm[bm.length - 1] = (1 << (n & 31)) - 1;
      total += n;
    });
    this.dirtyPages = total;
  }

  /** Recounts dirtyPages after bits were ORed in from outside. */
  recount(): void {
    let t = 0;
    for (const bm of this.bitmaps) t += popcount(bm);
    this.dirtyPages = t;
    // after the count: a claim in between is then counted twice at most, never missed (see foldClaims)
    this.claimsSeen = this.claimsElsewhere?.() ?? 0;
  }

  /**
   * Another thread claims pages from the bitmaps too (the source's urgent
   * worker): `claimed()` tells how many so far, and dirtyPages follows it.
   */
  shareClaims(claimed: () => number): void {
    this.claimsElsewhere = claimed;
    this.claimsSeen = claimed();
  }

  /** Takes the pages claimed elsewhere off dirtyPages. */
  foldClaims(): void {
    const c = this.claimsElsewhere?.();
    if (c === undefined || c === this.claimsSeen) return;
    this.dirtyPages -= c - this.claimsSeen;
    this.claimsSeen = c;
  }

  /** Replaces the cache with a new empty one (xbzrle-cache-size changed). */
  resizeCache(cacheSize: number): void {
    if (this.useXbzrle) this.cache = new XbzrleCache(cacheSize, this.ops.alloc);
  }

  /** Forgets the last block so the next record carries its idstr. */
  resetLastBlock(): void {
    this.enc.reset();
  }

  /** Enters postcopy mode: XBZRLE off for good, locality after requested pages. */
  enterPostcopy(): void {
    this.postcopy = true;
    this.xbzrleEnabled = false;
  }

  /** True once enterPostcopy() was called. */
  get inPostcopy(): boolean {
    return this.postcopy;
  }

  /** Restarts the background scan at the first page (recovery). */
  resetScan(): void {
    this.blockIdx = 0;
    this.pageIdx = 0;
  }

  /**
   * release-ram: zeroes every page that is clean (already sent and not to be
   * sent again). Returns how many pages were released.
   */
  releaseClean(): number {
    let n = 0;
    this.bitmaps.forEach((bm, b) => {
      const mem = this.blocks[b]!.bytes;
      for (let p = 0; p < this.pages[b]!; p++) {
        if ((bm[p >>> 5]! & (1 << (p & 31))) === 0) {
          mem.fill(0, p * TP, (p + 1) * TP);
          n++;
        }
      }
    });
    this.releasedPages += n;
    return n;
  }

  /** Queues a page to be sent before the background scan. */
  queueUrgent(block: number, page: number): void {
    this.urgent.push({ block, page });
  }

  /**
   * Finds and sends the next dirty page (urgent queue first). Returns the
   * number of pages handled, 0 when a full pass found nothing dirty.
   */
  sendNext(w: WireSink, lastStage: boolean): number {
    this.foldClaims();
    while (this.urgent.length > 0) {
      const u = this.urgent.shift()!;
      if (this.claim(u.block, u.page)) {
        if (this.postcopy) {
          this.blockIdx = u.block;
          this.pageIdx = u.page + 1;
        }
        this.savePage(w, u.block, u.page, lastStage);
        return 1;
      }
      this.urgentSkipped++;
    }
    if (this.dirtyPages <= 0) return 0;
    const nblocks = this.blocks.length;
    for (let visited = 0; visited <= nblocks; visited++) {
      const b = this.blockIdx;
      const p = nextSetBit(this.bitmaps[b]!, this.pageIdx, this.pages[b]!);
      if (p >= 0) {
        this.pageIdx = p + 1;
        // another thread may have claimed it since the scan saw it
        if (!this.claim(b, p)) {
          visited--;
          continue;
        }
        this.savePage(w, b, p, lastStage);
        return 1;
      }
      this.pageIdx = 0;
      this.blockIdx++;
      if (this.blockIdx >= nblocks) {
        this.blockIdx = 0;
        this.completeRound = true;
        if (this.useXbzrle && !this.postcopy) this.xbzrleEnabled = true;
      }
    }
    // A whole pass found nothing: nothing is dirty, whatever the count said.
    this.dirtyPages = 0;
    return 0;
  }

  /** Claims page p of block b: true when it was dirty (an atomic clear, for the urgent worker's sake). */
  claim(b: number, p: number): boolean {
    const m = 1 << (p & 31);
    if ((Atomics.and(this.bitmaps[b]!, p >>> 5, ~m) & m) === 0) return false;
    this.dirtyPages--;
    return true;
  }

  /** Writes one page (ZERO, XBZRLE or PAGE). Returns bytes written. */
  private savePage(w: WireSink, b: number, p: number, lastStage: boolean): number {
    const n = this.savePageBody(w, b, p, lastStage);
    if (this.releaseAfterSend) {
      this.blocks[b]!.bytes.fill(0, p * TP, (p + 1) * TP);
      this.releasedPages++;
    }
    return n;
  }

  private savePageBody(w: WireSink, b: number, p: number, lastStage: boolean): number {
    const block = this.blocks[b]!;
    const off = p * TP;
    const mem = block.bytes;
    const idstr = block.idstr;
    // Bytes of the record header: the offset word, plus the idstr unless CONTINUE.
    const head = this.enc.lastBlock === idstr ? 8 : 9 + Buffer.byteLength(idstr, 'latin1');
    this.counters.targetPageCount++;
    let n: number;
    if (this.ops.isZeroPage(mem, off)) {
      this.enc.zero(w, idstr, off);
      n = head + 1;
      this.counters.duplicate++;
      if (this.xbzrleEnabled && this.cache) this.cache.insertZero(block.ramAddr + off, this.generation);
    } else {
      let src = mem;
      let srcOff = off;
      if (this.xbzrleEnabled && this.cache) {
        const r = this.saveXbzrle(w, block, off, head, lastStage);
        if (r.sent >= 0) {
          this.counters.pageBytes += r.sent;
          return r.sent;
        }
        src = r.src;
        srcOff = r.srcOff;
      }
      let body = src.subarray(srcOff, srcOff + TP);
      if (body.buffer instanceof SharedArrayBuffer) {
        // V8 copies out of a SharedArrayBuffer byte by byte unless source and
        // destination are 8-byte co-aligned, and the batch position rarely is:
        // bounce through an aligned plain page (two fast copies beat one slow).
        this.bounce.set(body);
        body = this.bounce;
      }
      this.enc.page(w, idstr, off, body);
      n = head + TP;
      this.counters.normal++;
    }
    this.counters.pageBytes += n;
    return n;
  }

  /**
   * SPEC §4.3 per-page algorithm. `sent` ≥ 0: handled (bytes written, 0 =
   * unchanged page skipped); -1: send a normal page from src/srcOff.
   */
  private saveXbzrle(
    w: WireSink,
    block: EngineRamBlock,
    off: number,
    head: number,
    lastStage: boolean,
  ): { sent: number; src: Uint8Array; srcOff: number } {
    const cache = this.cache!;
    const addr = block.ramAddr + off;
    const gen = this.generation;
    if (!cache.isCached(addr, gen)) {
      this.xbzrle.cacheMiss++;
      if (!lastStage && cache.insert(addr, block.bytes, off, gen)) {
        return { sent: -1, src: cache.data, srcOff: cache.offsetOf(cache.slotOf(addr)) };
      }
      return { sent: -1, src: block.bytes, srcOff: off };
    }
    const slotOff = cache.offsetOf(cache.slotOf(addr));
    // Snapshot the page so that what is encoded is what the cache keeps.
    this.scratch.set(block.bytes.subarray(off, off + TP));
    const len = this.ops.xbzrleEncode(cache.data, slotOff, this.scratch, 0, this.encoded);
    this.xbzrle.pages++;
    let src: Uint8Array = block.bytes;
    let srcOff = off;
    if (!lastStage && len !== 0) {
      cache.data.set(this.scratch, slotOff);
      src = cache.data;
      srcOff = slotOff;
    }
    if (len === 0) return { sent: 0, src, srcOff };
    if (len < 0) {
      this.xbzrle.overflow++;
      this.xbzrle.bytes += TP;
      return { sent: -1, src, srcOff };
    }
    this.enc.xbzrle(w, block.idstr, off, this.encoded.subarray(0, len));
    const total = head + 3 + len;
    this.xbzrle.bytes += total - 8;
    return { sent: total, src, srcOff };
  }

  /** query-migrate's xbzrle-cache record. */
  xbzrleStats(): XbzrleCacheStats {
    return {
      'cache-size': this.cache?.cacheSize ?? 0,
      bytes: this.xbzrle.bytes,
      pages: this.xbzrle.pages,
      'cache-miss': this.xbzrle.cacheMiss,
      'cache-miss-rate': this.xbzrle.cacheMissRate,
      'encoding-rate': this.xbzrle.encodingRate,
      overflow: this.xbzrle.overflow,
    };
  }
}
