/**
 * RAM section payload records (SPEC.md §3): the setup (MEM_SIZE) record, page
 * records (ZERO, PAGE, XBZRLE, COMPRESS_PAGE) with the CONTINUE rule, and EOS.
 * XBZRLE deltas and zlib pages are carried opaque; the hot path decodes them.
 */

import {
  COMPRESS_BOUND_PAGE,
  ENCODING_FLAG_XBZRLE,
  RAM_FLAGS_MASK,
  RamFlag,
  TARGET_PAGE_SIZE,
} from './constants.js';
import type { ByteCursor } from './cursor.js';
import type { WireSink } from './writer.js';
import { stringToBytes } from './writer.js';

const TWO_32 = 0x1_0000_0000;

/** One entry of the setup record. */
export interface RamBlockInfo {
  idstr: string;
  usedLength: number;
  /** Present iff the page-size field is on the wire for this block (§3.2). */
  pageSize?: number;
  /** Present iff the GPA field is on the wire (x-ignore-shared). */
  gpa?: number;
}

/** Which optional setup fields the decoder expects (the destination's conditions, §3.2). */
export interface RamSetupOptions {
  /**
   * Page-size field present for a block: postcopy advised AND own postcopy-ram
   * on AND the block's (local) page size differs from the host page size.
   */
  hasPageSize?: boolean | ((idstr: string) => boolean);
  /** GPA field present: own x-ignore-shared on. */
  hasGpa?: boolean;
}

/** Fields common to page records. */
interface PageRecordBase {
  /** RAM block idstr (from the record, or remembered via CONTINUE). */
  block: string;
  /** Byte offset of the target page inside the block (4096-aligned). */
  offset: number;
  /** True if the record had CONTINUE (no idstr on the wire). */
  continued: boolean;
}

/** A decoded RAM record; discriminated by `kind`. */
export type RamRecord =
  | { kind: 'memSize'; total: number; blocks: RamBlockInfo[] }
  | (PageRecordBase & { kind: 'zero'; fill: number })
  /** `data` is a view of TP bytes in the input (no copy). */
  | (PageRecordBase & { kind: 'page'; data: Uint8Array })
  /** `data` is the encoded XBZRLE delta (≤ 4096 bytes), a view. */
  | (PageRecordBase & { kind: 'xbzrle'; data: Uint8Array })
  /** `data` is a complete zlib stream (≤ 4110 bytes), a view. */
  | (PageRecordBase & { kind: 'compressed'; data: Uint8Array })
  | { kind: 'eos' };

/** Options of RamRecordDecoder. */
export interface RamDecoderOptions {
  /** Postcopy mode: only ZERO, PAGE, COMPRESS_PAGE and EOS are accepted. */
  postcopy?: boolean;
  /** Optional setup fields (see RamSetupOptions). */
  setup?: RamSetupOptions;
}

/**
 * Decodes RAM records of one channel, remembering the last block named (the
 * CONTINUE rule). Create one per incoming channel; it persists across
 * sections. `postcopy` may be switched when the destination enters postcopy.
 */
export class RamRecordDecoder {
  /** The block the next CONTINUE record refers to. */
  lastBlock: string | undefined;
  postcopy: boolean;
  setup: RamSetupOptions;

  constructor(opts: RamDecoderOptions = {}) {
    this.postcopy = opts.postcopy ?? false;
    this.setup = opts.setup ?? {};
  }

  /** Forget the last block. */
  reset(): void {
    this.lastBlock = undefined;
  }

