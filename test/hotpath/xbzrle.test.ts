import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { xbzrleDecode, xbzrleEncode } from '../../src/hotpath/api.js';
import {
  ulebDecodeSmallRef,
  ulebEncodeSmallRef,
  xbzrleDecodeRef,
  xbzrleEncodeRef,
} from '../../src/hotpath/reference.js';
import { ProtocolError } from '../../src/errors.js';
import { randomBytes, range, rng, withChanges } from './helpers.js';

const P = 4096;
const hp = Hotpath.create();
const OLD = hp.alloc(P);
const NEW = hp.alloc(P);
const OUT = hp.alloc(P + 64); // + guard bytes checked below
const PAGE = hp.alloc(P + 64);
const SRC = hp.alloc(4 * P);
const U32 = hp.alloc(8, 8);

const GUARD_EE = Buffer.alloc(P + 64, 0xee);
const GUARD_CC = Buffer.alloc(64, 0xcc);

/** True if mem[start, end) still holds the guard pattern. */
function intact(start: number, end: number, guard: Buffer): boolean {
  return Buffer.from(hp.memory.buffer, start, end - start).equals(guard.subarray(0, end - start));
}

/** Fails the test with `msg` (cheap check; vitest's expect is slow in tight loops). */
function check(ok: boolean, msg: string): void {
  if (!ok) throw new Error(msg);
}

