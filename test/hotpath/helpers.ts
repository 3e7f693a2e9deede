/** Shared test helpers: a seeded PRNG and page builders. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

export function randomBytes(r: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

/** A copy of `old` with the byte at each index in `idx` changed. */
export function withChanges(old: Uint8Array, idx: Iterable<number>): Uint8Array {
  const n = old.slice();
  for (const i of idx) n[i] = (n[i]! + 1) & 0xff;
  return n;
}

export function range(a: number, b: number): number[] {
  const out: number[] = [];
  for (let i = a; i < b; i++) out.push(i);
  return out;
}
