/**
 * GuestMemory: the VM's RAM blocks plus their dirty log, laid out in one
 * Hotpath (shared WebAssembly.Memory). describe()/attach() hand it to a
 * worker thread, which sees and writes the same bytes.
 */
import { Hotpath } from '../hotpath/hotpath.js';
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { DirtyLog } from './dirty-log.js';
import { adviseHugePages, HUGE_PAGE_SIZE } from './huge-pages.js';
import { PageBitmap } from './page-bitmap.js';
import { RamAddressError, RamBlock, type RamBlockInfo } from './ram-block.js';

/** Structured-clonable description of a GuestMemory (postMessage it to a worker). */
export interface GuestMemoryDescriptor {
  memory: WebAssembly.Memory;
  blocks: Array<{ idstr: string; usedLength: number; pageSize: number; base: number; ramAddr: number; dirtyLog: number }>;
}

const MAX_IDSTR = 255; // QEMU sends idstr with a u8 length

function validate(infos: readonly RamBlockInfo[]): Required<RamBlockInfo>[] {
  const seen = new Set<string>();
  return infos.map((b) => {
    const pageSize = b.pageSize ?? TARGET_PAGE_SIZE;
    if (typeof b.idstr !== 'string' || b.idstr.length === 0 || Buffer.byteLength(b.idstr) > MAX_IDSTR) {
      throw new RangeError(`RAM block idstr must be 1..${MAX_IDSTR} bytes: "${b.idstr}"`);
    }
    if (seen.has(b.idstr)) throw new RangeError(`duplicate RAM block "${b.idstr}"`);
    seen.add(b.idstr);
    if (!Number.isInteger(pageSize) || pageSize < TARGET_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) {
      throw new RangeError(`RAM block "${b.idstr}": page size ${pageSize} is not a power of two >= ${TARGET_PAGE_SIZE}`);
    }
    if (!Number.isInteger(b.usedLength) || b.usedLength <= 0 || b.usedLength % pageSize !== 0) {
      throw new RangeError(`RAM block "${b.idstr}": used length ${b.usedLength} is not a positive multiple of ${pageSize}`);
    }
    return { idstr: b.idstr, usedLength: b.usedLength, pageSize };
  });
}

export class GuestMemory {
  readonly hotpath: Hotpath;
  readonly blocks: readonly RamBlock[];
  readonly dirtyLog: DirtyLog;
  /** Sum of the blocks' used lengths. */
  readonly totalBytes: number;
  private readonly byId: Map<string, RamBlock>;
  private readonly logOffsets: Map<string, number>;

  private constructor(hp: Hotpath, blocks: RamBlock[], logOffsets: Map<string, number>) {
    this.hotpath = hp;
    this.blocks = blocks;
    this.byId = new Map(blocks.map((b) => [b.idstr, b]));
    this.logOffsets = logOffsets;
    this.dirtyLog = new DirtyLog(hp, blocks, logOffsets);
    this.totalBytes = blocks.reduce((s, b) => s + b.usedLength, 0);
  }

  /** Lays out `infos` (in order) in hp's memory, zero-filled, with a clean dirty log. */
  static create(hp: Hotpath, infos: readonly RamBlockInfo[]): GuestMemory {
    const checked = validate(infos);
    const blocks: RamBlock[] = [];
    const logs = new Map<string, number>();
    let ramAddr = 0;
    for (const info of checked) {
      // Blocks of whole huge pages start on a huge page, so all of them can be advised.
      const align = info.usedLength >= HUGE_PAGE_SIZE ? HUGE_PAGE_SIZE : Math.max(info.pageSize, TARGET_PAGE_SIZE);
      const base = hp.alloc(info.usedLength, align);
      adviseHugePages(new Uint8Array(hp.memory.buffer, base, info.usedLength));
      const block = new RamBlock(hp, info, base, ramAddr);
      blocks.push(block);
      ramAddr += info.usedLength;
      const log = hp.alloc(PageBitmap.byteLength(block.pages), 64);
      hp.bytes().fill(0, log, log + PageBitmap.byteLength(block.pages));
      logs.set(info.idstr, log);
    }
    return new GuestMemory(hp, blocks, logs);
  }

  /** Re-creates a GuestMemory over a described memory (e.g. in a worker). Allocates nothing. */
  static attach(desc: GuestMemoryDescriptor): GuestMemory {
    const hp = Hotpath.create({ memory: desc.memory });
    const blocks: RamBlock[] = [];
    const logs = new Map<string, number>();
    for (const d of desc.blocks) {
      const [info] = validate([d]);
      if (d.base + d.usedLength > hp.memory.buffer.byteLength) throw new RangeError(`block "${d.idstr}" lies outside the memory`);
      blocks.push(new RamBlock(hp, info!, d.base, d.ramAddr));
      logs.set(d.idstr, d.dirtyLog);
    }
    return new GuestMemory(hp, blocks, logs);
  }

  /** A structured-clonable descriptor: the shared memory and the layout. */
  describe(): GuestMemoryDescriptor {
    return {
      memory: this.hotpath.memory,
      blocks: this.blocks.map((b) => ({
        idstr: b.idstr,
        usedLength: b.usedLength,
        pageSize: b.pageSize,
        base: b.base,
        ramAddr: b.ramAddr,
        dirtyLog: this.logOffsets.get(b.idstr)!,
      })),
    };
  }

  /** The block named idstr; throws (QEMU: `Unknown ramblock "..."`) if there is none. */
  block(idstr: string): RamBlock {
    const b = this.byId.get(idstr);
    if (!b) throw new RamAddressError(`Unknown ramblock "${idstr}", cannot accept migration`);
    return b;
  }

  /** The block named idstr, or undefined. */
  findBlock(idstr: string): RamBlock | undefined {
    return this.byId.get(idstr);
  }

  /** A new zeroed bitmap with one bit per target page of `block`. */
  newBitmap(block: RamBlock | string): PageBitmap {
    const b = typeof block === 'string' ? this.block(block) : block;
    return PageBitmap.create(this.hotpath, b.pages);
  }

  /** The block and offset holding global RAM address `ramAddr`, or null. */
  locate(ramAddr: number): { block: RamBlock; offset: number } | null {
    for (const b of this.blocks) {
      if (ramAddr >= b.ramAddr && ramAddr < b.ramAddr + b.usedLength) return { block: b, offset: ramAddr - b.ramAddr };
    }
    return null;
  }
}
