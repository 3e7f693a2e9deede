import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import {
  bitmapCollectRef,
  bitmapComplementRangeRef,
  bitmapCopyMaskedRef,
  bitmapCountRef,
  bitmapFillRangeRef,
  bitmapFindNextRef,
  bitmapFindNextZeroRef,
  bitmapSyncClearRef,
  bitmapWords32,
} from '../../src/hotpath/reference.js';
import { rng } from './helpers.js';

const hp = Hotpath.create({ initialBytes: 4 << 20 });
const MAXBITS = 20000;
const BYTES = bitmapWords32(MAXBITS) * 4;
const A = hp.alloc(BYTES, 64);
const B = hp.alloc(BYTES, 64);
const OUT = hp.alloc(MAXBITS * 4, 64);
const SIZES = [1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4096, 19999];

function view(off: number, nbits: number): Uint32Array {
  return new Uint32Array(hp.memory.buffer, off, bitmapWords32(nbits));
}

/** Fills the bitmap at off with random bits of the given density; padding stays 0. */
function randomBitmap(off: number, nbits: number, density: number, r: () => number): Uint32Array {
  const v = view(off, nbits);
  v.fill(0);
  // runs of ones and zeros to exercise full words too
  let b = 0;
  while (b < nbits) {
    const on = r() < density;
    const len = r() < 0.2 ? 1 + ((r() * 200) | 0) : 1 + ((r() * 3) | 0);
    if (on) bitmapFillRangeRef(v, b, Math.min(nbits, b + len), true);
    b += len;
  }
  return v;
}

function fail(msg: string): never {
  throw new Error(msg);
}

