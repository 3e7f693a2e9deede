// XBZRLE delta encoding (SPEC.md §4), byte-exact with QEMU 7.2.
// All functions work on byte offsets into the imported (shared) linear memory.
// No allocation, no GC objects.

/** Largest value a "small" ULEB128 can hold (14 bits). */
const ULEB_MAX: i32 = 0x3fff;

/** Decoder error codes (negative return values of xbzrleDecode). */
export const DECODE_ERR_SHORT_ZRUN: i32 = -1; // fewer than 2 bytes where a zrun starts
export const DECODE_ERR_BAD_ZRUN_ULEB: i32 = -2; // zrun ULEB longer than 14 bits
export const DECODE_ERR_ZERO_ZRUN: i32 = -3; // zrun 0 after the first tuple
export const DECODE_ERR_ZRUN_PAST_PAGE: i32 = -4; // d + zrun > dlen
export const DECODE_ERR_SHORT_NZRUN: i32 = -5; // fewer than 2 bytes where a nzrun starts
export const DECODE_ERR_BAD_NZRUN_ULEB: i32 = -6; // nzrun ULEB longer than 14 bits
export const DECODE_ERR_ZERO_NZRUN: i32 = -7; // nzrun 0
export const DECODE_ERR_NZRUN_PAST_PAGE: i32 = -8; // d + nzrun > dlen
export const DECODE_ERR_NZRUN_PAST_INPUT: i32 = -9; // i + nzrun > slen

// @ts-ignore: decorator
@inline
function ulebPut(dst: usize, v: i32): i32 {
  if (v < 0x80) {
    store<u8>(dst, <u8>v);
    return 1;
  }
  store<u8>(dst, <u8>((v & 0x7f) | 0x80));
  store<u8>(dst, <u8>(v >> 7), 1);
  return 2;
}

// @ts-ignore: decorator
@inline
function copyBytes(dst: usize, src: usize, n: i32): void {
  if (n < 32) {
    for (let k = 0; k < n; k++) store<u8>(dst + <usize>k, load<u8>(src + <usize>k));
  } else {
    memory.copy(dst, src, <usize>n);
  }
}

// -------------------------------------------------------------- scalar scans

/** First index >= i where a[] != b[], 8 bytes at a time (scalar twin). */
// @ts-ignore: decorator
@inline
function firstDiffScalar(a: usize, b: usize, i: i32, n: i32): i32 {
  while (i + 8 <= n) {
    const x = load<u64>(a + <usize>i) ^ load<u64>(b + <usize>i);
    if (x != 0) return i + <i32>(ctz<u64>(x) >> 3);
    i += 8;
  }
  while (i < n && load<u8>(a + <usize>i) == load<u8>(b + <usize>i)) i++;
  return i;
}

/** First index >= i where a[] == b[], byte at a time (scalar twin). */
// @ts-ignore: decorator
@inline
function firstEqualScalar(a: usize, b: usize, i: i32, n: i32): i32 {
  while (i < n && load<u8>(a + <usize>i) != load<u8>(b + <usize>i)) i++;
  return i;
}

// ------------------------------------------------------------------ encoders
// The overflow checks sit exactly where QEMU's encoder has them (SPEC §4.1.8):
// (1) d + 2 > dlen at the start of every tuple, (2) after the zrun ULEB,
// (3) d + nzrun > dlen after the nzrun ULEB.

/** Equal-byte mask of the 64 bytes at a+pos / b+pos (bit t: byte pos+t equal). */
// @ts-ignore: decorator
@inline
function eqMask64(a: usize, b: usize, pos: i32): u64 {
  const pa = a + <usize>pos;
  const pb = b + <usize>pos;
  const m0 = <u64>i8x16.bitmask(i8x16.eq(v128.load(pa), v128.load(pb)));
  const m1 = <u64>i8x16.bitmask(i8x16.eq(v128.load(pa, 16), v128.load(pb, 16)));
  const m2 = <u64>i8x16.bitmask(i8x16.eq(v128.load(pa, 32), v128.load(pb, 32)));
  const m3 = <u64>i8x16.bitmask(i8x16.eq(v128.load(pa, 48), v128.load(pb, 48)));
  return m0 | (m1 << 16) | (m2 << 32) | (m3 << 48);
}

