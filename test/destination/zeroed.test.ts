/**
 * A destination block marked `zeroed` (fresh memory): a page not received
 * yet is known to be zero, so a ZERO record and the ADVISE zap leave it
 * untouched (no page fault on fresh memory). The blocks below lie on
 * purpose — their bytes are not zero — so that an untouched page shows.
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChannelReader } from '../../src/engine/bytes.js';
import { jsPageOps } from '../../src/engine/page-ops-js.js';
import type { EngineRamBlock } from '../../src/engine/ports.js';
import { RamLoader } from '../../src/destination/ram-loader.js';
import { zapRam } from '../../src/destination/postcopy.js';
import { RamRecordEncoder } from '../../src/wire/ram.js';
import { ByteWriter } from '../../src/wire/writer.js';

const TP = 4096;

function block(zeroed: boolean | undefined): EngineRamBlock {
  return { idstr: 'ram', usedLength: 8 * TP, ramAddr: 0, bytes: new Uint8Array(8 * TP).fill(0xaa), zeroed };
}

/** Records: page 1 PAGE (0x11…), then ZERO for pages 1, 2 and 3 (fill 0) and page 4 (fill 7), EOS. */
function records(): ChannelReader {
  const w = new ByteWriter();
  const enc = new RamRecordEncoder();
  enc.page(w, 'ram', 1 * TP, new Uint8Array(TP).fill(0x11));
  for (const p of [1, 2, 3]) enc.zero(w, 'ram', p * TP);
  enc.zero(w, 'ram', 4 * TP, 7);
  enc.eos(w);
  return new ChannelReader(Readable.from([Buffer.from(w.toBytes())]));
}

const page = (b: EngineRamBlock, p: number): Uint8Array => b.bytes.subarray(p * TP, (p + 1) * TP);
const all = (u: Uint8Array, v: number): boolean => u.every((x) => x === v);

describe('zeroed destination blocks', () => {
  it('ZERO for a page not received yet leaves fresh memory untouched; a received page is cleared; a non-zero fill is written', async () => {
    const b = block(true);
    const ram = new RamLoader([b], jsPageOps, undefined);
    await ram.load(records());
    expect(all(page(b, 1), 0)).toBe(true); // received as PAGE first: the ZERO clears it
    expect(all(page(b, 2), 0xaa)).toBe(true); // never received: trusted to be zero, not touched
    expect(all(page(b, 3), 0xaa)).toBe(true);
    expect(all(page(b, 4), 7)).toBe(true); // a fill other than 0 is always written
    expect(ram.counters).toEqual({ zero: 4, normal: 1, xbzrle: 0 });
    const bits = ram.received.get('ram')!;
    expect(bits[0]! & 0b11110).toBe(0b11110); // pages 1–4 received
  });

  it('without the mark every ZERO page is checked and cleared (the default for blocks a caller passes in)', async () => {
    for (const zeroed of [undefined, false]) {
      const b = block(zeroed);
      await new RamLoader([b], jsPageOps, undefined).load(records());
      for (const p of [1, 2, 3]) expect(all(page(b, p), 0), `page ${p}`).toBe(true);
    }
  });

  it('the ADVISE zap clears only received pages of a zeroed block, all of another, and every received bit', () => {
    const a = block(true);
    const b = { ...block(false), idstr: 'other' };
    const bitsA = new Uint32Array(1).fill(0b1010);
    const bitsB = new Uint32Array(1).fill(0b1010);
    zapRam([a, b], new Map([['ram', bitsA], ['other', bitsB]]));
    expect([0, 1, 2, 3].map((p) => all(page(a, p), 0))).toEqual([false, true, false, true]);
    expect([0, 1, 2, 3, 7].every((p) => all(page(b, p), 0))).toBe(true);
    expect([bitsA[0], bitsB[0]]).toEqual([0, 0]);
  });

  it('blocks the default allocator creates for an adopting destination are marked zeroed', async () => {
    const { plainBlockAllocator } = await import('../../src/destination/ram-loader.js');
    const b = plainBlockAllocator('pc.ram', 4 * TP, 0);
    expect(b.zeroed).toBe(true);
    expect(all(b.bytes, 0)).toBe(true);
  });
});
