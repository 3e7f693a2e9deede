// Zero-page test: SIMD and scalar twin. len must be a multiple of 64 for the
// SIMD fast loop; any remainder is handled bytewise.

/** 1 if len bytes at ptr are all zero, else 0 (SIMD, 64 bytes per step). */
export function isZeroSimd(ptr: usize, len: i32): i32 {
  let i = 0;
  while (i + 64 <= len) {
    const p = ptr + <usize>i;
    const x = v128.or(v128.or(v128.load(p), v128.load(p, 16)), v128.or(v128.load(p, 32), v128.load(p, 48)));
    if (v128.any_true(x)) return 0;
    i += 64;
  }
  while (i < len) {
    if (load<u8>(ptr + <usize>i) != 0) return 0;
    i++;
  }
  return 1;
}

/** Scalar twin of isZeroSimd (8 bytes per step). */
export function isZeroScalar(ptr: usize, len: i32): i32 {
  let i = 0;
  while (i + 8 <= len) {
    if (load<u64>(ptr + <usize>i) != 0) return 0;
    i += 8;
  }
  while (i < len) {
    if (load<u8>(ptr + <usize>i) != 0) return 0;
    i++;
  }
  return 1;
}
