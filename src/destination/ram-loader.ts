/**
 * The destination's "ram" section loader (SPEC §3): setup payload, page
 * records (ZERO, PAGE, XBZRLE), the CONTINUE rule, offset checks and the
 * received bitmap. Error texts are QEMU's.
 */
import { setImmediate as yieldNow } from 'node:timers/promises';
import { ProtocolError } from '../errors.js';
import { ENCODING_FLAG_XBZRLE, RamFlag, TARGET_PAGE_SIZE } from '../wire/constants.js';
import type { ChannelReader } from '../engine/bytes.js';
import type { EngineRamBlock, PageBits, PageOps } from '../engine/ports.js';
import { testBit } from './faults.js';
import { adviseHugePages } from '../memory/huge-pages.js';

const TP = TARGET_PAGE_SIZE;
/** Longest synchronous stretch of page loading before yielding, ms (precopy). */
const YIELD_EVERY_MS = 8;
/** In postcopy: return-path writes and fault resolutions must not wait longer. */
const POSTCOPY_YIELD_EVERY_MS = 1;
const TWO_32 = 0x100000000;

/** Creates a block when the destination adopts the source's RAM layout. */
export type BlockAllocator = (idstr: string, usedLength: number, ramAddr: number) => EngineRamBlock;

/** Default allocator: zeroed shared memory (a worker may place pages in it), advised for huge pages. */
export const plainBlockAllocator: BlockAllocator = (idstr, usedLength, ramAddr) => {
  const bytes = new Uint8Array(new SharedArrayBuffer(usedLength));
  adviseHugePages(bytes);
  return { idstr, usedLength, ramAddr, bytes, zeroed: true };
};

/** Incoming RAM state of one migration. */
export class RamLoader {
  /** Blocks, in the local (or adopted) order. */
  blocks: EngineRamBlock[];
  /** Received bitmap per block idstr (one bit per 4 KiB page). */
  readonly received = new Map<string, PageBits>();
  private lastBlock: EngineRamBlock | undefined;
  private byName = new Map<string, EngineRamBlock>();
  /** Pages received, by kind. */
  readonly counters = { zero: 0, normal: 0, xbzrle: 0 };
  private readonly xbuf: Uint8Array;
  /** Plain (non-shared), aligned page for copies into shared memory. */
  private readonly bounce = new Uint8Array(TP);
  private slice = performance.now();
  /**
   * Postcopy path (postcopy state LISTENING/RUNNING, SPEC §6.3): no XBZRLE, a
   * page is placed only once (a second copy is QEMU's EEXIST), bits are set
   * atomically after the bytes, and the loader yields every ~1 ms.
   */
  postcopy = false;
  /** Longest synchronous stretch in postcopy, ms (a preempt channel's pages are placed only when the loader yields). */
  postcopyYieldMs = POSTCOPY_YIELD_EVERY_MS;
  /** Called after a page's bytes are in place and its received bit is set. */
  onPlaced: ((idstr: string, page: number) => void) | undefined;

  constructor(
    blocks: readonly EngineRamBlock[],
    private readonly ops: PageOps,
    private readonly adopt: BlockAllocator | undefined,
    private readonly newBitmap: (pages: number, idstr: string) => PageBits = (pages) => new Uint32Array(new SharedArrayBuffer(((pages + 31) >>> 5) * 4)),
  ) {
    this.xbuf = ops.alloc(TP);
    this.blocks = [...blocks];
    for (const b of blocks) this.index(b);
  }

  private index(b: EngineRamBlock): void {
    this.byName.set(b.idstr, b);
    this.received.set(b.idstr, this.newBitmap(Math.floor(b.usedLength / TP), b.idstr));
  }

  private fail(message: string, at: number): never {
    throw new ProtocolError('ram', message, at);
  }

  /** Loads one RAM section payload up to and including its EOS. */
  async load(r: ChannelReader): Promise<void> {
    let n = 0;
    for (;;) {
      // Never starve the event loop while buffered data lasts.
      if (this.postcopy ? (++n & 3) === 0 && performance.now() - this.slice > this.postcopyYieldMs : (++n & 255) === 0 && performance.now() - this.slice > YIELD_EVERY_MS) {
        await yieldNow();
        this.slice = performance.now();
      }
      if (r.available < 8) await r.need(8, 'ram record');
      const at = r.offset;
      const hi = r.be32();
      const lo = r.be32();
      const flags = lo & 0xfff;
      const addr = hi * TWO_32 + (lo - flags);
      const kind = flags & ~RamFlag.CONTINUE;
      if (this.postcopy && kind !== RamFlag.EOS && kind !== RamFlag.PAGE && kind !== RamFlag.ZERO) {
        this.fail(`Unknown combination of migration flags: 0x${flags.toString(16)} (postcopy mode)`, at);
      }
      switch (kind) {
        case RamFlag.EOS:
          return;
        case RamFlag.MEM_SIZE:
          await this.loadSetup(r, addr, at);
          break;
        case RamFlag.PAGE:
          // Fast path, no promise: a CONTINUE page whose body is already buffered.
          if (!this.postcopy && flags & RamFlag.CONTINUE && this.lastBlock && r.available >= TP && addr + TP <= this.lastBlock.usedLength) {
            this.readPage(r, this.lastBlock.bytes, addr);
            this.counters.normal++;
            this.markReceived(this.lastBlock, addr);
            break;
          }
          await this.loadPage(r, kind, flags, addr, at);
          break;
        case RamFlag.ZERO:
        case RamFlag.XBZRLE:
          await this.loadPage(r, kind, flags, addr, at);
          break;
        case RamFlag.COMPRESS_PAGE:
          this.fail('Received an unexpected compressed page', at);
        // eslint-disable-next-line no-fallthrough
        default:
          this.fail(`Unknown combination of migration flags: 0x${flags.toString(16)}`, at);
      }
    }
  }

