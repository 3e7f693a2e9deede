/**
 * Destination postcopy states (SPEC §6.3) and the pure parts of the postcopy
 * commands: state checks with QEMU's texts, ADVISE's page-size checks and RAM
 * zap, DISCARD ranges, and the split of an adopted PACKAGED blob.
 */
import { ProtocolError } from '../errors.js';
import { MigCmd, POSTCOPY_HOST_PAGE_SIZE, SectionType, TARGET_PAGE_SIZE } from '../wire/constants.js';
import type { DiscardRange } from '../wire/command.js';
import type { EngineRamBlock, PageBits } from '../engine/ports.js';

/** QEMU's PostcopyState, in its numeric order (the number appears in error texts). */
export const POSTCOPY_STATES = ['none', 'advise', 'discard', 'listening', 'running', 'end'] as const;
export type PostcopyState = (typeof POSTCOPY_STATES)[number];

const TP = TARGET_PAGE_SIZE;
const hex = (v: number | bigint): string => v.toString(16);

/**
 * Checks that `state` is one of `allowed` for command `name`, else throws
 * QEMU's "<name> in wrong postcopy state (<n>)".
 */
export function checkPostcopyState(name: string, state: PostcopyState, allowed: readonly PostcopyState[], at: number): void {
  if (!allowed.includes(state)) {
    throw new ProtocolError('command', `${name} in wrong postcopy state (${POSTCOPY_STATES.indexOf(state)})`, at);
  }
}

/** ADVISE with postcopy-ram: the page-size summary and target page size must match ours (SPEC §2.3 6–7). */
export function checkAdvisePageSizes(summary: bigint, tps: bigint, at: number): void {
  if (summary !== BigInt(POSTCOPY_HOST_PAGE_SIZE)) {
    throw new ProtocolError('command', `Postcopy needs matching RAM page sizes (s=${hex(summary)} d=${hex(POSTCOPY_HOST_PAGE_SIZE)})`, at);
  }
  if (tps !== BigInt(TP)) {
    throw new ProtocolError('command', `Postcopy needs matching target page sizes (s=${tps} d=${TP})`, at);
  }
}

/** Clears the received bits of pages [first, first+count) with atomic word updates. */
export function clearBits(bits: PageBits, first: number, count: number): void {
  let p = first;
  const end = first + count;
  while (p < end) {
    const w = p >>> 5;
    const lo = p & 31;
    const n = Math.min(32 - lo, end - p);
    const mask = n === 32 ? 0xffffffff : ((1 << n) - 1) << lo;
    Atomics.and(bits, w, ~mask >>> 0);
    p += n;
  }
}

/** ADVISE: zaps all RAM of every block and clears its received bits. */
export function zapRam(blocks: readonly EngineRamBlock[], received: ReadonlyMap<string, PageBits>): void {
  for (const b of blocks) {
    const bits = received.get(b.idstr);
    const pages = Math.floor(b.usedLength / TP);
    if (b.zeroed && bits) {
      // Fresh memory: only the pages received so far can be non-zero.
      for (let w = 0; w < (pages + 31) >>> 5; w++) {
        const v = Atomics.load(bits, w);
        if (v === 0) continue;
        for (let i = 0; i < 32; i++) if (v & (1 << i)) b.bytes.fill(0, (w * 32 + i) * TP, (w * 32 + i + 1) * TP);
      }
    } else {
      b.bytes.fill(0, 0, b.usedLength);
    }
    if (bits) clearBits(bits, 0, pages);
  }
}

/**
 * DISCARD: for each range, zero the pages and clear their received bits
 * (QEMU: MADV_DONTNEED, the page reads as zero until placed again).
 */
export function applyDiscards(
  block: EngineRamBlock | undefined,
  blockName: string,
  bits: PageBits | undefined,
  ranges: readonly DiscardRange[],
  at: number,
): number {
  if (!block || !bits) throw new ProtocolError('command', `ram_discard_range: Failed to find block '${blockName}'`, at);
  let pages = 0;
  for (const { start, length } of ranges) {
    if (start % TP !== 0) throw new ProtocolError('command', `ram_block_discard_range: Unaligned start address: 0x${hex(start)}`, at);
    if (start + length > block.usedLength || length % TP !== 0) {
      throw new ProtocolError('command', `ram_block_discard_range: Overrun block '${blockName}' (${start}/${hex(length)}/${hex(block.usedLength)})`, at);
    }
    block.bytes.fill(0, start, start + length);
    clearBits(bits, start / TP, length / TP);
    pages += length / TP;
  }
  return pages;
}

/**
 * An adopting destination meets an unknown FULL section inside a package: the
 * device sections run to the trailing commands (an optional PING, then RUN).
 * Returns where the device region ends inside `rest` (the blob from that
 * section on); the commands after it are parsed normally.
 */
export function packageDeviceEnd(rest: Uint8Array): number {
  const n = rest.length;
  const isCmd = (i: number, cmd: number, len: number): boolean =>
    i >= 0 && rest[i] === SectionType.COMMAND && ((rest[i + 1]! << 8) | rest[i + 2]!) === cmd && ((rest[i + 3]! << 8) | rest[i + 4]!) === len;
  let end = n;
  if (isCmd(n - 5, MigCmd.POSTCOPY_RUN, 0)) end = n - 5;
  else if (rest[n - 1] === SectionType.EOF) return n - 1;
  if (isCmd(end - 9, MigCmd.PING, 4)) end -= 9;
  return end;
}

/**
 * The RECV_BITMAP reply body (SPEC §5.6): little-endian 64-bit words, one bit
 * per target page of the block, S = recvBitmapSize(usedLength) bytes.
 */
export function recvBitmapBytes(bits: PageBits, usedLength: number): Uint8Array {
  const pages = Math.floor(usedLength / TP);
  const size = Math.ceil(Math.ceil(usedLength / TP) / 64) * 8;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  const words = Math.ceil(pages / 32);
  for (let w = 0; w < words; w++) {
    let v = Atomics.load(bits, w);
    if (w === words - 1 && pages % 32 !== 0) v &= (1 << (pages % 32)) - 1;
    dv.setUint32(w * 4, v >>> 0, true);
  }
  return out;
}