  /** Decode one record. Throws ProtocolError with QEMU's wording on bad input. */
  decode(c: ByteCursor): RamRecord {
    const at = c.pos;
    c.need(8, 'RAM record header');
    const hi = c.buf[c.pos]! * 0x1000000 + ((c.buf[c.pos + 1]! << 16) | (c.buf[c.pos + 2]! << 8) | c.buf[c.pos + 3]!);
    const lo = ((c.buf[c.pos + 4]! << 24) | (c.buf[c.pos + 5]! << 16) | (c.buf[c.pos + 6]! << 8) | c.buf[c.pos + 7]!) >>> 0;
    const flags = lo & RAM_FLAGS_MASK;
    const type = flags & ~RamFlag.CONTINUE;
    const pm = this.postcopy;
    const valid = pm
      ? type === RamFlag.ZERO || type === RamFlag.PAGE || type === RamFlag.COMPRESS_PAGE || type === RamFlag.EOS
      : type === RamFlag.ZERO ||
        type === RamFlag.PAGE ||
        type === RamFlag.XBZRLE ||
        type === RamFlag.COMPRESS_PAGE ||
        type === RamFlag.EOS ||
        type === RamFlag.MEM_SIZE;
    if (!valid) {
      throw c.error(
        'RAM record',
        `Unknown combination of migration flags: 0x${flags.toString(16)}${pm ? ' (postcopy mode)' : ''}`,
        at,
      );
    }
    if (hi > 0x1fffff) throw c.error('RAM record', `Illegal RAM offset ${hi.toString(16)}${lo.toString(16).padStart(8, '0')}`, at);
    const offset = hi * TWO_32 + ((lo & ~RAM_FLAGS_MASK) >>> 0);
    c.pos += 8;
    if (type === RamFlag.EOS) return { kind: 'eos' };
    if (type === RamFlag.MEM_SIZE) return this.decodeSetup(c, offset);

    const continued = (flags & RamFlag.CONTINUE) !== 0;
    let block: string;
    if (continued) {
      if (this.lastBlock === undefined) throw c.error('RAM record', 'Ack, bad migration stream!', at);
      block = this.lastBlock;
    } else {
      block = c.cstr8('RAM block idstr');
      this.lastBlock = block;
    }
    switch (type) {
      case RamFlag.ZERO:
        return { kind: 'zero', block, offset, continued, fill: c.u8('zero page fill byte') };
      case RamFlag.PAGE:
        return { kind: 'page', block, offset, continued, data: c.bytes(TARGET_PAGE_SIZE, 'page data') };
      case RamFlag.XBZRLE: {
        const fAt = c.pos;
        const enc = c.u8('XBZRLE encoding flag');
        const len = c.be16('XBZRLE length');
        if (enc !== ENCODING_FLAG_XBZRLE) throw c.error('XBZRLE page', 'Failed to load XBZRLE page - wrong compression!', fAt);
        if (len > TARGET_PAGE_SIZE) throw c.error('XBZRLE page', 'Failed to load XBZRLE page - len overflow!', fAt + 1);
        return { kind: 'xbzrle', block, offset, continued, data: c.bytes(len, 'XBZRLE data') };
      }
      default: {
        const lAt = c.pos;
        const len = c.be32('compressed length');
        // QEMU reads it as a signed int: values ≥ 2^31 are negative there.
        if (len > COMPRESS_BOUND_PAGE) {
          throw c.error('compressed page', `Invalid compressed data length: ${len | 0}`, lAt);
        }
        return { kind: 'compressed', block, offset, continued, data: c.bytes(len, 'compressed data') };
      }
    }
  }

  private decodeSetup(c: ByteCursor, total: number): RamRecord {
    const blocks: RamBlockInfo[] = [];
    const { hasPageSize, hasGpa } = this.setup;
    let left = total;
    while (left > 0) {
      const at = c.pos;
      const idstr = c.cstr8('RAM block idstr');
      const usedLength = c.be64n('used_length');
      if (usedLength > left) {
        throw c.error(
          'RAM setup',
          `block '${idstr}' used_length 0x${usedLength.toString(16)} exceeds the remaining total 0x${left.toString(16)}`,
          at,
        );
      }
      const info: RamBlockInfo = { idstr, usedLength };
      const ps = typeof hasPageSize === 'function' ? hasPageSize(idstr) : (hasPageSize ?? false);
      if (ps) info.pageSize = c.be64n('page size');
      if (hasGpa) info.gpa = c.be64n('GPA');
      blocks.push(info);
      left -= usedLength;
      if (usedLength === 0 && blocks.length > 0xffff) {
        throw c.error('RAM setup', 'too many zero-length RAM blocks', at);
      }
    }
    return { kind: 'memSize', total, blocks };
  }
}

/**
 * Range check the memory layer applies: QEMU's "Illegal RAM offset" when the
 * page [offset, offset+TP) does not lie inside `usedLength`. Null when fine.
 */
export function checkRamOffset(offset: number, usedLength: number): string | null {
  if (offset % TARGET_PAGE_SIZE === 0 && offset + TARGET_PAGE_SIZE <= usedLength) return null;
  return `Illegal RAM offset ${offset.toString(16)}`;
}

/**
 * Encodes RAM records for one channel, applying the CONTINUE rule: a record
 * for the same block as the previous one carries CONTINUE and no idstr. Call
 * `reset()` where QEMU resets it (migration start, block list change,
 * postcopy switch, recovery resume, preempt channel switch).
 */
