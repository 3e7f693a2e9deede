import { describe, expect, it } from 'vitest';
import { ByteWriter } from '../../src/wire/writer.js';
import { ByteCursor, RamRecordDecoder, type RamRecord } from '../../src/wire/index.js';
import { jsPageOps } from '../../src/engine/page-ops-js.js';
import { nextSetBit, popcount, RamSaver } from '../../src/source/ram-saver.js';
import { XbzrleCache } from '../../src/source/xbzrle-cache.js';
import { AutoConverge } from '../../src/source/throttle.js';
import { DEFAULT_PARAMETERS } from '../../src/source/options.js';

const TP = 4096;
function blocks(): { idstr: string; usedLength: number; ramAddr: number; bytes: Uint8Array }[] {
  return [
    { idstr: 'a', usedLength: 8 * TP, ramAddr: 0, bytes: new Uint8Array(8 * TP) },
    { idstr: 'b', usedLength: 4 * TP, ramAddr: 8 * TP, bytes: new Uint8Array(4 * TP) },
  ];
}
function decodeAll(bytes: Uint8Array, dec = new RamRecordDecoder()): RamRecord[] {
  const c = new ByteCursor(bytes);
  const out: RamRecord[] = [];
  while (c.remaining > 0) out.push(dec.decode(c));
  return out;
}
const brief = (r: RamRecord): string => (r.kind === 'eos' || r.kind === 'memSize' ? r.kind : `${r.kind}:${r.block}@${r.offset / TP}${r.continued ? '+c' : ''}`);

describe('bit helpers', () => {
  it('nextSetBit and popcount', () => {
    const bm = new Uint32Array(3);
    bm[0] = 0x80000001;
    bm[2] = 0x10;
    expect(nextSetBit(bm, 0, 96)).toBe(0);
    expect(nextSetBit(bm, 1, 96)).toBe(31);
    expect(nextSetBit(bm, 32, 96)).toBe(68);
    expect(nextSetBit(bm, 69, 96)).toBe(-1);
    expect(nextSetBit(bm, 0, 60)).toBe(0);
    expect(nextSetBit(bm, 32, 60)).toBe(-1);
    expect(popcount(bm)).toBe(3);
  });
});

