/**
 * The postcopy-preempt channel (SPEC §6.5, QEMU 7.1+): a second connection
 * that carries only requested (urgent) pages, so a page request never waits
 * behind the background stream in the socket buffers or in the receiver's
 * queue. No header and no section framing: a raw sequence of RAM page records
 * (PAGE or ZERO, the CONTINUE rule applied per channel), ended by one EOS word.
 *
 * PreemptSender writes one record per page at once (no batching: the page
 * must not wait); PreemptReceiver places pages into the destination's RAM
 * with the postcopy rules (a second copy of a page is QEMU's EEXIST error;
 * the received bit is set atomically after the bytes).
 */
import type { Writable } from 'node:stream';
import { ProtocolError } from '../errors.js';
import { RamFlag, TARGET_PAGE_SIZE } from '../wire/constants.js';
import { RamRecordEncoder } from '../wire/ram.js';
import { ByteWriter } from '../wire/writer.js';
import type { ChannelReader } from '../engine/bytes.js';
import type { EngineRamBlock, PageBits, PageOps } from '../engine/ports.js';
import { testBit } from '../destination/faults.js';

const TP = TARGET_PAGE_SIZE;
const TWO_32 = 0x100000000;

/**
 * Writes urgent pages on the preempt channel, one write per page (from the
 * source's main thread, or from its urgent worker on a duplicate descriptor).
 */
export class PreemptSender {
  private readonly enc = new RamRecordEncoder();
  private readonly scratch = new ByteWriter(TP + 300);
  /** Plain page-aligned buffer: copies out of shared memory are fast only when co-aligned. */
  private readonly bounce = new Uint8Array(TP);
  /** Pages written. */
  pages = 0;
  /** Bytes written. */
  transferred = 0;
  private ended = false;
  /** Writes the kernel does not have yet, and who waits for none. */
  private inflight = 0;
  private idle: (() => void) | undefined;

  constructor(
    private readonly out: Writable,
    private readonly ops: Pick<PageOps, 'isZeroPage'>,
  ) {}

  /** False once the channel broke or was ended. */
  get usable(): boolean {
    return !this.ended && !this.out.destroyed && !this.out.writableEnded;
  }

  /** Sends page `offset` of `block` now (ZERO when the page is all zero). */
  sendPage(block: Pick<EngineRamBlock, 'idstr' | 'bytes'>, offset: number): void {
    const w = this.scratch;
    w.reset();
    let src = block.bytes;
    let at = offset;
    if (src.buffer instanceof SharedArrayBuffer) {
      // One fast copy into an aligned plain page: V8 copies out of a
      // SharedArrayBuffer byte by byte unless both sides are co-aligned.
      this.bounce.set(src.subarray(offset, offset + TP));
      src = this.bounce;
      at = 0;
    }
    if (this.ops.isZeroPage(src, at)) this.enc.zero(w, block.idstr, offset);
    else this.enc.page(w, block.idstr, offset, src.subarray(at, at + TP));
    // A copy: the socket keeps the chunk until the kernel has it.
    this.inflight++;
    this.out.write(w.toBytes(), this.written);
    this.pages++;
    this.transferred += w.length;
  }

  private readonly written = (): void => {
    if (--this.inflight === 0) this.idle?.();
  };

  /** Calls `f` once, when every page written so far is with the kernel or the channel is gone. */
  whenFlushed(f: () => void): void {
    let called = false;
    const once = (): void => {
      if (called) return;
      called = true;
      this.idle = undefined;
      f();
    };
    if (this.inflight === 0 || this.out.destroyed) return once();
    this.idle = once;
    this.out.once('close', once);
  }

  /** The next record names its block again (a new channel after a resume). */
  resetLastBlock(): void {
    this.enc.reset();
  }

  /** Writes the terminating EOS, ends the channel and waits until the bytes are handed to the kernel. */
  async end(): Promise<void> {
    if (!this.usable) return;
    this.ended = true;
    const w = this.scratch;
    w.reset();
    this.enc.eos(w);
    const bytes = w.toBytes();
    this.transferred += bytes.length;
    await new Promise<void>((resolve, reject) => this.out.end(bytes, () => (this.out.errored ? reject(this.out.errored) : resolve())));
  }
}

/** What the receiver needs from the destination's RAM. */
export interface PreemptTarget {
  /** A block by idstr, with its received bitmap. */
  block(idstr: string): { block: EngineRamBlock; bits: PageBits } | undefined;
  /** True while pages may be placed (postcopy state LISTENING or RUNNING). */
  accepting(): boolean;
  /** Called after a page's bytes are in place and its bit is set. */
  placed(idstr: string, page: number): void;
}

/** Reads the preempt channel and places its pages until EOS. */
export class PreemptReceiver {
  private last: { block: EngineRamBlock; bits: PageBits } | undefined;
  private readonly bounce = new Uint8Array(TP);
  /** Pages placed from this channel. */
  pages = 0;

  constructor(private readonly target: PreemptTarget) {}

  private fail(message: string, at: number): never {
    throw new ProtocolError('ram', message, at);
  }

  /** Places records from `r` until the EOS word; throws ProtocolError / TruncatedError. */
  async run(r: ChannelReader): Promise<void> {
    for (;;) {
      if (r.available < 8) await r.need(8, 'ram record');
      const at = r.offset;
      const hi = r.be32();
      const lo = r.be32();
      const flags = lo & 0xfff;
      const addr = hi * TWO_32 + (lo - flags);
      const kind = flags & ~RamFlag.CONTINUE;
      if (kind === RamFlag.EOS) return;
      if (kind !== RamFlag.PAGE && kind !== RamFlag.ZERO) {
        this.fail(`Unknown combination of migration flags: 0x${flags.toString(16)} (postcopy mode)`, at);
      }
      let cur = this.last;
      if (flags & RamFlag.CONTINUE) {
        if (!cur) this.fail('Ack, bad migration stream!', at);
      } else {
        const id = await r.cstr8('ramblock idstr');
        cur = this.target.block(id);
        if (!cur) this.fail(`Can't find block ${id}`, at);
        this.last = cur;
      }
      const { block, bits } = cur;
      if (addr % TP !== 0 || addr + TP > block.usedLength) this.fail(`Illegal RAM offset ${addr.toString(16)}`, at);
      if (!this.target.accepting()) this.fail('Postcopy page received on the preempt channel outside postcopy', at);
      const p = addr / TP;
      if (testBit(bits, p)) {
        this.fail(`postcopy_place_page: File exists copy host: ${block.idstr}+0x${addr.toString(16)} (size: ${TP})`, at);
      }
      const mem = block.bytes;
      if (kind === RamFlag.ZERO) {
        if (r.available < 1) await r.need(1, 'zero page fill');
        mem.fill(r.u8(), addr, addr + TP);
      } else {
        if (r.available < TP) await r.need(TP, 'page');
        if (mem.buffer instanceof SharedArrayBuffer) {
          r.readIntoSync(this.bounce, 'page');
          mem.set(this.bounce, addr);
        } else {
          r.readIntoSync(mem.subarray(addr, addr + TP), 'page');
        }
      }
      Atomics.or(bits, p >>> 5, 1 << (p & 31));
      this.pages++;
      this.target.placed(block.idstr, p);
    }
  }
}
