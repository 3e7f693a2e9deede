/**
 * Hot-path benchmark (`npm run bench:hotpath`): WASM (SIMD and scalar twin)
 * beside the plain-TypeScript reference and a C baseline (bench/native/probe.c,
 * built with gcc when present) in the same run, with the C figures from
 * LIMITS.md for reference, and the targets checked at the end.
 * Runs in well under a minute.
 */
import { Hotpath } from '../src/hotpath/hotpath.js';
import {
  bitmapCollectRef,
  isZeroPageRef,
  xbzrleDecodeRef,
  xbzrleEncodeRef,
} from '../src/hotpath/reference.js';
import { fmtNs, nsPerOp, printTable } from './lib/timing.js';
import { measureNative } from './lib/native.js';

const P = 4096;
const MiB = 1 << 20;
const quick = process.argv.includes('--quick');
const TARGET_MS = quick ? 15 : 50;

let seed = 0x2545f491;
function rand(): number {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 0x100000000;
}

// The C baseline runs first, on an otherwise idle process.
const native = measureNative();
const cb = 'skipped' in native ? undefined : native;
if (!cb) console.log(`C baseline of this run: skipped (${'skipped' in native ? native.skipped : ''}); only the LIMITS.md figures are shown`);
const cNs = (v: number | undefined): string => (v === undefined ? '–' : fmtNs(v));
/** Target lines printed at the end: [what, ours, goal, met]. */
const targets: Array<[string, string, string, boolean]> = [];

const hp = Hotpath.create({ initialBytes: 64 * MiB });
const mem = (): Uint8Array => hp.bytes();
const gbps = (ns: number): string => (P / ns).toFixed(2);
const ratio = (a: number, b: number): string => `${(a / b).toFixed(1)}×`;

// ------------------------------------------------------------------ XBZRLE
type Pattern = (old: Uint8Array, neu: Uint8Array) => void;
const clustered = (frac: number): Pattern => (_o, n) => {
  let left = Math.max(1, Math.round(P * frac));
  while (left > 0) {
    const len = Math.min(left, 8 + ((rand() * 56) | 0));
    const at = (rand() * (P - len)) | 0;
    for (let k = 0; k < len; k++) n[at + k] = n[at + k]! ^ 0x5a;
    left -= len;
  }
};
const scattered = (frac: number): Pattern => (_o, n) => {
  for (let i = 0; i < P; i++) if (rand() < frac) n[i] = n[i]! ^ 0xa5;
};
const encodeCases: Array<[string, Pattern, string]> = [
  ['identical (0 %)', () => {}, '230–430 ns'],
  ['0.1 % clustered', clustered(0.001), '–'],
  ['1 % clustered', clustered(0.01), '255–430 ns'],
  ['10 % clustered', clustered(0.1), '–'],
  ['50 % clustered', clustered(0.5), '–'],
  ['0.1 % scattered', scattered(0.001), '–'],
  ['1 % scattered', scattered(0.01), '0.94–1.16 µs'],
  ['10 % scattered', scattered(0.1), '9.6–10 µs'],
  ['50 % scattered', scattered(0.5), '–'],
  ['overflow: every 2nd byte', (_o, n) => { for (let i = 0; i < P; i += 2) n[i] = n[i]! ^ 1; }, '~15 µs'],
  ['overflow: every byte', (_o, n) => { for (let i = 0; i < P; i++) n[i] = n[i]! ^ 1; }, '–'],
];

const PAIRS = 32; // 256 KiB of pages: hot in L2/L3
const oldBase = hp.alloc(PAIRS * P);
const newBase = hp.alloc(PAIRS * P);
const outBase = hp.alloc(PAIRS * P);
const decBase = hp.alloc(PAIRS * P);
const jsOut = new Uint8Array(P);

function setupPairs(pattern: Pattern): void {
  const m = mem();
  for (let k = 0; k < PAIRS; k++) {
    const o = m.subarray(oldBase + k * P, oldBase + (k + 1) * P);
    for (let i = 0; i < P; i++) o[i] = (rand() * 256) | 0;
    const n = m.subarray(newBase + k * P, newBase + (k + 1) * P);
    n.set(o);
    pattern(o, n);
  }
}

