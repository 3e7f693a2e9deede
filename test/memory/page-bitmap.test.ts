import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { PageBitmap } from '../../src/memory/index.js';
import { ProtocolError } from '../../src/errors.js';

const hp = Hotpath.create({ initialBytes: 2 << 20 });

/** Set bits as a sorted list, by testing every bit. */
function bits(bm: PageBitmap): number[] {
  const out: number[] = [];
  for (let p = 0; p < bm.nbits; p++) if (bm.test(p)) out.push(p);
  return out;
}

describe('PageBitmap', () => {
  it('set/clear/test, ranges, count and bounds', () => {
    const bm = PageBitmap.create(hp, 200);
    bm.set(0);
    bm.set(199);
    bm.setRange(60, 10); // 60..69, crosses the 64-bit word boundary
    expect(bits(bm)).toEqual([0, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 199]);
    bm.clear(0);
    bm.clearRange(62, 4);
    expect(bits(bm)).toEqual([60, 61, 66, 67, 68, 69, 199]);
    expect(bm.count()).toBe(7);
    expect(bm.count(61, 67)).toBe(2);
    expect(() => bm.set(200)).toThrow(/outside bitmap of 200 pages/);
    expect(() => bm.setRange(190, 11)).toThrow(/outside bitmap/);
    bm.setAll();
    expect(bm.count()).toBe(200);
    expect(bm.words32()[7]! >>> 8).toBe(0); // bits 200..255 are padding
    bm.clearAll();
    expect(bm.count()).toBe(0);
  });

  it('findNext / nextRun walk maximal runs (postcopy discard ranges)', () => {
    const bm = PageBitmap.create(hp, 300);
    bm.setRange(5, 3);
    bm.setRange(63, 66); // 63..128
    bm.set(299);
    const runs = [];
    for (let r = bm.nextRun(0); r; r = bm.nextRun(r.start + r.length)) runs.push(r);
    expect(runs).toEqual([
      { start: 5, length: 3 },
      { start: 63, length: 66 },
      { start: 299, length: 1 },
    ]);
    expect(bm.findNext(8)).toBe(63);
    expect(bm.findNext(300)).toBe(300);
    expect(bm.findNextZero(63)).toBe(129);
    expect(bm.nextRun(300)).toBeNull();
  });

  it('invertFrom: "not received → must send" with padding kept 0', () => {
    const recv = PageBitmap.create(hp, 70);
    recv.setRange(0, 32);
    const send = PageBitmap.create(hp, 70);
    send.invertFrom(recv);
    expect(send.count()).toBe(38);
    expect(send.findNext(0)).toBe(32);
    // bits 32..69: bytes 4..7 all ones, byte 8 = bits 64..69, bytes 9..15 padding
    expect([...send.toLeBytes()]).toEqual([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x3f, 0, 0, 0, 0, 0, 0, 0]);
    // a sub-range only
    send.clearAll();
    send.invertFrom(recv, 30, 40);
    expect(bits(send)).toEqual([32, 33, 34, 35, 36, 37, 38, 39]);
  });

  it('LE layout: the captured /rom@etc/acpi/tables reply (32 pages → S=8, ff ff ff ff 00 00 00 00)', () => {
    const bm = PageBitmap.create(hp, 32);
    bm.setRange(0, 32);
    expect(bm.leByteLength).toBe(8);
    expect([...bm.toLeBytes()]).toEqual([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    expect(PageBitmap.byteLength(38400)).toBe(4800); // pc.ram 150 MiB in the capture
    expect(PageBitmap.byteLength(65)).toBe(16);
  });

  it('toLeBytes/fromLeBytes round trip; page p is byte p/8 bit p%8; padding cleared; size checked', () => {
    const a = PageBitmap.create(hp, 1001);
    for (let p = 0; p < 1001; p += 3) a.set(p);
    const le = a.toLeBytes();
    expect(le.length).toBe(128);
    for (let p = 0; p < 1001; p++) expect(((le[p >> 3]! >> (p & 7)) & 1) === 1).toBe(p % 3 === 0);
    const b = PageBitmap.create(hp, 1001);
    const dirty = le.slice();
    dirty[127] = 0xff; // padding bits set by a misbehaving peer
    b.fromLeBytes(dirty);
    expect(b.toLeBytes()).toEqual(le);
    expect(bits(b)).toEqual(bits(a));
    let err: unknown;
    try {
      b.fromLeBytes(new Uint8Array(120));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProtocolError);
    expect(String((err as Error).message)).toMatch(/bitmap size mismatch/);
  });

  it('collect / forEachSet enumerate set bits in order across batches', () => {
    const bm = PageBitmap.create(hp, 10_000);
    const expected: number[] = [];
    for (let p = 0; p < 10_000; p++) {
      if (p % 3 === 0 || (p > 5000 && p < 5100)) {
        bm.set(p);
        expected.push(p);
      }
    }
    const seen: number[] = [];
    bm.forEachSet((p) => seen.push(p));
    expect(seen).toEqual(expected);
    expect([...bm.collect(4999, 5)]).toEqual(expected.filter((p) => p >= 4999).slice(0, 5));
    expect(bm.collect(9_999).length).toBe(1);
    const empty = PageBitmap.create(hp, 100);
    expect(empty.collect().length).toBe(0);
    expect(() => bm.collect(0, 5000)).toThrow(RangeError);
  });
});