/** True if the 64 bytes at a+pos and b+pos are all equal. */
// @ts-ignore: decorator
@inline
function equal64(a: usize, b: usize, pos: i32): bool {
  const pa = a + <usize>pos;
  const pb = b + <usize>pos;
  const x = v128.or(
    v128.or(v128.xor(v128.load(pa), v128.load(pb)), v128.xor(v128.load(pa, 16), v128.load(pb, 16))),
    v128.or(v128.xor(v128.load(pa, 32), v128.load(pb, 32)), v128.xor(v128.load(pa, 48), v128.load(pb, 48))),
  );
  return !v128.any_true(x);
}

/**
 * Encodes `newPtr` against `oldPtr` (slen bytes, slen <= 16384) into dst
 * (at most dlen bytes). Returns the encoded length, 0 if unchanged, -1 on
 * overflow. SIMD version: equal 64-byte blocks are skipped with one vector
 * test; elsewhere a 64-bit "equal" mask of a 64-byte window is built once and
 * every run boundary inside it is found with ctz, so short runs cost bit
 * operations, not reloads or byte loops. slen < 64 goes to the scalar twin.
 */
export function xbzrleEncodeSimd(oldPtr: usize, newPtr: usize, slen: i32, dst: usize, dlen: i32): i32 {
  if (slen < 64) return xbzrleEncodeScalar(oldPtr, newPtr, slen, dst, dlen);
  let i = 0;
  let d = 0;
  let wpos = -64; // the window covers bytes [wpos, wpos + 64)
  let weq: u64 = 0; // bit t set: byte wpos + t is equal in both pages
  while (i < slen) {
    if (d + 2 > dlen) return -1;
    // zero run: first differing byte at or after i
    let j = i;
    while (true) {
      if (j < wpos + 64) {
        const m = ~weq >> <u64>(j - wpos);
        if (m != 0) {
          j += <i32>ctz<u64>(m);
          break;
        }
        j = wpos + 64;
      }
      while (j + 64 <= slen && equal64(oldPtr, newPtr, j)) j += 64;
      if (j >= slen) break;
      wpos = j + 64 <= slen ? j : slen - 64;
      weq = eqMask64(oldPtr, newPtr, wpos);
    }
    if (j > slen) j = slen;
    const zrun = j - i;
    if (zrun == slen) return 0;
    if (j == slen) return d;
    d += ulebPut(dst + <usize>d, zrun);
    if (d + 2 > dlen) return -1;
    // non-zero run: first equal byte at or after j (j is inside the window)
    let k = j;
    while (true) {
      const m = weq >> <u64>(k - wpos);
      if (m != 0) {
        k += <i32>ctz<u64>(m);
        break;
      }
      k = wpos + 64;
      if (k >= slen) break;
      wpos = k + 64 <= slen ? k : slen - 64;
      weq = eqMask64(oldPtr, newPtr, wpos);
    }
    const nz = k - j;
    d += ulebPut(dst + <usize>d, nz);
    if (d + nz > dlen) return -1;
    copyBytes(dst + <usize>d, newPtr + <usize>j, nz);
    d += nz;
    i = k;
  }
  return d;
}

/** Scalar twin of xbzrleEncodeSimd (same contract, same output). */
export function xbzrleEncodeScalar(oldPtr: usize, newPtr: usize, slen: i32, dst: usize, dlen: i32): i32 {
  let i = 0;
  let d = 0;
  while (i < slen) {
    if (d + 2 > dlen) return -1;
    const j = firstDiffScalar(oldPtr, newPtr, i, slen);
    const zrun = j - i;
    if (zrun == slen) return 0;
    if (j == slen) return d;
    d += ulebPut(dst + <usize>d, zrun);
    if (d + 2 > dlen) return -1;
    const k = firstEqualScalar(oldPtr, newPtr, j, slen);
    const nz = k - j;
    d += ulebPut(dst + <usize>d, nz);
    if (d + nz > dlen) return -1;
    copyBytes(dst + <usize>d, newPtr + <usize>j, nz);
    d += nz;
    i = k;
  }
  return d;
}