// Warm the plain-TS baseline on mixed inputs first, so that V8 does not
// measure it half-deoptimised after having seen only identical pages.
{
  const a = new Uint8Array(P);
  const b = new Uint8Array(P);
  for (let i = 0; i < P; i++) a[i] = b[i] = (rand() * 256) | 0;
  for (let r = 0; r < 3000; r++) {
    b[(rand() * P) | 0] ^= 1 + (r & 7);
    xbzrleEncodeRef(a, r % 3 === 0 ? a : b, jsOut, P);
  }
}

const encRows: string[][] = [];
const decRows: string[][] = [];
for (const [name, pattern, c] of encodeCases) {
  setupPairs(pattern);
  const m = mem();
  const olds = Array.from({ length: PAIRS }, (_, k) => m.subarray(oldBase + k * P, oldBase + (k + 1) * P));
  const news = Array.from({ length: PAIRS }, (_, k) => m.subarray(newBase + k * P, newBase + (k + 1) * P));
  const lens = news.map((_, k) => hp.xbzrleEncodeAt(oldBase + k * P, newBase + k * P, outBase + k * P));
  const simd = nsPerOp((i) => { const k = i & (PAIRS - 1); return hp.xbzrleEncodeAt(oldBase + k * P, newBase + k * P, outBase + k * P); }, TARGET_MS);
  const scalar = nsPerOp((i) => { const k = i & (PAIRS - 1); return hp.xbzrleEncodeScalarAt(oldBase + k * P, newBase + k * P, outBase + k * P); }, TARGET_MS);
  const js = nsPerOp((i) => { const k = i & (PAIRS - 1); return xbzrleEncodeRef(olds[k]!, news[k]!, jsOut, P); }, TARGET_MS);
  const meanLen = lens.reduce((s, l) => s + l, 0) / PAIRS;
  const cRun = name === 'identical (0 %)' ? cb?.encIdenticalNs : name === '1 % clustered' ? cb?.encClustered1Ns : undefined;
  encRows.push([name, meanLen < 0 ? 'overflow' : meanLen.toFixed(0), fmtNs(simd), gbps(simd), fmtNs(scalar), fmtNs(js), ratio(js, simd), cNs(cRun), c]);
  if (name === 'identical (0 %)' || name === '1 % clustered') {
    // LIMITS.md gives a range; the goal is taken against its fast end, and against the C of this run.
    const cLow = name === 'identical (0 %)' ? 230 : 255;
    targets.push([`encode ${name}: ≤ 0.7× C (LIMITS, fast end)`, fmtNs(simd), `≤ ${fmtNs(0.7 * cLow)}`, simd <= 0.7 * cLow]);
    if (cRun !== undefined) targets.push([`encode ${name}: ≤ 0.7× C (this run)`, `${(simd / cRun).toFixed(2)}× C`, '≤ 0.70×', simd <= 0.7 * cRun]);
    targets.push([`encode ${name}: ≥ 5× plain TS`, ratio(js, simd), '≥ 5.0×', js / simd >= 5]);
  }

  if (lens.every((l) => l > 0) && (name.includes('1 %') || name.includes('10 %'))) {
    const encs = lens.map((l, k) => m.slice(outBase + k * P, outBase + k * P + l));
    const dec = nsPerOp((i) => { const k = i & (PAIRS - 1); return hp.xbzrleDecodeAt(outBase + k * P, lens[k]!, decBase + k * P); }, TARGET_MS);
    const decPage = new Uint8Array(P);
    const decJs = nsPerOp((i) => xbzrleDecodeRef(encs[i & (PAIRS - 1)]!, decPage).result, TARGET_MS);
    const cDec = name === '1 % clustered' ? '10–60 ns' : name === '10 % scattered' ? '3.2 µs' : '–';
    decRows.push([name, (lens.reduce((s, l) => s + l, 0) / PAIRS).toFixed(0), fmtNs(dec), fmtNs(decJs), ratio(decJs, dec), cDec]);
  }
}

// cold: identical pages walked over 2 × 96 MiB (> L3)
{
  const COLD = (96 * MiB) / P;
  const o = hp.alloc(COLD * P);
  const n = hp.alloc(COLD * P);
  const m = mem();
  for (let i = 0; i < COLD * P; i += 64) m[o + i] = m[n + i] = i & 0xff;
  let k = 0;
  const simd = nsPerOp(() => { k = (k + 1) % COLD; return hp.xbzrleEncodeAt(o + k * P, n + k * P, outBase); }, TARGET_MS);
  const olds = m.subarray(o, o + COLD * P);
  const news = m.subarray(n, n + COLD * P);
  const js = nsPerOp(() => { k = (k + 1) % COLD; return xbzrleEncodeRef(olds.subarray(k * P, k * P + P), news.subarray(k * P, k * P + P), jsOut, P); }, TARGET_MS);
  encRows.push(['identical, cold (192 MiB walk)', '0', fmtNs(simd), gbps(simd), '', fmtNs(js), ratio(js, simd), '–', '410–630 ns']);
}

