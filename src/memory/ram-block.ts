/**
 * RamBlock: one guest RAM block (QEMU's RAMBlock) living at `base` in the hot
 * path's shared memory. Addresses are (block, offset); bounds are checked here.
 */
import { PostcopyError } from '../errors.js';
import type { Hotpath } from '../hotpath/hotpath.js';
import { TARGET_PAGE_SIZE } from '../wire/constants.js';

/** What a RAM block is: QEMU's idstr, used_length and (host) page size. */
export interface RamBlockInfo {
  idstr: string;
  usedLength: number;
  /** Host page size of the block; 4096 unless the block uses huge pages. */
  pageSize?: number;
}

/** A bad (block, offset) address: `Illegal RAM offset` in QEMU's words. */
export class RamAddressError extends PostcopyError {
  constructor(message: string) {
    super('RAM_ADDRESS', message);
  }
}

export class RamBlock {
  readonly idstr: string;
  readonly usedLength: number;
  readonly pageSize: number;
  /** Byte offset of the block in wasm memory. */
  readonly base: number;
  /** Offset in the global RAM space (sum of the previous blocks' lengths). */
  readonly ramAddr: number;
  /** Number of target pages (bits in this block's bitmaps). */
  readonly pages: number;
  private readonly hp: Hotpath;

  constructor(hp: Hotpath, info: Required<RamBlockInfo>, base: number, ramAddr: number) {
    this.hp = hp;
    this.idstr = info.idstr;
    this.usedLength = info.usedLength;
    this.pageSize = info.pageSize;
    this.base = base;
    this.ramAddr = ramAddr;
    this.pages = info.usedLength / TARGET_PAGE_SIZE;
  }

  /**
   * Checks that [offset, offset+length) is inside the block and that offset is
   * target-page aligned; returns the byte offset in wasm memory.
   */
  addr(offset: number, length = TARGET_PAGE_SIZE): number {
    if (!Number.isInteger(offset) || offset < 0 || offset % TARGET_PAGE_SIZE !== 0) {
      throw new RamAddressError(`Illegal RAM offset 0x${offset.toString(16)} in block "${this.idstr}": not aligned to ${TARGET_PAGE_SIZE}`);
    }
    if (offset + length > this.usedLength) {
      throw new RamAddressError(
        `Illegal RAM offset 0x${offset.toString(16)} in block "${this.idstr}": beyond used_length 0x${this.usedLength.toString(16)}`,
      );
    }
    return this.base + offset;
  }

  /** A view of the target page at `offset` (default 4096 bytes; length must stay inside the block). */
  pageView(offset: number, length = TARGET_PAGE_SIZE): Uint8Array {
    const at = this.addr(offset, length);
    return new Uint8Array(this.hp.memory.buffer, at, length);
  }

  /** A view of the whole block. */
  bytes(): Uint8Array {
    return new Uint8Array(this.hp.memory.buffer, this.base, this.usedLength);
  }
}