function same(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b;
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Encodes with SIMD, scalar and reference; checks they agree; returns the encoding or null. */
function encode3(oldPage: Uint8Array, newPage: Uint8Array, dlen = P): Uint8Array | null {
  const mem = hp.bytes();
  mem.set(oldPage, OLD);
  mem.set(newPage, NEW);
  mem.fill(0xee, OUT, OUT + P + 64);
  const a = hp.xbzrleEncodeAt(OLD, NEW, OUT, P, dlen);
  const encA = a >= 0 ? mem.slice(OUT, OUT + a) : null;
  check(intact(OUT + (a >= 0 ? a : dlen), OUT + P + 64, GUARD_EE), 'encoder wrote past its output');
  mem.fill(0xee, OUT, OUT + P);
  const b = hp.xbzrleEncodeScalarAt(OLD, NEW, OUT, P, dlen);
  const encB = b >= 0 ? mem.slice(OUT, OUT + b) : null;
  const out = new Uint8Array(P);
  const c = xbzrleEncodeRef(oldPage, newPage, out, dlen);
  const encC = c >= 0 ? out.slice(0, c) : null;
  check(a === b && a === c, `encoders disagree: simd ${a}, scalar ${b}, reference ${c}`);
  check(same(encA, encB) && same(encA, encC), 'encoders produced different bytes');
  return encA;
}

/** Decodes with WASM and reference onto a copy of `base`; checks agreement. */
function decode2(enc: Uint8Array, base: Uint8Array): { r: number; page: Uint8Array; pos: number } {
  const mem = hp.bytes();
  mem.set(base, PAGE);
  mem.fill(0xcc, PAGE + P, PAGE + P + 64);
  mem.set(enc, SRC);
  const r = hp.xbzrleDecodeAt(SRC, enc.length, PAGE);
  const pos = hp.lastDecodeErrorPos();
  check(intact(PAGE + P, PAGE + P + 64, GUARD_CC), 'decoder wrote past the page');
  const page = mem.slice(PAGE, PAGE + P);
  const refPage = base.slice();
  const ref = xbzrleDecodeRef(enc, refPage);
  check(ref.result === r, `decoders disagree: wasm ${r}, reference ${ref.result}`);
  if (r < 0) check(ref.errorPos === pos, `error positions differ: wasm ${pos}, reference ${ref.errorPos}`);
  check(same(refPage, page), 'decoders produced different pages');
  return { r, page, pos };
}

function roundTrip(oldPage: Uint8Array, newPage: Uint8Array): Uint8Array | null {
  const enc = encode3(oldPage, newPage);
  if (enc && enc.length > 0) {
    const { r, page } = decode2(enc, oldPage);
    check(same(page, newPage), 'round trip did not reproduce the new page');
    let last = P;
    while (last > 0 && oldPage[last - 1] === newPage[last - 1]) last--;
    check(r === last, `decode returned ${r}, end of last changed run is ${last}`);
  }
  return enc;
}

describe('ULEB128 small (test-xbzrle.c uleb)', () => {
  it('round-trips 0..0x3fff with 1 byte below 0x80 and 2 above, WASM and reference', () => {
    const mem = hp.bytes();
    const buf = new Uint8Array(2);
    const u32 = new Uint32Array(mem.buffer, U32, 1);
    for (let v = 0; v <= 0x3fff; v++) {
      const n = hp.wasm.ulebEncodeSmall(SRC, v);
      check(ulebEncodeSmallRef(buf, 0, v) === n && n === (v < 0x80 ? 1 : 2), `uleb length of ${v}`);
      check(mem[SRC] === buf[0] && (n === 1 || mem[SRC + 1] === buf[1]), `uleb bytes of ${v}`);
      check(hp.wasm.ulebDecodeSmall(SRC, U32) === n && u32[0] === v, `uleb decode of ${v}`);
      const d = ulebDecodeSmallRef(buf, 0);
      check(d !== null && d[0] === v && d[1] === n, `reference uleb decode of ${v}`);
    }
    expect(hp.wasm.ulebEncodeSmall(SRC, 0x4000)).toBe(-1);
  });
  it('rejects 80 80 and leaves the output value untouched', () => {
    const mem = hp.bytes();
    mem[SRC] = 0x80;
    mem[SRC + 1] = 0x80;
    new Uint32Array(mem.buffer, U32, 1)[0] = 0;
    expect(hp.wasm.ulebDecodeSmall(SRC, U32)).toBe(-1);
    expect(new Uint32Array(mem.buffer, U32, 1)[0]).toBe(0);
    expect(ulebDecodeSmallRef(Uint8Array.of(0x80, 0x80), 0)).toBeNull();
  });
});

describe('XBZRLE encode: QEMU unit-test facts (SPEC §4.4)', () => {
  it('unchanged pages encode to length 0', () => {
    const r = rng(7);
    const page = new Uint8Array(P);
    page.set(randomBytes(r, 500), 1001);
    page[1000] = 42;
    page[3000] = 24;
    expect(encode3(page, page.slice())!.length).toBe(0);
    const other = randomBytes(r, P);
    expect(encode3(other, other.slice())!.length).toBe(0);
  });
  it('zero page vs last byte 1 → FF 1F 01 01, decode returns 4096', () => {
    const old = new Uint8Array(P);
    const neu = new Uint8Array(P);
    neu[P - 1] = 1;
    const enc = encode3(old, neu)!;
    expect([...enc]).toEqual([0xff, 0x1f, 0x01, 0x01]);
    const { r, page } = decode2(enc, old);
    expect(r).toBe(4096);
    expect(page).toEqual(neu);
  });
  it('byte 0 differs → 00 01 <byte> (captured example)', () => {
    const old = new Uint8Array(P).fill(0x58);
    const neu = old.slice();
    neu[0] = 0x33;
    expect([...encode3(old, neu)!]).toEqual([0x00, 0x01, 0x33]);
  });
  it('every even byte 0..4092 = 1 overflows (-1)', () => {
    const old = new Uint8Array(P);
    const neu = new Uint8Array(P);
    for (let i = 0; i < 4094; i += 2) neu[i] = 1;
    expect(encode3(old, neu)).toBeNull();
    expect(xbzrleEncode(old, neu)).toBeNull();
  });
  it('10 000 random pairs in the test-xbzrle.c shape round-trip with decode < 4096', () => {
    const r = rng(12345);
    for (let it = 0; it < 10000; it++) {
      const old = new Uint8Array(P);
      const neu = new Uint8Array(P);
      const diffLen = 1 + ((r() * (P - 1010)) | 0);
      for (let i = 0; i < diffLen; i++) {
        old[1001 + i] = i & 0xff;
        neu[1001 + i] = (i + 4) & 0xff;
      }
      neu[1001 + diffLen + 3] = 103;
      neu[1001 + diffLen + 5] = 105;
      const enc = roundTrip(old, neu);
      check(enc !== null && enc.length > 0, `iteration ${it}: no encoding`);
      const { r: d } = decode2(enc!, old);
      check(d < 4096, `iteration ${it}: decode returned ${d}`);
    }
  });
});

describe('XBZRLE encode: SIMD = scalar = reference', () => {
  const r = rng(99);
  const base = randomBytes(r, P);
  const cases: Array<[string, number[]]> = [
    ['first byte', [0]],
    ['last byte', [P - 1]],
    ['first and last', [0, P - 1]],
    ['every byte', range(0, P)],
    ['run crossing 8-byte boundary', range(5, 11)],
    ['run crossing 16-byte boundary', range(13, 19)],
    ['runs ending on 16-byte boundaries', [...range(16, 32), ...range(48, 64)]],
    ['single bytes at 15,16,17,31,32,33', [15, 16, 17, 31, 32, 33]],
    ['equal run of 128 (2-byte ULEB)', [0, 129]],
    ['equal run of 127 (1-byte ULEB)', [0, 128]],
    ['zrun 4095 at the end', [P - 1]],
    ['nzrun 200 in the middle', range(1000, 1200)],
    ['last 16 bytes', range(P - 16, P)],
    ['last 17 bytes', range(P - 17, P)],
    ['bytes 63,64 and 127,128', [63, 64, 127, 128]],
  ];
  for (const [name, idx] of cases) {
    it(name, () => {
      roundTrip(base, withChanges(base, idx));
    });
  }
  it('all-zero pages: identical and one-sided', () => {
    const z = new Uint8Array(P);
    expect(encode3(z, z.slice())!.length).toBe(0);
    roundTrip(z, randomBytes(r, P));
    roundTrip(randomBytes(r, P), z);
  });
  it('random change patterns (500 pairs, clustered and scattered)', () => {
    for (let it = 0; it < 500; it++) {
      const old = randomBytes(r, P);
      const idx: number[] = [];
      const mode = it % 3;
      const density = [0.001, 0.01, 0.1, 0.5][it % 4]!;
      if (mode === 0) {
        for (let i = 0; i < P; i++) if (r() < density) idx.push(i);
      } else {
        let i = (r() * 64) | 0;
        while (i < P) {
          const len = 1 + ((r() * 40) | 0);
          for (let k = i; k < Math.min(P, i + len); k++) idx.push(k);
          i += len + 1 + ((r() * (mode === 1 ? 300 : 20)) | 0);
        }
      }
      roundTrip(old, withChanges(old, idx));
    }
  });
});

describe('XBZRLE overflow boundary (the exact 3-point rule)', () => {
  // k tuples "zrun 1, nzrun 1, byte" cost 3 bytes each; page starts with a diff
  // so the first tuple is "00 01 b" (also 3 bytes).
  function scattered(k: number, tailDiffRun = 0): Uint8Array {
    const neu = new Uint8Array(P);
    for (let t = 0; t < k; t++) neu[2 * t] = 1;
    for (let t = 0; t < tailDiffRun; t++) neu[P - 1 - t] = 2;
    return neu;
  }
  const old = new Uint8Array(P);

  it('pages needing exactly 4096, 4095 and 4097 bytes', () => {
    // k single-byte tuples (3 bytes each) + one tuple with a 2-byte zrun ULEB,
    // a 1-byte nzrun ULEB and L bytes reaching the page end: 3k + 3 + L bytes.
    expect(encode3(old, scattered(1364, 1))!.length).toBe(4096);
    expect(encode3(old, scattered(1363, 3))!.length).toBe(4095);
    // 4097 needed: check 3 (d + nzrun > dlen) fires
    expect(encode3(old, scattered(1364, 2))).toBeNull();
    // the exact-fit page with dlen one short
    expect(encode3(old, scattered(1364, 1), 4095)).toBeNull();
    // 1365 tuples = 4095 bytes, then trailing equal bytes: check 1 (4095 + 2 > 4096) fires
    expect(encode3(old, scattered(1365))).toBeNull();
    expect(encode3(old, scattered(1364))!.length).toBe(4092);
  });
  it('check 1 fires even when the rest of the page is unchanged; check 2 after the zrun', () => {
    const neu = scattered(10); // 10 tuples = 30 bytes, then equal to the end
    expect(encode3(old, neu, 32)!.length).toBe(30);
    expect(encode3(old, neu, 31)).toBeNull(); // d=30: 30 + 2 > 31
    // 11 tuples: at the 11th, d=30 passes check 1 for dlen 32, zrun ULEB → 31,
    // then check 2: 31 + 2 > 32.
    expect(encode3(old, scattered(11), 32)).toBeNull();
    expect(encode3(old, scattered(11), 34)).toBeNull(); // check 1 after the 11th tuple
    expect(encode3(old, scattered(11), 35)!.length).toBe(33);
  });
  it('convenience xbzrleEncode returns null exactly when the WASM encoder overflows', () => {
    expect(xbzrleEncode(old, scattered(1364, 1))!.length).toBe(4096);
    expect(xbzrleEncode(old, scattered(1364, 2))).toBeNull();
    expect(xbzrleEncode(old, old.slice())!.length).toBe(0);
  });
});

describe('XBZRLE decoder validation (SPEC §4.2)', () => {
  const base = new Uint8Array(P).fill(7);
  const bad: Array<[string, number[], number, number]> = [
    // name, bytes, expected code, expected error position
    ['1 byte of input', [0x05], -1, 0],
    ['zrun 0 after the first tuple', [0x00, 0x01, 0xaa, 0x00, 0x01, 0xbb], -3, 3],
    ['nzrun 0', [0x05, 0x00, 0xaa], -7, 1],
    ['3-byte ULEB (80 80 ..) as zrun', [0x80, 0x80, 0x01, 0x01, 0xaa], -2, 0],
    ['3-byte ULEB as nzrun', [0x01, 0x80, 0x80, 0x01], -6, 1],
    ['zrun takes d past 4096', [0x81, 0x20, 0x01, 0xaa], -4, 0],
    ['nzrun takes d past 4096', [0xff, 0x1f, 0x02, 0xaa, 0xbb], -8, 2],
    ['nzrun past input end', [0x01, 0x05, 0xaa, 0xbb], -9, 1],
    ['truncated mid-tuple (only zrun)', [0x00, 0x01, 0xaa, 0x05], -1, 3],
    ['truncated after zrun', [0x01, 0x02, 0xaa, 0xbb, 0x05, 0x01], -5, 5],
    ['nzrun ULEB but no data', [0x00, 0x01, 0xaa, 0x05, 0x02], -5, 4],
    ['2-byte zrun with nothing after', [0x81, 0x01], -5, 2],
  ];
  for (const [name, bytes, code, pos] of bad) {
    it(`rejects ${name}`, () => {
      const { r, pos: p } = decode2(Uint8Array.from(bytes), base);
      expect(r).toBe(code);
      expect(p).toBe(pos);
      const page = base.slice();
      let err: unknown;
      try {
        xbzrleDecode(Uint8Array.from(bytes), page);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as ProtocolError).offset).toBe(pos);
      expect((err as ProtocolError).message).toContain('Failed to load XBZRLE page - decode error!');
    });
  }
  it('accepts a non-canonical 2-byte ULEB (80 00 = 0) as the first zrun, like QEMU', () => {
    const { r, page } = decode2(Uint8Array.of(0x80, 0x00, 0x01, 0x09), base);
    expect(r).toBe(1);
    expect(page[0]).toBe(9);
  });
  it('empty input decodes to 0 and leaves the page alone', () => {
    const page = base.slice();
    expect(xbzrleDecode(new Uint8Array(0), page)).toBe(0);
    expect(page).toEqual(base);
  });
  it('a run ending exactly at 4096 is accepted', () => {
    const enc = Uint8Array.of(0xfe, 0x1f, 0x02, 0x01, 0x02);
    const page = base.slice();
    expect(xbzrleDecode(enc, page)).toBe(4096);
    expect(page[4094]).toBe(1);
    expect(page[4095]).toBe(2);
  });
});

describe('XBZRLE on other page lengths (convenience API vs reference)', () => {
  it('lengths that are not multiples of 16 (scalar fallback) and 16384', () => {
    const r = rng(5);
    for (const n of [1, 8, 15, 17, 100, 1000, 16384]) {
      for (let t = 0; t < 20; t++) {
        const old = randomBytes(r, n);
        const neu = old.slice();
        for (let i = 0; i < n; i++) if (r() < 0.05 * (t % 4)) neu[i] = neu[i]! ^ 0x11;
        const out = new Uint8Array(n);
        const refLen = xbzrleEncodeRef(old, neu, out, n);
        const enc = xbzrleEncode(old, neu);
        check((enc === null ? -1 : enc.length) === refLen, `length ${n}: ours ${enc?.length}, reference ${refLen}`);
        if (enc && enc.length > 0) {
          check(same(enc, out.subarray(0, refLen)), `length ${n}: encodings differ`);
          const page = old.slice();
          xbzrleDecode(enc, page);
          check(same(page, neu), `length ${n}: round trip failed`);
        }
      }
    }
    expect(() => xbzrleEncode(new Uint8Array(16385), new Uint8Array(16385))).toThrow(RangeError);
  });
});