printTable(
  'XBZRLE encode, 4 KiB page (hot: 32 page pairs)',
  ['pattern', 'bytes', 'WASM SIMD', 'GB/s', 'WASM scalar', 'plain TS', 'TS/SIMD', 'C scalar (this run)', 'C (LIMITS)'],
  encRows,
);
printTable('XBZRLE decode', ['pattern', 'bytes', 'WASM', 'plain TS', 'TS/WASM', 'C (LIMITS)'], decRows);

// --------------------------------------------------------------- zero test
{
  const rows: string[][] = [];
  const hot = hp.alloc(PAIRS * P);
  const m0 = mem();
  m0.fill(0, hot, hot + PAIRS * P);
  const hotViews = Array.from({ length: PAIRS }, (_, k) => m0.subarray(hot + k * P, hot + (k + 1) * P));
  const s = nsPerOp((i) => hp.isZeroPageAt(hot + (i & (PAIRS - 1)) * P), TARGET_MS);
  const sc = nsPerOp((i) => hp.isZeroPageScalarAt(hot + (i & (PAIRS - 1)) * P), TARGET_MS);
  const js = nsPerOp((i) => isZeroPageRef(hotViews[i & (PAIRS - 1)]!), TARGET_MS);
  rows.push(['zero page, hot', fmtNs(s), gbps(s), fmtNs(sc), fmtNs(js), ratio(js, s), cNs(cb?.zeroHotNs), cNs(cb?.zeroSseHotNs), '40 ns (AVX2)']);

  const COLD = (256 * MiB) / P;
  const cold = hp.alloc(COLD * P);
  const m = mem();
  m.fill(0, cold, cold + COLD * P);
  const all = m.subarray(cold, cold + COLD * P);
  let k = 0;
  const cs = nsPerOp(() => { k = (k + 1) % COLD; return hp.isZeroPageAt(cold + k * P); }, TARGET_MS);
  const csc = nsPerOp(() => { k = (k + 1) % COLD; return hp.isZeroPageScalarAt(cold + k * P); }, TARGET_MS);
  const cjs = nsPerOp(() => { k = (k + 1) % COLD; return isZeroPageRef(all.subarray(k * P, k * P + P)); }, TARGET_MS);
  rows.push(['zero page, cold (256 MiB walk)', fmtNs(cs), gbps(cs), fmtNs(csc), fmtNs(cjs), ratio(cjs, cs), cNs(cb?.zeroColdNs), cNs(cb?.zeroSseColdNs), '170–210 ns']);
  if (cb) {
    targets.push([
      'zero test, cold: WASM within 1.1× of C (AVX2, this run)',
      `${fmtNs(cs)} = ${(cs / cb.zeroColdNs).toFixed(2)}× C AVX2, ${(cs / cb.zeroSseColdNs).toFixed(2)}× C SSE4.1 (v128 width)`,
      '≤ 1.10×',
      cs <= 1.1 * cb.zeroColdNs,
    ]);
  }
  m[hot + 100] = 1;
  const nz = nsPerOp(() => hp.isZeroPageAt(hot), TARGET_MS);
  const nzjs = nsPerOp(() => isZeroPageRef(hotViews[0]!), TARGET_MS);
  rows.push(['non-zero at byte 100, hot', fmtNs(nz), '', '', fmtNs(nzjs), ratio(nzjs, nz), '–', '–', '–']);
  printTable('Zero-page test, 4 KiB', ['case', 'WASM SIMD', 'GB/s', 'WASM scalar', 'plain TS', 'TS/SIMD', 'C AVX2 (this run)', 'C SSE4.1 (this run)', 'C (LIMITS)'], rows);
}

