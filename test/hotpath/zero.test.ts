import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { isZeroPage } from '../../src/hotpath/api.js';
import { isZeroPageRef } from '../../src/hotpath/reference.js';

const P = 4096;
const hp = Hotpath.create();
const PAGE = hp.alloc(P + 64);

describe('zero-page test: SIMD = scalar = reference', () => {
  it('detects a single non-zero byte at every position of a page', () => {
    const mem = hp.bytes();
    const ref = new Uint8Array(P);
    mem.fill(0, PAGE, PAGE + P + 64);
    mem[PAGE + P] = 1; // just past the page: must not matter
    const wrong: number[] = [];
    for (let i = 0; i < P; i++) {
      mem[PAGE + i] = 0x80;
      ref[i] = 0x80;
      if (hp.isZeroPageAt(PAGE) || hp.isZeroPageScalarAt(PAGE) || isZeroPageRef(ref)) wrong.push(i);
      mem[PAGE + i] = 0;
      ref[i] = 0;
    }
    expect(wrong).toEqual([]);
    expect(hp.isZeroPageAt(PAGE)).toBe(true);
    expect(hp.isZeroPageScalarAt(PAGE)).toBe(true);
    expect(isZeroPageRef(ref)).toBe(true);
  });
  it('handles lengths that are not multiples of 64 or 8', () => {
    const mem = hp.bytes();
    mem.fill(0, PAGE, PAGE + P);
    for (const len of [1, 7, 8, 9, 63, 65, 100, 4095]) {
      mem[PAGE + len - 1] = 3;
      expect([hp.isZeroPageAt(PAGE, len), hp.isZeroPageScalarAt(PAGE, len)]).toEqual([false, false]);
      expect([hp.isZeroPageAt(PAGE, len - 1), hp.isZeroPageScalarAt(PAGE, len - 1)]).toEqual([true, true]);
      mem[PAGE + len - 1] = 0;
    }
  });
  it('convenience isZeroPage works on any Uint8Array', () => {
    const page = new Uint8Array(P);
    expect(isZeroPage(page)).toBe(true);
    page[4095] = 1;
    expect(isZeroPage(page)).toBe(false);
    expect(isZeroPage(page.subarray(1, 4095))).toBe(true);
  });
});
