// Bitmaps of 64-bit little-endian words (bit p = word p>>6, bit p&63), the
// layout of QEMU's dirty bitmaps and of the RECV_BITMAP reply (SPEC §5.6).
// All pointers are byte offsets of 8-aligned word arrays. Bit indexes are i32.
// Invariant kept by every writer here: padding bits beyond nbits stay 0.

// @ts-ignore: decorator
@inline
function wordPtr(bm: usize, w: i32): usize {
  return bm + (<usize>w << 3);
}

/** Mask of bits [lo, 64) of a word. */
// @ts-ignore: decorator
@inline
function maskFrom(lo: i32): u64 {
  return <u64>-1 << <u64>lo;
}

/** Mask of bits [0, hi) of a word, hi in 1..64. */
// @ts-ignore: decorator
@inline
function maskTo(hi: i32): u64 {
  return <u64>-1 >> <u64>(64 - hi);
}

/**
 * Fetch-and-clear: every word of the dirty log at `log` is atomically swapped
 * with 0 and OR'd into the migration bitmap at `bm`. Returns the number of
 * bits that became set in `bm` (newly dirty pages). Zero log words are skipped
 * 4 at a time with SIMD and never written.
 */
export function bitmapSyncClear(log: usize, bm: usize, nwords: i32): i32 {
  let count: i32 = 0;
  let w = 0;
  while (w < nwords) {
    if (w + 4 <= nwords) {
      const p = wordPtr(log, w);
      if (!v128.any_true(v128.or(v128.load(p), v128.load(p, 16)))) {
        w += 4;
        continue;
      }
    }
    const lp = wordPtr(log, w);
    if (load<u64>(lp) != 0) {
      const old = atomic.xchg<u64>(lp, 0);
      const bp = wordPtr(bm, w);
      const b = load<u64>(bp);
      count += <i32>popcnt<u64>(old & ~b);
      store<u64>(bp, b | old);
    }
    w++;
  }
  return count;
}

/** Index of the next word >= w that is non-zero (nw if none); SIMD skip. */
// @ts-ignore: decorator
@inline
function nextNonZeroWord(bm: usize, w: i32, nw: i32): i32 {
  while (w + 4 <= nw) {
    const p = wordPtr(bm, w);
    if (v128.any_true(v128.or(v128.load(p), v128.load(p, 16)))) break;
    w += 4;
  }
  while (w < nw && load<u64>(wordPtr(bm, w)) == 0) w++;
  return w;
}

/** Index of the next word >= w that is not all ones (nw if none). */
// @ts-ignore: decorator
@inline
function nextNotFullWord(bm: usize, w: i32, nw: i32): i32 {
  while (w + 4 <= nw) {
    const p = wordPtr(bm, w);
    const a = v128.and(v128.load(p), v128.load(p, 16));
    if (!i64x2.all_true(i64x2.eq(a, i64x2.splat(-1)))) break;
    w += 4;
  }
  while (w < nw && load<u64>(wordPtr(bm, w)) == <u64>-1) w++;
  return w;
}

/** First set bit at index >= from, or nbits if there is none. */
export function bitmapFindNext(bm: usize, nbits: i32, from: i32): i32 {
  if (from >= nbits) return nbits;
  if (from < 0) from = 0;
  const nw = (nbits + 63) >>> 6;
  let w = from >>> 6;
  let word = load<u64>(wordPtr(bm, w)) & maskFrom(from & 63);
  if (word == 0) {
    w = nextNonZeroWord(bm, w + 1, nw);
    if (w >= nw) return nbits;
    word = load<u64>(wordPtr(bm, w));
  }
  const r = (w << 6) + <i32>ctz<u64>(word);
  return r < nbits ? r : nbits;
}

/** First clear bit at index >= from, or nbits if there is none. */
export function bitmapFindNextZero(bm: usize, nbits: i32, from: i32): i32 {
  if (from >= nbits) return nbits;
  if (from < 0) from = 0;
  const nw = (nbits + 63) >>> 6;
  let w = from >>> 6;
  let word = ~load<u64>(wordPtr(bm, w)) & maskFrom(from & 63);
  if (word == 0) {
    w = nextNotFullWord(bm, w + 1, nw);
    if (w >= nw) return nbits;
    word = ~load<u64>(wordPtr(bm, w));
  }
  const r = (w << 6) + <i32>ctz<u64>(word);
  return r < nbits ? r : nbits;
}

