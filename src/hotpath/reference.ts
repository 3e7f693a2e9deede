/**
 * Plain-TypeScript reference implementations of every hot-path operation.
 * Tests use them as an oracle for the WASM module; the benchmark uses them as
 * the "plain JS" baseline. Same contracts and return codes as the WASM side.
 * Bitmaps here are Uint32Array views of the same little-endian bit layout
 * (bit p = word32 p>>5, bit p&31), whose length is a multiple of 2 words.
 */

/** Encodes v (0..0x3fff) at out[pos]; returns bytes written (1 or 2), -1 if out of range. */
export function ulebEncodeSmallRef(out: Uint8Array, pos: number, v: number): number {
  if (v < 0 || v > 0x3fff) return -1;
  if (v < 0x80) {
    out[pos] = v;
    return 1;
  }
  out[pos] = (v & 0x7f) | 0x80;
  out[pos + 1] = v >> 7;
  return 2;
}

/** Decodes a small ULEB128 at src[pos]: [value, byteCount] or null if longer than 14 bits. */
export function ulebDecodeSmallRef(src: Uint8Array, pos: number): [number, number] | null {
  const b0 = src[pos]!;
  if (b0 < 0x80) return [b0, 1];
  const b1 = src[pos + 1]!;
  if (b1 & 0x80) return null;
  return [(b0 & 0x7f) | (b1 << 7), 2];
}

/**
 * XBZRLE-encodes `newPage` against `oldPage` into `out` (at most dlen bytes).
 * Returns the length, 0 if unchanged, -1 on overflow (QEMU's rule, SPEC §4.1).
 * Equal runs are scanned 4 bytes at a time when both pages are 4-aligned.
 */
export function xbzrleEncodeRef(oldPage: Uint8Array, newPage: Uint8Array, out: Uint8Array, dlen = out.length): number {
  const slen = newPage.length;
  const aligned = oldPage.byteOffset % 4 === 0 && newPage.byteOffset % 4 === 0 && slen % 4 === 0;
  const o32 = aligned ? new Uint32Array(oldPage.buffer, oldPage.byteOffset, slen >> 2) : null;
  const n32 = aligned ? new Uint32Array(newPage.buffer, newPage.byteOffset, slen >> 2) : null;
  let i = 0;
  let d = 0;
  while (i < slen) {
    if (d + 2 > dlen) return -1;
    let j = i;
    if (o32 && n32) {
      while (j & 3 && j < slen && oldPage[j] === newPage[j]) j++;
      if ((j & 3) === 0) {
        let w = j >> 2;
        const nw = slen >> 2;
        while (w < nw && o32[w] === n32[w]) w++;
        j = w << 2;
      }
    }
    while (j < slen && oldPage[j] === newPage[j]) j++;
    const zrun = j - i;
    if (zrun === slen) return 0;
    if (j === slen) return d;
    d += ulebEncodeSmallRef(out, d, zrun);
    if (d + 2 > dlen) return -1;
    let k = j;
    while (k < slen && oldPage[k] !== newPage[k]) k++;
    const nz = k - j;
    d += ulebEncodeSmallRef(out, d, nz);
    if (d + nz > dlen) return -1;
    for (let t = 0; t < nz; t++) out[d + t] = newPage[j + t]!;
    d += nz;
    i = k;
  }
  return d;
}

/** Result of {@link xbzrleDecodeRef}: d (>= 0) or a negative code, and where it failed. */
export interface DecodeResult {
  result: number;
  errorPos: number;
}

/**
 * Applies `src` onto `page` with QEMU's validation (SPEC §4.2). Returns d or
 * the same negative codes as the WASM decoder (-1..-9), with the input position.
 */
export function xbzrleDecodeRef(src: Uint8Array, page: Uint8Array): DecodeResult {
  const slen = src.length;
  const dlen = page.length;
  let i = 0;
  let d = 0;
  const fail = (code: number, pos: number): DecodeResult => ({ result: code, errorPos: pos });
  while (i < slen) {
    if (slen - i < 2) return fail(-1, i);
    const tupleStart = i;
    const z = ulebDecodeSmallRef(src, i);
    if (!z) return fail(-2, i);
    i += z[1];
    if (tupleStart !== 0 && z[0] === 0) return fail(-3, tupleStart);
    d += z[0];
    if (d > dlen) return fail(-4, tupleStart);
    if (slen - i < 2) return fail(-5, i);
    const nzStart = i;
    const nz = ulebDecodeSmallRef(src, i);
    if (!nz) return fail(-6, i);
    const count = nz[0];
    i += nz[1];
    if (count === 0) return fail(-7, nzStart);
    if (d + count > dlen) return fail(-8, nzStart);
    if (i + count > slen) return fail(-9, nzStart);
    page.set(src.subarray(i, i + count), d);
    d += count;
    i += count;
  }
  return { result: d, errorPos: -1 };
}

