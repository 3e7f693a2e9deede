/**
 * Pieces of the postcopy switchover (SPEC §2.6, §2.7, §6.2) that are pure
 * functions of the source's state: the discard ranges of a dirty bitmap,
 * the discard commands of all blocks, and the PACKAGED blob.
 */
import { PingValue, TARGET_PAGE_SIZE } from '../wire/constants.js';
import { encodeCommand, encodeDiscards, type DiscardRange } from '../wire/command.js';
import { ByteWriter, type WireSink } from '../wire/writer.js';
import type { DeviceSection, PageBits } from '../engine/ports.js';
import { nextSetBit, type RamSaver } from './ram-saver.js';
import { encodeDevices } from './devices.js';

const TP = TARGET_PAGE_SIZE;

/** Maximal runs of set bits of `bits` (pages 0..nbits-1) as byte ranges. */
export function dirtyRuns(bits: PageBits, nbits: number): DiscardRange[] {
  const out: DiscardRange[] = [];
  let p = nextSetBit(bits, 0, nbits);
  while (p >= 0) {
    let e = p + 1;
    // Extend over whole words of ones quickly, then bit by bit.
    while (e < nbits) {
      if ((e & 31) === 0 && e + 32 <= nbits && bits[e >>> 5] === 0xffffffff) {
        e += 32;
        continue;
      }
      if ((bits[e >>> 5]! & (1 << (e & 31))) === 0) break;
      e++;
    }
    out.push({ start: p * TP, length: (e - p) * TP });
    p = nextSetBit(bits, e, nbits);
  }
  return out;
}

/** What sendDiscards did. */
export interface DiscardSummary {
  /** POSTCOPY_RAM_DISCARD commands written. */
  commands: number;
  /** Ranges over all blocks. */
  ranges: number;
  /** Pages covered. */
  pages: number;
  /** True when nothing was dirty and page 0 of the first block was made dirty to have one discard. */
  forced: boolean;
}

/**
 * POSTCOPY_RAM_DISCARD for every dirty page (must be resent), per block,
 * ≤ 12 ranges per command. QEMU 7.2 needs at least one DISCARD before
 * LISTEN (else RUN fails "in wrong postcopy state (2)") and refuses a
 * command without ranges (minimum length 20): when nothing is dirty, the
 * first page of the first block is marked dirty (it will be sent again)
 * and discarded.
 */
export function sendDiscards(w: WireSink, saver: RamSaver): DiscardSummary {
  const sum: DiscardSummary = { commands: 0, ranges: 0, pages: 0, forced: false };
  if (saver.dirtyPages === 0 && saver.blocks.length > 0 && saver.pages[0]! > 0) {
    saver.bitmaps[0]![0] = saver.bitmaps[0]![0]! | 1;
    saver.recount();
    sum.forced = true;
  }
  saver.blocks.forEach((b, i) => {
    const runs = dirtyRuns(saver.bitmaps[i]!, saver.pages[i]!);
    if (runs.length === 0) return;
    sum.commands += encodeDiscards(w, b.idstr, runs);
    sum.ranges += runs.length;
    for (const r of runs) sum.pages += r.length / TP;
  });
  return sum;
}

/**
 * The PACKAGED blob: LISTEN, the FULL device sections (no EOF, no vmdesc),
 * PING(3), RUN.
 */
export function encodePackage(devs: readonly DeviceSection[]): Uint8Array {
  const pkg = new ByteWriter(4096);
  encodeCommand(pkg, { kind: 'postcopyListen' });
  encodeDevices(pkg, devs);
  encodeCommand(pkg, { kind: 'ping', value: PingValue.IN_PACKAGE });
  encodeCommand(pkg, { kind: 'postcopyRun' });
  return pkg.toBytes();
}