/**
 * Scalar twin of bitmapCollect (a bit-at-a-time ctz loop with a SIMD skip of
 * zero words); same contract and output.
 */
export function bitmapCollectScalar(bm: usize, nbits: i32, from: i32, out: usize, max: i32): i32 {
  if (from >= nbits || max <= 0) return 0;
  if (from < 0) from = 0;
  const nw = (nbits + 63) >>> 6;
  let n = 0;
  let w = from >>> 6;
  let word = load<u64>(wordPtr(bm, w)) & maskFrom(from & 63);
  while (true) {
    while (word != 0) {
      const idx = (w << 6) + <i32>ctz<u64>(word);
      if (idx >= nbits) return n;
      store<u32>(out + (<usize>n << 2), idx);
      n++;
      if (n == max) return n;
      word &= word - 1;
    }
    // dense areas: just take the next word; skip with SIMD only after a zero word
    if (++w >= nw) return n;
    word = load<u64>(wordPtr(bm, w));
    if (word == 0) {
      w = nextNonZeroWord(bm, w + 1, nw);
      if (w >= nw) return n;
      word = load<u64>(wordPtr(bm, w));
    }
  }
  return n;
}

/** Number of set bits in [start, end). */
export function bitmapCount(bm: usize, start: i32, end: i32): i32 {
  if (start < 0) start = 0;
  if (end <= start) return 0;
  let ws = start >>> 6;
  const we = (end - 1) >>> 6;
  if (ws == we) {
    return <i32>popcnt<u64>(load<u64>(wordPtr(bm, ws)) & maskFrom(start & 63) & maskTo(end - (we << 6)));
  }
  let c = <i32>popcnt<u64>(load<u64>(wordPtr(bm, ws)) & maskFrom(start & 63));
  ws++;
  // middle words, two at a time
  let acc: u64 = 0;
  while (ws + 2 <= we) {
    const p = wordPtr(bm, ws);
    acc += popcnt<u64>(load<u64>(p)) + popcnt<u64>(load<u64>(p, 8));
    ws += 2;
  }
  while (ws < we) {
    acc += popcnt<u64>(load<u64>(wordPtr(bm, ws)));
    ws++;
  }
  c += <i32>acc;
  c += <i32>popcnt<u64>(load<u64>(wordPtr(bm, we)) & maskTo(end - (we << 6)));
  return c;
}

/** Sets (value != 0) or clears bits [start, end). Not atomic. */
export function bitmapFillRange(bm: usize, start: i32, end: i32, value: i32): void {
  if (start < 0) start = 0;
  if (end <= start) return;
  const ws = start >>> 6;
  const we = (end - 1) >>> 6;
  if (ws == we) {
    const m = maskFrom(start & 63) & maskTo(end - (we << 6));
    const p = wordPtr(bm, ws);
    store<u64>(p, value ? load<u64>(p) | m : load<u64>(p) & ~m);
    return;
  }
  const p0 = wordPtr(bm, ws);
  const m0 = maskFrom(start & 63);
  store<u64>(p0, value ? load<u64>(p0) | m0 : load<u64>(p0) & ~m0);
  if (we > ws + 1) {
    memory.fill(wordPtr(bm, ws + 1), value ? 0xff : 0, <usize>(we - ws - 1) << 3);
  }
  const p1 = wordPtr(bm, we);
  const m1 = maskTo(end - (we << 6));
  store<u64>(p1, value ? load<u64>(p1) | m1 : load<u64>(p1) & ~m1);
}

/**
 * For bits in [start, end): dst = NOT src ("not received" → "must send").
 * Bits of dst outside the range are left alone, so padding stays 0 when
 * end <= nbits. src and dst may be the same bitmap.
 */
export function bitmapComplementRange(src: usize, dst: usize, start: i32, end: i32): void {
  if (start < 0) start = 0;
  if (end <= start) return;
  const ws = start >>> 6;
  const we = (end - 1) >>> 6;
  for (let w = ws; w <= we; w++) {
    let m: u64 = <u64>-1;
    if (w == ws) m &= maskFrom(start & 63);
    if (w == we) m &= maskTo(end - (we << 6));
    const dp = wordPtr(dst, w);
    const s = ~load<u64>(wordPtr(src, w));
    store<u64>(dp, (load<u64>(dp) & ~m) | (s & m));
  }
}