export class RamRecordEncoder {
  private last: string | undefined;

  /** Forget the last block, so the next page record carries its idstr. */
  reset(): void {
    this.last = undefined;
  }

  /** The block the next record may CONTINUE from. */
  get lastBlock(): string | undefined {
    return this.last;
  }

  private word(w: WireSink, offset: number, flags: number): void {
    if (offset % TARGET_PAGE_SIZE !== 0 || offset < 0 || offset > Number.MAX_SAFE_INTEGER) {
      throw new RangeError(`RAM offset 0x${offset.toString(16)} not page aligned or out of range`);
    }
    const hi = Math.floor(offset / TWO_32);
    w.be32(hi);
    w.be32(((offset - hi * TWO_32) | flags) >>> 0);
  }

  private head(w: WireSink, block: string, offset: number, flag: number): void {
    if (block === this.last) {
      this.word(w, offset, flag | RamFlag.CONTINUE);
      return;
    }
    const b = stringToBytes(block);
    if (b.length > 255) throw new RangeError('RAM block idstr longer than 255 bytes');
    this.word(w, offset, flag);
    w.u8(b.length);
    w.bytes(b);
    this.last = block;
  }

  /**
   * The setup record: total|MEM_SIZE then each block (optional page size and
   * GPA written iff present on the entry). Does not write EOS.
   */
  memSize(w: WireSink, blocks: readonly RamBlockInfo[]): void {
    let total = 0;
    for (const b of blocks) total += b.usedLength;
    if (total % TARGET_PAGE_SIZE !== 0) throw new RangeError('RAM total must be a multiple of the target page size');
    this.word(w, total, RamFlag.MEM_SIZE);
    for (const b of blocks) {
      w.cstr8(b.idstr);
      w.be64(b.usedLength);
      if (b.pageSize !== undefined) w.be64(b.pageSize);
      if (b.gpa !== undefined) w.be64(b.gpa);
    }
  }

  /** A ZERO record (QEMU always sends fill 0). */
  zero(w: WireSink, block: string, offset: number, fill = 0): void {
    this.head(w, block, offset, RamFlag.ZERO);
    w.u8(fill);
  }

  /** A PAGE record; `data` must be exactly one target page and is copied once. */
  page(w: WireSink, block: string, offset: number, data: Uint8Array): void {
    if (data.length !== TARGET_PAGE_SIZE) throw new RangeError(`page data must be ${TARGET_PAGE_SIZE} bytes`);
    this.head(w, block, offset, RamFlag.PAGE);
    w.bytes(data);
  }

  /** An XBZRLE record carrying an already encoded delta (≤ 4096 bytes). */
  xbzrle(w: WireSink, block: string, offset: number, delta: Uint8Array): void {
    if (delta.length > TARGET_PAGE_SIZE) throw new RangeError('XBZRLE delta longer than a page');
    this.head(w, block, offset, RamFlag.XBZRLE);
    w.u8(ENCODING_FLAG_XBZRLE);
    w.be16(delta.length);
    w.bytes(delta);
  }

  /** A COMPRESS_PAGE record carrying a complete zlib stream (≤ 4110 bytes). */
  compressed(w: WireSink, block: string, offset: number, zdata: Uint8Array): void {
    if (zdata.length > COMPRESS_BOUND_PAGE) throw new RangeError('compressed page longer than compressBound(4096)');
    this.head(w, block, offset, RamFlag.COMPRESS_PAGE);
    w.be32(zdata.length);
    w.bytes(zdata);
  }

  /** The EOS word that ends every RAM section payload. */
  eos(w: WireSink): void {
    this.word(w, 0, RamFlag.EOS);
  }
}

/** Encode any RAM record with `enc` (convenience for tests and tools). */
export function encodeRamRecord(w: WireSink, enc: RamRecordEncoder, r: RamRecord): void {
  switch (r.kind) {
    case 'memSize':
      enc.memSize(w, r.blocks);
      return;
    case 'zero':
      enc.zero(w, r.block, r.offset, r.fill);
      return;
    case 'page':
      enc.page(w, r.block, r.offset, r.data);
      return;
    case 'xbzrle':
      enc.xbzrle(w, r.block, r.offset, r.data);
      return;
    case 'compressed':
      enc.compressed(w, r.block, r.offset, r.data);
      return;
    case 'eos':
      enc.eos(w);
      return;
  }
}