// ------------------------------------------------------------------- decoder

/**
 * Applies the encoding at src (slen bytes) onto dst (dlen bytes), validating
 * as QEMU does (SPEC §4.2). Returns d (end of the last changed run) or one of
 * the negative DECODE_ERR_* codes. Never writes outside dst[0..dlen).
 * The input position of an error is left in `decodeErrorPos`.
 */
export function xbzrleDecode(src: usize, slen: i32, dst: usize, dlen: i32): i32 {
  let i = 0;
  let d = 0;
  while (i < slen) {
    if (slen - i < 2) return fail(i, DECODE_ERR_SHORT_ZRUN);
    const tupleStart = i;
    // zrun
    let b0 = <i32>load<u8>(src + <usize>i);
    let count: i32;
    if (b0 < 0x80) {
      count = b0;
      i += 1;
    } else {
      const b1 = <i32>load<u8>(src + <usize>i, 1);
      if (b1 & 0x80) return fail(i, DECODE_ERR_BAD_ZRUN_ULEB);
      count = (b0 & 0x7f) | (b1 << 7);
      i += 2;
    }
    if (tupleStart != 0 && count == 0) return fail(tupleStart, DECODE_ERR_ZERO_ZRUN);
    d += count;
    if (d > dlen) return fail(tupleStart, DECODE_ERR_ZRUN_PAST_PAGE);
    // nzrun
    if (slen - i < 2) return fail(i, DECODE_ERR_SHORT_NZRUN);
    const nzStart = i;
    b0 = <i32>load<u8>(src + <usize>i);
    if (b0 < 0x80) {
      count = b0;
      i += 1;
    } else {
      const b1 = <i32>load<u8>(src + <usize>i, 1);
      if (b1 & 0x80) return fail(i, DECODE_ERR_BAD_NZRUN_ULEB);
      count = (b0 & 0x7f) | (b1 << 7);
      i += 2;
    }
    if (count == 0) return fail(nzStart, DECODE_ERR_ZERO_NZRUN);
    if (d + count > dlen) return fail(nzStart, DECODE_ERR_NZRUN_PAST_PAGE);
    if (i + count > slen) return fail(nzStart, DECODE_ERR_NZRUN_PAST_INPUT);
    copyBytes(dst + <usize>d, src + <usize>i, count);
    d += count;
    i += count;
  }
  return d;
}

let errorPos: i32 = 0;

// @ts-ignore: decorator
@inline
function fail(pos: i32, code: i32): i32 {
  errorPos = pos;
  return code;
}

/** Input offset of the item that made the last xbzrleDecode call fail. */
export function decodeErrorPos(): i32 {
  return errorPos;
}

/** Encodes v (0..0x3fff) as a small ULEB128 at dst; returns bytes written, -1 if out of range. */
export function ulebEncodeSmall(dst: usize, v: i32): i32 {
  if (v < 0 || v > ULEB_MAX) return -1;
  return ulebPut(dst, v);
}

/**
 * Decodes a small ULEB128 at src; stores the value as u32 at out. Returns the
 * byte count (1 or 2) or -1 if the second byte has its top bit set (value at
 * out left unchanged).
 */
export function ulebDecodeSmall(src: usize, out: usize): i32 {
  const b0 = <i32>load<u8>(src);
  if (b0 < 0x80) {
    store<u32>(out, b0);
    return 1;
  }
  const b1 = <i32>load<u8>(src, 1);
  if (b1 & 0x80) return -1;
  store<u32>(out, (b0 & 0x7f) | (b1 << 7));
  return 2;
}