describe('bitmap ops: WASM vs reference', () => {
  const r = rng(2024);
  it('findNext / findNextZero from every index (random bitmaps, odd sizes)', () => {
    for (const nbits of SIZES) {
      for (const density of [0, 0.01, 0.5, 0.99, 1]) {
        const v = randomBitmap(A, nbits, density, r);
        const copy = v.slice();
        const step = nbits > 2000 ? 7 : 1;
        for (let from = -1; from <= nbits + 1; from += step) {
          const a = hp.bitmapFindNext(A, nbits, from);
          const e = bitmapFindNextRef(copy, nbits, from);
          if (a !== e) fail(`findNext nbits=${nbits} d=${density} from=${from}: ${a} != ${e}`);
          const z = hp.bitmapFindNextZero(A, nbits, from);
          const ez = bitmapFindNextZeroRef(copy, nbits, from);
          if (z !== ez) fail(`findNextZero nbits=${nbits} d=${density} from=${from}: ${z} != ${ez}`);
        }
      }
    }
    // a fully set bitmap: no zero; an empty one: no set bit
    view(A, 130).fill(0);
    hp.bitmapSetRange(A, 0, 130);
    expect(hp.bitmapFindNextZero(A, 130, 0)).toBe(130);
    expect(hp.bitmapCount(A, 0, 130)).toBe(130);
    hp.bitmapClearRange(A, 0, 130);
    expect(hp.bitmapFindNext(A, 130, 0)).toBe(130);
  });

  it('collect (and its scalar twin) lists every set bit in order, in batches, never past max', () => {
    const collectors = [
      (from: number, nbits: number, max: number) => hp.bitmapCollect(A, nbits, from, OUT, max),
      (from: number, nbits: number, max: number) => hp.wasm.bitmapCollectScalar(A, nbits, from, OUT, max),
    ];
    const guard = new Uint32Array(hp.memory.buffer, OUT, MAXBITS);
    for (const nbits of SIZES) {
      for (const density of [0.3, 0.97]) {
        const v = randomBitmap(A, nbits, density, r);
        const expected: number[] = [];
        for (let b = 0; b < nbits; b++) if ((v[b >>> 5]! >>> (b & 31)) & 1) expected.push(b);
        for (const collect of collectors) {
          for (const batch of [1, 5, 64, 257, 1000, MAXBITS - 300]) {
            const got: number[] = [];
            let from = 0;
            for (;;) {
              guard.fill(0xdeadbeef, batch, batch + 300);
              const n = collect(from, nbits, batch);
              if (guard.subarray(batch, batch + 300).some((x) => x !== 0xdeadbeef)) fail(`collect wrote past max=${batch}`);
              const out = new Uint32Array(hp.memory.buffer, OUT, n);
              got.push(...out);
              if (n < batch) break;
              from = out[n - 1]! + 1;
            }
            if (got.length !== expected.length || got.some((x, i) => x !== expected[i])) {
              fail(`collect nbits=${nbits} batch=${batch}: ${got.length} bits, expected ${expected.length}`);
            }
          }
        }
        const ref = new Uint32Array(nbits);
        expect([...ref.subarray(0, bitmapCollectRef(v, nbits, 0, ref))]).toEqual(expected);
        // starting mid-word
        const from = Math.floor(nbits / 3);
        const n = hp.bitmapCollect(A, nbits, from, OUT, MAXBITS);
        expect([...new Uint32Array(hp.memory.buffer, OUT, n)]).toEqual(expected.filter((b) => b >= from));
      }
    }
  });

  it('count over random ranges', () => {
    for (const nbits of SIZES) {
      const v = randomBitmap(A, nbits, 0.4, r);
      for (let k = 0; k < 300; k++) {
        const s = (r() * (nbits + 1)) | 0;
        const e = s + ((r() * (nbits - s + 1)) | 0);
        const a = hp.bitmapCount(A, s, e);
        const x = bitmapCountRef(v, s, e);
        if (a !== x) fail(`count nbits=${nbits} [${s},${e}): ${a} != ${x}`);
      }
    }
  });

  it('setRange / clearRange / complementRange over random ranges', () => {
    for (const nbits of SIZES) {
      const v = randomBitmap(A, nbits, 0.5, r);
      const ref = v.slice();
      const src = randomBitmap(B, nbits, 0.5, r).slice();
      for (let k = 0; k < 200; k++) {
        const s = (r() * (nbits + 1)) | 0;
        const e = s + ((r() * (nbits - s + 1)) | 0);
        const op = k % 3;
        if (op === 0) {
          hp.bitmapSetRange(A, s, e);
          bitmapFillRangeRef(ref, s, e, true);
        } else if (op === 1) {
          hp.bitmapClearRange(A, s, e);
          bitmapFillRangeRef(ref, s, e, false);
        } else {
          hp.bitmapComplementRange(B, A, s, e);
          bitmapComplementRangeRef(src, ref, s, e);
        }
        const cur = view(A, nbits);
        for (let w = 0; w < ref.length; w++) {
          if (cur[w] !== ref[w]) fail(`op ${op} nbits=${nbits} [${s},${e}): word ${w} ${cur[w]} != ${ref[w]}`);
        }
      }
      // padding bits stayed 0 through all of that
      const cur = view(A, nbits);
      for (let b = nbits; b < cur.length * 32; b++) if ((cur[b >>> 5]! >>> (b & 31)) & 1) fail(`padding bit ${b} set`);
    }
  });

  it('"not received → must send": complement of the whole bitmap masks padding', () => {
    const nbits = 100;
    const recv = view(B, nbits);
    recv.fill(0);
    hp.bitmapSetRange(B, 10, 20);
    view(A, nbits).fill(0);
    hp.bitmapComplementRange(B, A, 0, nbits);
    expect(hp.bitmapCount(A, 0, 128)).toBe(90);
    expect(hp.bitmapFindNextZero(A, nbits, 0)).toBe(10);
    expect(hp.bitmapFindNext(A, nbits, 10)).toBe(20);
    expect(view(A, nbits)[3]! >>> 4).toBe(0); // bits 100..127 are padding
  });

  it('copyMasked copies whole 64-bit words and clears padding (RECV_BITMAP layout)', () => {
    for (const nbits of SIZES) {
      const src = view(B, nbits);
      for (let w = 0; w < src.length; w++) src[w] = (r() * 0x100000000) >>> 0; // padding dirty on purpose
      const srcCopy = src.slice();
      hp.bitmapCopyMasked(B, A, nbits);
      const ref = new Uint32Array(src.length);
      bitmapCopyMaskedRef(srcCopy, ref, nbits);
      expect(view(A, nbits)).toEqual(ref);
      // byte p/8 bit p%8 holds page p (LSB first)
      const bytes = new Uint8Array(hp.memory.buffer, A, src.length * 4);
      for (let p = 0; p < nbits; p += 13) {
        const bit = (bytes[p >> 3]! >> (p & 7)) & 1;
        expect(bit).toBe((srcCopy[p >>> 5]! >>> (p & 31)) & 1);
      }
    }
  });

  it('syncClear ORs the log into the bitmap, clears the log, counts newly set bits', () => {
    for (const nbits of SIZES) {
      const log = randomBitmap(A, nbits, 0.2, r);
      const bm = randomBitmap(B, nbits, 0.3, r);
      const logRef = new Int32Array(log.slice().buffer);
      const bmRef = bm.slice();
      const n = hp.bitmapSyncClear(A, B, bitmapWords32(nbits) / 2);
      const nRef = bitmapSyncClearRef(logRef, bmRef);
      expect(n).toBe(nRef);
      expect(view(A, nbits).every((w) => w === 0)).toBe(true);
      expect(view(B, nbits)).toEqual(bmRef);
      // a second sync finds nothing new
      expect(hp.bitmapSyncClear(A, B, bitmapWords32(nbits) / 2)).toBe(0);
    }
  });
});