// ------------------------------------------------------------ bitmap scan
{
  const NBITS = (64 * 1024 * MiB) / P; // 64 GiB of 4 KiB pages = 16.8 M bits
  const bytes = NBITS / 8;
  const bm = hp.alloc(bytes, 64);
  const BATCH = 4096;
  const out = hp.alloc(BATCH * 4, 64);
  const jsOutIdx = new Uint32Array(BATCH);
  const rows: string[][] = [];
  const cRef: Record<string, string> = { '0.01 %': '0.17 ms (clean)', '1 %': '1.3–1.4 ms', '50 %': '9–12 ms' };
  for (const [label, density] of [['0.01 %', 0.0001], ['1 %', 0.01], ['50 %', 0.5]] as const) {
    const m = mem();
    m.fill(0, bm, bm + bytes);
    const w32 = new Uint32Array(m.buffer, bm, bytes / 4);
    let set = 0;
    if (density >= 0.5) {
      for (let w = 0; w < w32.length; w++) {
        w32[w] = (rand() * 0x100000000) >>> 0;
      }
    } else {
      const n = Math.round(NBITS * density);
      for (let i = 0; i < n; i++) {
        const p = (rand() * NBITS) | 0;
        w32[p >>> 5] = w32[p >>> 5]! | (1 << (p & 31));
      }
    }
    set = hp.bitmapCount(bm, 0, NBITS);
    let found = 0;
    const scanWith = (collect: (b: number, nb: number, f: number, o: number, m: number) => number): number => {
      let from = 0;
      let total = 0;
      for (;;) {
        const n = collect(bm, NBITS, from, out, BATCH);
        total += n;
        if (n < BATCH) break;
        from = new Uint32Array(hp.memory.buffer, out + (n - 1) * 4, 1)[0]! + 1;
      }
      return total;
    };
    const scanJs = (): number => {
      let from = 0;
      let total = 0;
      for (;;) {
        const n = bitmapCollectRef(w32, NBITS, from, jsOutIdx, BATCH);
        total += n;
        if (n < BATCH) break;
        from = jsOutIdx[n - 1]! + 1;
      }
      return total;
    };
    const scanWasm = (): number => scanWith(hp.wasm.bitmapCollect);
    const scanScalar = (): number => scanWith(hp.wasm.bitmapCollectScalar);
    found = scanWasm();
    if (found !== set || scanJs() !== set) throw new Error(`scan found ${found}, count says ${set}`);
    const tw = nsPerOp(scanWasm, quick ? 60 : 150, 9);
    const tj = nsPerOp(scanJs, quick ? 60 : 150, 9);
    const ts = nsPerOp(scanScalar, quick ? 60 : 150, 9);
    // findNext called once per set bit from JS (the shape a page-at-a-time sender uses)
    const fn = density > 0.1 ? NaN : nsPerOp(() => {
      let c = 0;
      for (let p = hp.bitmapFindNext(bm, NBITS, 0); p < NBITS; p = hp.bitmapFindNext(bm, NBITS, p + 1)) c++;
      return c;
    }, quick ? 60 : 150, 9);
    const cnt = nsPerOp(() => hp.bitmapCount(bm, 0, NBITS), 30, 3);
    const cMs = label === '1 %' ? cb?.scan1Ms : label === '50 %' ? cb?.scan50Ms : undefined;
    rows.push([label, String(set), fmtNs(tw), fmtNs(ts), fmtNs(tj), ratio(tj, tw), fmtNs(fn), fmtNs(cnt), cMs === undefined ? '–' : `${cMs.toFixed(2)} ms`, cRef[label]!]);
    const goal = label === '1 %' ? 1.3 : label === '50 %' ? 12 : undefined;
    if (goal !== undefined) targets.push([`bitmap scan at ${label}`, `${(tw / 1e6).toFixed(2)} ms`, `≤ ${goal} ms`, tw / 1e6 <= goal]);
  }
  printTable(
    'Dirty-bitmap scan, 16.8 M bits (64 GiB of 4 KiB pages): list every set bit',
    ['density', 'set bits', 'WASM collect', 'WASM scalar twin', 'plain TS', 'TS/WASM', 'WASM findNext/bit', 'WASM count', 'C word+ctz (this run)', 'C word+ctz (LIMITS)'],
    rows,
  );
}
printTable('Targets (issue 2)', ['target', 'reached', 'goal', 'met'], targets.map(([a, b, g, m]) => [a, b, g, m ? 'yes' : 'NO']));
console.log('\nGB/s = 4096 B / time per page. Best of several runs; the machine is shared, so read ratios more than absolutes.');