  private async loadSetup(r: ChannelReader, total: number, at: number): Promise<void> {
    let left = total;
    let ramAddr = this.blocks.reduce((a, b) => Math.max(a, b.ramAddr + b.usedLength), 0);
    while (left > 0) {
      const id = await r.cstr8('ramblock idstr');
      await r.need(8, 'ramblock length');
      const length = r.be64();
      let block = this.byName.get(id);
      if (!block) {
        if (!this.adopt) this.fail(`Unknown ramblock "${id}", cannot accept migration`, at);
        if (length % TP !== 0) this.fail(`ramblock "${id}" length 0x${length.toString(16)} is not page aligned`, at);
        block = this.adopt(id, length, ramAddr);
        ramAddr += length;
        this.blocks.push(block);
        this.index(block);
      } else if (length !== block.usedLength) {
        this.fail(`Size mismatch: ${id}: 0x${length.toString(16)} != 0x${block.usedLength.toString(16)}: Invalid argument`, at);
      }
      if (length > left) this.fail('RAM setup lengths exceed the advertised total', at);
      left -= length;
    }
  }

  private async loadPage(r: ChannelReader, kind: number, flags: number, addr: number, at: number): Promise<void> {
    let block: EngineRamBlock | undefined;
    if (flags & RamFlag.CONTINUE) {
      block = this.lastBlock;
      if (!block) this.fail('Ack, bad migration stream!', at);
    } else {
      const id = await r.cstr8('ramblock idstr');
      block = this.byName.get(id);
      if (!block) this.fail(`Can't find block ${id}`, at);
      this.lastBlock = block;
    }
    if (addr + TP > block.usedLength) this.fail(`Illegal RAM offset ${addr.toString(16)}`, at);
    const mem = block.bytes;
    if (this.postcopy) {
      const bm = this.received.get(block.idstr)!;
      const p = addr / TP;
      if (testBit(bm, p)) {
        this.fail(`postcopy_place_page: File exists copy host: ${block.idstr}+0x${addr.toString(16)} (size: ${TP})`, at);
      }
    }
    switch (kind) {
      case RamFlag.ZERO: {
        if (r.available < 1) await r.need(1, 'zero page fill');
        const fill = r.u8();
        // A page of fresh memory not received yet is zero: leave it untouched (no page fault).
        const untouched = block.zeroed === true && !testBit(this.received.get(block.idstr)!, addr / TP);
        if (fill !== 0 || (!untouched && !this.ops.isZeroPage(mem, addr))) mem.fill(fill, addr, addr + TP);
        this.counters.zero++;
        break;
      }
      case RamFlag.PAGE:
        if (r.available < TP) await r.need(TP, 'page');
        // Buffered by now: one copy, straight from the received chunks into guest memory.
        this.readPage(r, mem, addr);
        this.counters.normal++;
        break;
      default: {
        await r.need(3, 'xbzrle header');
        const enc = r.u8();
        if (enc !== ENCODING_FLAG_XBZRLE) this.fail('Failed to load XBZRLE page - wrong compression!', at);
        const len = r.be16();
        if (len > TP) this.fail('Failed to load XBZRLE page - len overflow!', at);
        await r.need(len, 'xbzrle data');
        r.readIntoSync(this.xbuf.subarray(0, len), 'xbzrle data');
        if (this.ops.xbzrleDecode(this.xbuf.subarray(0, len), mem, addr) < 0) {
          this.fail('Failed to load XBZRLE page - decode error!', at);
        }
        this.counters.xbzrle++;
      }
    }
    this.markReceived(block, addr);
  }

  /**
   * Copies one buffered page body into `mem` at `addr`. Into shared memory
   * (the WASM guest RAM) V8 copies byte by byte unless source and target are
   * 8-byte co-aligned, which page bodies in received chunks rarely are: they
   * bounce through an aligned plain page (two fast copies beat one slow).
   */
  private readPage(r: ChannelReader, mem: Uint8Array, addr: number): void {
    if (mem.buffer instanceof SharedArrayBuffer) {
      r.readIntoSync(this.bounce, 'page');
      mem.set(this.bounce, addr);
    } else {
      r.readIntoSync(mem.subarray(addr, addr + TP), 'page');
    }
  }

  private markReceived(block: EngineRamBlock, addr: number): void {
    const bm = this.received.get(block.idstr)!;
    const p = addr / TP;
    // Atomic: a reader that sees the bit also sees the page bytes written before it.
    if (this.postcopy) Atomics.or(bm, p >>> 5, 1 << (p & 31));
    else bm[p >>> 5] = bm[p >>> 5]! | (1 << (p & 31));
    this.onPlaced?.(block.idstr, p);
  }

  /** The block the last record named (the CONTINUE rule), by idstr. */
  get lastBlockName(): string | undefined {
    return this.lastBlock?.idstr;
  }

  /** Another reader (the bulk worker) parsed records up to here: its last block. */
  setLastBlock(idstr: string | undefined): void {
    this.lastBlock = idstr === undefined ? undefined : this.byName.get(idstr);
  }

  /** A new channel after a pause: the next record names its block again. */
  forgetLastBlock(): void {
    this.lastBlock = undefined;
  }

  /** A block by idstr. */
  block(idstr: string): EngineRamBlock | undefined {
    return this.byName.get(idstr);
  }
}