/** True if every byte is zero (4 bytes at a time when aligned). */
export function isZeroPageRef(page: Uint8Array): boolean {
  let i = 0;
  if (page.byteOffset % 4 === 0) {
    const w = new Uint32Array(page.buffer, page.byteOffset, page.length >> 2);
    for (let k = 0; k < w.length; k++) if (w[k] !== 0) return false;
    i = w.length << 2;
  }
  for (; i < page.length; i++) if (page[i] !== 0) return false;
  return true;
}

// ------------------------------------------------------------------ bitmaps

function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x);
}

function popcnt32(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

/** Bitmap words (u32) needed for nbits, rounded to whole 64-bit words. */
export function bitmapWords32(nbits: number): number {
  return Math.ceil(nbits / 64) * 2;
}

/** Fetch-and-clear `log` into `bm` (Atomics.exchange on non-zero words); returns newly set bits. */
export function bitmapSyncClearRef(log: Uint32Array | Int32Array, bm: Uint32Array): number {
  let c = 0;
  const atomic = log.buffer instanceof SharedArrayBuffer && log instanceof Int32Array;
  for (let w = 0; w < bm.length; w++) {
    if (log[w] === 0) continue;
    const old = (atomic ? Atomics.exchange(log as Int32Array, w, 0) : log[w]!) >>> 0;
    if (!atomic) log[w] = 0;
    c += popcnt32(old & ~bm[w]!);
    bm[w] = bm[w]! | old;
  }
  return c;
}

/** First set bit >= from, or nbits. */
export function bitmapFindNextRef(bm: Uint32Array, nbits: number, from: number): number {
  if (from >= nbits) return nbits;
  if (from < 0) from = 0;
  let w = from >>> 5;
  let word = bm[w]! & (~0 << (from & 31));
  const nw = (nbits + 31) >>> 5;
  while (word === 0) {
    if (++w >= nw) return nbits;
    word = bm[w]!;
  }
  const r = (w << 5) + ctz32(word);
  return r < nbits ? r : nbits;
}

/** First clear bit >= from, or nbits. */
export function bitmapFindNextZeroRef(bm: Uint32Array, nbits: number, from: number): number {
  if (from >= nbits) return nbits;
  if (from < 0) from = 0;
  let w = from >>> 5;
  let word = ~bm[w]! & (~0 << (from & 31));
  const nw = (nbits + 31) >>> 5;
  while (word === 0) {
    if (++w >= nw) return nbits;
    word = ~bm[w]!;
  }
  const r = (w << 5) + ctz32(word);
  return r < nbits ? r : nbits;
}

/** Writes up to max set-bit indexes >= from into out; returns the count. */
export function bitmapCollectRef(bm: Uint32Array, nbits: number, from: number, out: Uint32Array, max = out.length): number {
  if (from >= nbits || max <= 0) return 0;
  if (from < 0) from = 0;
  const nw = (nbits + 31) >>> 5;
  let n = 0;
  let w = from >>> 5;
  let word = bm[w]! & (~0 << (from & 31));
  for (;;) {
    while (word !== 0) {
      const idx = (w << 5) + ctz32(word);
      if (idx >= nbits) return n;
      out[n++] = idx;
      if (n === max) return n;
      word &= word - 1;
    }
    if (++w >= nw) return n;
    word = bm[w]!;
  }
}

/** Set bits in [start, end). */
export function bitmapCountRef(bm: Uint32Array, start: number, end: number): number {
  let c = 0;
  for (let b = Math.max(0, start); b < end; ) {
    const w = b >>> 5;
    if ((b & 31) === 0 && b + 32 <= end) {
      c += popcnt32(bm[w]!);
      b += 32;
    } else {
      c += (bm[w]! >>> (b & 31)) & 1;
      b++;
    }
  }
  return c;
}

/** Sets (value true) or clears bits [start, end). */
export function bitmapFillRangeRef(bm: Uint32Array, start: number, end: number, value: boolean): void {
  for (let b = Math.max(0, start); b < end; b++) {
    const w = b >>> 5;
    const m = 1 << (b & 31);
    bm[w] = value ? bm[w]! | m : bm[w]! & ~m;
  }
}

/** dst[b] = !src[b] for b in [start, end). */
export function bitmapComplementRangeRef(src: Uint32Array, dst: Uint32Array, start: number, end: number): void {
  for (let b = Math.max(0, start); b < end; b++) {
    const w = b >>> 5;
    const m = 1 << (b & 31);
    dst[w] = src[w]! & m ? dst[w]! & ~m : dst[w]! | m;
  }
}

/** Copies the bitmap's 64-bit words and clears padding bits beyond nbits in dst. */
export function bitmapCopyMaskedRef(src: Uint32Array, dst: Uint32Array, nbits: number): void {
  const n = bitmapWords32(nbits);
  for (let w = 0; w < n; w++) dst[w] = src[w]!;
  for (let b = nbits; b < n * 32; b++) dst[b >>> 5] = dst[b >>> 5]! & ~(1 << (b & 31));
}
