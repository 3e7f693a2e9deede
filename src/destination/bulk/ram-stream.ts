/**
 * RamStreamParser: the postcopy background stream of the main channel
 * (SPEC §3, §6.3) parsed push-style, for a reader that owns the bytes only
 * during a callback (a socket's `onread` buffer in the bulk worker). It takes
 * the happy path only: "ram" PART/END sections of PAGE, ZERO and EOS records
 * and their footers, placing each page with the postcopy rules (bytes first,
 * then the received bit, atomically). At the first item it does not take — a
 * command, EOF, another section, or any record the main thread's loader would
 * reject (unknown block, bad offset, a page already placed, other flags) —
 * it stops before that item and keeps it, with everything after it, as the
 * leftover: the main thread's loader then parses it and, for a bad record,
 * fails with QEMU's words. So every error text stays in one place.
 */
import { RamFlag, SectionType, TARGET_PAGE_SIZE } from '../../wire/constants.js';
import type { PageBits } from '../../engine/ports.js';
import { PushParser } from '../../wire/push-parser.js';

const TP = TARGET_PAGE_SIZE;
const TWO_32 = 0x1_0000_0000;
/** The longest item: a record header, a counted idstr and a page. */
export const MAX_ITEM = 8 + 1 + 255 + TP;

/** What the first unconsumed byte starts. */
export type ResumePoint = 'section' | 'record' | 'footer';

/** One RAM block as the parser sees it: shared memory, so both threads see the pages. */
export interface BulkBlock {
  idstr: string;
  usedLength: number;
  /** Guest RAM. */
  bytes: Uint8Array;
  /** Received bitmap (one bit per 4 KiB page). */
  bits: PageBits;
  /** Pages a fault waits for: set by the main thread, cleared here when the page is placed. */
  wanted: PageBits;
  /** Fresh zeroed memory: a zero page not received yet needs no write. */
  zeroed: boolean;
}

/** Where the parser starts: a section boundary, or inside a ram section. */
export interface ParserStart {
  at: ResumePoint;
  /** The ram section being read (for 'record' and 'footer'). */
  sectionId: number;
  /** Block named by the last record (the CONTINUE rule). */
  lastBlock: string | undefined;
}

export class RamStreamParser extends PushParser {
  at: ResumePoint;
  sectionId: number;
  lastBlock: BulkBlock | undefined;
  readonly counters = { normal: 0, zero: 0 };
  private readonly byName = new Map<string, BulkBlock>();
  /** Plain page-aligned buffer: copies into shared memory are fast only when co-aligned. */
  private readonly bounce = new Uint8Array(TP);

  constructor(
    blocks: readonly BulkBlock[],
    /** Section ids of the "ram" section (PART/END of any other id stop the parser). */
    private readonly ramSections: ReadonlySet<number>,
    start: ParserStart,
    /** A placed page a fault was waiting for. */
    private readonly wantedPlaced: (idstr: string, page: number) => void,
  ) {
    super(MAX_ITEM);
    for (const b of blocks) this.byName.set(b.idstr, b);
    this.at = start.at;
    this.sectionId = start.sectionId;
    this.lastBlock = start.lastBlock === undefined ? undefined : this.byName.get(start.lastBlock);
  }

  protected item(b: Uint8Array, p: number, end: number): number {
    const have = end - p;
    switch (this.at) {
      case 'section': {
        if (have < 1) return 0;
        const type = b[p]!;
        if (type !== SectionType.PART && type !== SectionType.END) return -1;
        if (have < 5) return 0;
        const id = be32(b, p + 1);
        if (!this.ramSections.has(id)) return -1;
        this.sectionId = id;
        this.at = 'record';
        return 5;
      }
      case 'footer': {
        if (have < 5) return 0;
        if (b[p] !== SectionType.FOOTER || be32(b, p + 1) !== this.sectionId) return -1;
        this.at = 'section';
        return 5;
      }
      case 'record':
        return this.record(b, p, have);
    }
  }

  private record(b: Uint8Array, p: number, have: number): number {
    if (have < 8) return 0;
    const lo = be32(b, p + 4);
    const flags = lo & 0xfff;
    const kind = flags & ~RamFlag.CONTINUE;
    if (kind === RamFlag.EOS) {
      this.at = 'footer';
      return 8;
    }
    if (kind !== RamFlag.PAGE && kind !== RamFlag.ZERO) return -1;
    const addr = be32(b, p) * TWO_32 + (lo - flags);
    let n = 8;
    let block: BulkBlock | undefined;
    if (flags & RamFlag.CONTINUE) {
      block = this.lastBlock;
      if (!block) return -1;
    } else {
      if (have < 9) return 0;
      const len = b[p + 8]!;
      n = 9 + len;
      if (have < n) return 0;
      block = this.byName.get(latin1(b, p + 9, len));
      if (!block) return -1;
    }
    if (addr + TP > block.usedLength) return -1;
    const page = addr / TP;
    const w = page >>> 5;
    const bit = 1 << (page & 31);
    if ((Atomics.load(block.bits, w) & bit) !== 0) return -1;
    const body = p + n;
    if (kind === RamFlag.ZERO) {
      if (have < n + 1) return 0;
      const fill = b[body]!;
      if (fill !== 0 || !block.zeroed) block.bytes.fill(fill, addr, addr + TP);
      this.counters.zero++;
      n += 1;
    } else {
      if (have < n + TP) return 0;
      const src = b.subarray(body, body + TP);
      const mem = block.bytes;
      if (mem.buffer instanceof SharedArrayBuffer && ((b.byteOffset + body) & 7) !== ((mem.byteOffset + addr) & 7)) {
        this.bounce.set(src);
        mem.set(this.bounce, addr);
      } else {
        mem.set(src, addr);
      }
      this.counters.normal++;
      n += TP;
    }
    this.lastBlock = block;
    // The bit after the bytes: a reader that sees it sees the page.
    Atomics.or(block.bits, w, bit);
    if ((Atomics.load(block.wanted, w) & bit) !== 0) {
      Atomics.and(block.wanted, w, ~bit);
      this.wantedPlaced(block.idstr, page);
    }
    return n;
  }
}

function be32(b: Uint8Array, p: number): number {
  return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
}

function latin1(b: Uint8Array, p: number, len: number): string {
  let s = '';
  for (let i = 0; i < len; i++) s += String.fromCharCode(b[p + i]!);
  return s;
}
