// Zero-page test: SIMD and scalar twin. The SIMD version ORs 256 bytes per
// step (16 loads in flight), then 64-byte steps, then bytes for any remainder.

/** 1 if len bytes at ptr are all zero, else 0 (SIMD). */
export function isZeroSimd(ptr: usize, len: i32): i32 {
  let i = 0;
  while (i + 256 <= len) {
    const p = ptr + <usize>i;
    const x0 = v128.or(v128.or(v128.load(p), v128.load(p, 16)), v128.or(v128.load(p, 32), v128.load(p, 48)));
    const x1 = v128.or(v128.or(v128.load(p, 64), v128.load(p, 80)), v128.or(v128.load(p, 96), v128.load(p, 112)));
    const x2 = v128.or(v128.or(v128.load(p, 128), v128.load(p, 144)), v128.or(v128.load(p, 160), v128.load(p, 176)));
    const x3 = v128.or(v128.or(v128.load(p, 192), v128.load(p, 208)), v128.or(v128.load(p, 224), v128.load(p, 240)));
    if (v128.any_true(v128.or(v128.or(x0, x1), v128.or(x2, x3)))) return 0;
    i += 256;
  }
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