describe('RamSaver', () => {
  it('sends ascending block/offset order, CONTINUE persisting across calls, zero vs normal', () => {
    const bl = blocks();
    bl[0]!.bytes[3 * TP] = 1;
    bl[1]!.bytes[0] = 2;
    const s = new RamSaver(bl, jsPageOps, false, 0);
    s.setAllDirty();
    expect(s.dirtyPages).toBe(12);
    const w1 = new ByteWriter();
    for (let i = 0; i < 5; i++) expect(s.sendNext(w1, false)).toBe(1);
    const w2 = new ByteWriter();
    while (s.sendNext(w2, false)) {
      /* rest */
    }
    const dec = new RamRecordDecoder();
    const r1 = decodeAll(w1.toBytes(), dec).map(brief);
    const r2 = decodeAll(w2.toBytes(), dec).map(brief);
    expect(r1).toEqual(['zero:a@0', 'zero:a@1+c', 'zero:a@2+c', 'page:a@3+c', 'zero:a@4+c']);
    expect(r2).toEqual(['zero:a@5+c', 'zero:a@6+c', 'zero:a@7+c', 'page:b@0', 'zero:b@1+c', 'zero:b@2+c', 'zero:b@3+c']);
    expect(s.counters).toMatchObject({ duplicate: 10, normal: 2, targetPageCount: 12 });
    expect(s.counters.pageBytes).toBe(w1.length + w2.length);
    expect(s.dirtyPages).toBe(0);
    s.resetLastBlock();
    s.bitmaps[1]![0] = 0b100;
    s.recount();
    const w3 = new ByteWriter();
    s.sendNext(w3, false);
    expect(decodeAll(w3.toBytes(), dec).map(brief)).toEqual(['zero:b@2']);
  });

  it('serves the urgent queue first and drops already-sent pages', () => {
    const s = new RamSaver(blocks(), jsPageOps, false, 0);
    s.setAllDirty();
    s.queueUrgent(1, 3);
    s.queueUrgent(1, 3);
    const w = new ByteWriter();
    s.sendNext(w, false);
    s.sendNext(w, false);
    expect(decodeAll(w.toBytes()).map(brief)).toEqual(['zero:b@3', 'zero:a@0']);
    expect(s.urgent).toHaveLength(0);
  });

  it('XBZRLE: starts after a full pass; miss inserts and sends from the cache; hit encodes; unchanged sends nothing; overflow counts', () => {
    const bl = blocks();
    const mem = bl[0]!.bytes;
    for (let p = 0; p < 8; p++) mem[p * TP + 7] = 1 + p;
    const s = new RamSaver(bl, jsPageOps, true, 4 * TP);
    s.setAllDirty();
    s.generation = 1;
    const dec = new RamRecordDecoder();
    const w = new ByteWriter();
    while (s.sendNext(w, false)) {
      /* pass 1 */
    }
    decodeAll(w.toBytes(), dec);
    expect(s.xbzrle).toMatchObject({ pages: 0, cacheMiss: 0 });
    expect(s.xbzrleEnabled).toBe(false);
    s.bitmaps[0]![0] = 0b11; // pages 0 and 1 dirty
    s.recount();
    s.generation = 2;
    const w2 = new ByteWriter();
    while (s.sendNext(w2, false)) {
      /* pass 2: wrap enabled XBZRLE → misses, inserted */
    }
    expect(s.xbzrleEnabled).toBe(true);
    expect(s.xbzrle.cacheMiss).toBe(2);
    expect(decodeAll(w2.toBytes(), dec).map((r) => r.kind)).toEqual(['page', 'page']);
    // page 0: one byte changes → XBZRLE record; page 1 unchanged → skipped; page 2 (slot 2, free) → miss
    mem[100] = 0x55;
    s.bitmaps[0]![0] = 0b111;
    s.recount();
    s.generation = 3;
    const w3 = new ByteWriter();
    while (s.sendNext(w3, false)) {
      /* pass 3 */
    }
    const recs = decodeAll(w3.toBytes(), dec);
    // the scan position persists: page 2 first, then wrap to pages 0 and 1
    expect(recs.map((r) => r.kind)).toEqual(['page', 'xbzrle']);
    const x = recs[1] as { data: Uint8Array };
    expect([...x.data]).toEqual([100, 1, 0x55]);
    expect(s.xbzrle.pages).toBe(2); // the unchanged hit counts too
    expect(s.xbzrle.bytes).toBe(8 + 3 + 3 - 8); // CONTINUE header + flag + len + data − 8
    expect(s.xbzrle.cacheMiss).toBe(3);
    // overflow: every second byte of page 0 changes
    for (let i = 0; i < TP; i += 2) mem[i] = (mem[i]! + 1) & 0xff;
    s.bitmaps[0]![0] = 0b1;
    s.recount();
    const w4 = new ByteWriter();
    s.sendNext(w4, false);
    expect(decodeAll(w4.toBytes(), dec).map((r) => r.kind)).toEqual(['page']);
    expect(s.xbzrle.overflow).toBe(1);
    expect(s.xbzrle.bytes).toBe(6 + 4096);
  });

  it('page cache: slot by global ram_addr, insert refuses a page used within two generations, zero pages overwrite', () => {
    const c = new XbzrleCache(4 * TP);
    const page = new Uint8Array(TP).fill(9);
    expect(c.slots).toBe(4);
    expect(c.slotOf(5 * TP)).toBe(1);
    expect(c.insert(1 * TP, page, 0, 1)).toBe(true);
    expect(c.isCached(1 * TP, 1)).toBe(true);
    expect(c.insert(5 * TP, page, 0, 2)).toBe(false); // age 1 + 2 > 2
    expect(c.isCached(1 * TP, 2)).toBe(true); // hit refreshes the age to 2
    expect(c.insert(5 * TP, page, 0, 3)).toBe(false); // 2 + 2 > 3
    expect(c.insert(5 * TP, page, 0, 4)).toBe(true); // 2 + 2 > 4 is false
    expect(c.isCached(1 * TP, 4)).toBe(false);
    expect(c.insertZero(5 * TP, 4)).toBe(true);
    expect(c.data.subarray(TP, 2 * TP).every((b) => b === 0)).toBe(true);
    expect(() => new XbzrleCache(3 * TP)).toThrow("Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size");
  });
});

describe('AutoConverge', () => {
  it('throttles on the second period with dirty > threshold% of transferred, then steps up to max', () => {
    const applied: number[] = [];
    const params = { ...DEFAULT_PARAMETERS, cpuThrottleInitial: 20, cpuThrottleIncrement: 30, maxCpuThrottle: 70 };
    const ac = new AutoConverge(() => params, (p) => applied.push(p));
    expect(ac.onPeriod(1000, 600)).toBe(false); // 600 > 500: count 1
    expect(ac.onPeriod(1000, 400)).toBe(false); // quiet: count stays 1 (QEMU does not reset it)
    expect(ac.onPeriod(1000, 600)).toBe(true); // count 2 → initial
    expect(ac.percentage).toBe(20);
    ac.onPeriod(1000, 900);
    ac.onPeriod(1000, 900);
    expect(ac.percentage).toBe(50);
    ac.onPeriod(1000, 900);
    ac.onPeriod(1000, 900);
    expect(ac.percentage).toBe(70);
    ac.onPeriod(1000, 900);
    ac.onPeriod(1000, 900);
    expect(ac.percentage).toBe(70);
    ac.stop();
    expect(applied).toEqual([20, 50, 70, 70, 0]);
  });
});
