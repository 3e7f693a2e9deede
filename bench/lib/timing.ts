/** Small timing helpers for the benchmarks: calibrated loops, best-of-N. */

/** Runs fn(i) for i in 0..n-1 and returns elapsed nanoseconds. */
function timeLoop(fn: (i: number) => unknown, n: number): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  return Number(process.hrtime.bigint() - t0);
}

/**
 * Nanoseconds per call of fn: calibrates the iteration count to ~targetMs,
 * then takes the best of `reps` runs (the machine is shared and noisy).
 */
export function nsPerOp(fn: (i: number) => unknown, targetMs = 60, reps = 11): number {
  let n = 1;
  for (;;) {
    const t = timeLoop(fn, n);
    if (t > 2e6 || n >= 1 << 24) {
      n = Math.max(1, Math.round((n * targetMs * 1e6) / t / reps));
      break;
    }
    n *= 4;
  }
  let best = Infinity;
  for (let r = 0; r < reps; r++) best = Math.min(best, timeLoop(fn, n) / n);
  return best;
}

/** Formats nanoseconds as "123 ns", "1.23 µs" or "1.23 ms". */
export function fmtNs(ns: number): string {
  if (!Number.isFinite(ns)) return '-';
  if (ns < 1000) return `${ns.toFixed(0)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(2)} µs`;
  return `${(ns / 1e6).toFixed(2)} ms`;
}

/** Prints rows as an aligned text table. */
export function printTable(title: string, header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
}