/**
 * Copies the ceil(nbits/64) words of src to dst (either direction of the
 * RECV_BITMAP little-endian byte layout) and clears dst's padding bits.
 */
export function bitmapCopyMasked(src: usize, dst: usize, nbits: i32): void {
  if (nbits <= 0) return;
  const nw = (nbits + 63) >>> 6;
  memory.copy(dst, src, <usize>nw << 3);
  const tail = nbits & 63;
  if (tail != 0) {
    const p = wordPtr(dst, nw - 1);
    store<u64>(p, load<u64>(p) & maskTo(tail));
  }
}

/**
 * Writes the indexes of the set bits of `word` (bit 0 = index base) at out,
 * four candidates at a time without per-bit branches; entries past the real
 * count are scratch. Needs room for 64 entries. Returns the count.
 */
// @ts-ignore: decorator
@inline
function emitFlat(out: usize, base: i32, word: u64): i32 {
  const n = <i32>popcnt<u64>(word);
  let c = n;
  let p = out;
  while (true) {
    store<u32>(p, base + <i32>ctz<u64>(word));
    word &= word - 1;
    store<u32>(p, base + <i32>ctz<u64>(word), 4);
    word &= word - 1;
    store<u32>(p, base + <i32>ctz<u64>(word), 8);
    word &= word - 1;
    store<u32>(p, base + <i32>ctz<u64>(word), 12);
    word &= word - 1;
    if (c <= 4) break;
    c -= 4;
    p += 16;
  }
  return n;
}

/**
 * Writes the indexes (u32) of set bits >= from, in order, to out, at most max
 * of them. Returns how many were written; continue from the last one + 1.
 * Never writes at or past out + 4 * max.
 *
 * Shape: groups of 4 words; an all-zero group is skipped with one SIMD test
 * (predictable when sparse), a non-zero group emits each word with emitFlat
 * (no branch per bit, predictable when dense). The first (partial) word, the
 * padded last word and the last 256 entries of `out` go through a careful
 * bit-by-bit loop.
 */
export function bitmapCollect(bm: usize, nbits: i32, from: i32, out: usize, max: i32): i32 {
  if (from >= nbits || max <= 0) return 0;
  if (from < 0) from = 0;
  const nw = (nbits + 63) >>> 6;
  const fullWords = nbits >>> 6; // words with no padding bits
  let n = 0;
  let w = from >>> 6;
  let word = load<u64>(wordPtr(bm, w)) & maskFrom(from & 63);
  // the first word, carefully
  while (word != 0) {
    const idx = (w << 6) + <i32>ctz<u64>(word);
    if (idx >= nbits) return n;
    store<u32>(out + (<usize>n << 2), idx);
    n++;
    if (n == max) return n;
    word &= word - 1;
  }
  w++;
  const lastGroup = fullWords - 4;
  while (w <= lastGroup && n + 256 <= max) {
    // tight skip of all-zero groups
    let p = wordPtr(bm, w);
    while (!v128.any_true(v128.or(v128.load(p), v128.load(p, 16)))) {
      w += 4;
      p += 32;
      if (w > lastGroup) break;
    }
    if (w > lastGroup) break;
    const base = w << 6;
    n += emitFlat(out + (<usize>n << 2), base, load<u64>(p));
    n += emitFlat(out + (<usize>n << 2), base + 64, load<u64>(p, 8));
    n += emitFlat(out + (<usize>n << 2), base + 128, load<u64>(p, 16));
    n += emitFlat(out + (<usize>n << 2), base + 192, load<u64>(p, 24));
    w += 4;
  }
  // the rest, carefully
  while (w < nw) {
    word = load<u64>(wordPtr(bm, w));
    while (word != 0) {
      const idx = (w << 6) + <i32>ctz<u64>(word);
      if (idx >= nbits) return n;
      store<u32>(out + (<usize>n << 2), idx);
      n++;
      if (n == max) return n;
      word &= word - 1;
    }
    w++;
  }
  return n;
}
