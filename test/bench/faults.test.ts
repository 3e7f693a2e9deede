/**
 * bench:faults: the figures helpers, and one small run of the built
 * benchmark (dist/, built by `npm test`'s pretest) checked for a well-formed,
 * self-consistent result — never for timings.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseResult, percentile, RESULT_PREFIX, splitLegs, summarise, targetChecks, type FaultBenchResult } from '../../bench/lib/fault-stats.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BENCH = path.join(ROOT, 'dist/bench/faults.js');

function consistent(name: string, l: FaultBenchResult['idle']): void {
  expect(l.count, name).toBeGreaterThan(0);
  expect(l.p50Us, name).toBeGreaterThan(0);
  expect(l.p50Us, name).toBeLessThanOrEqual(l.p99Us);
  expect(l.p99Us, name).toBeLessThanOrEqual(l.maxUs);
  expect(l.meanUs, name).toBeLessThanOrEqual(l.maxUs);
}

describe('bench:faults figures', () => {
  it('nearest-rank percentiles and summaries', () => {
    const xs = Array.from({ length: 200 }, (_, i) => 200 - i); // 200..1, unsorted
    const s = summarise(xs);
    expect(s).toMatchObject({ count: 200, p50Us: 100, p99Us: 198, maxUs: 200 });
    expect(s.meanUs).toBeCloseTo(100.5, 9);
    expect(percentile([5], 0.99)).toBe(5);
    expect(percentile([1, 2, 3, 4], 0.5)).toBe(2);
    expect(Number.isNaN(summarise([]).p50Us)).toBe(true);
  });

  it('targets are judged on the loaded figures and the background rate', () => {
    const base = { loaded: { count: 9, p50Us: 80, p99Us: 900, maxUs: 2000, meanUs: 100 }, backgroundGBps: 1.2 } as FaultBenchResult;
    expect(targetChecks(base).map((t) => t.met)).toEqual([true, true, true]);
    const slow = { ...base, loaded: { ...base.loaded, p50Us: 101, p99Us: 1001 }, backgroundGBps: 0.99 };
    expect(targetChecks(slow).map((t) => t.met)).toEqual([false, false, false]);
  });

  it('splits round trips into legs with the source-side arrival times (one clock), skipping ambiguous ones', () => {
    const us = 1000; // ns per µs
    const legs: Array<[number, number, number, number]> = [
      [4096, 0, 300 * us, 310 * us], // seen at 100 µs: 100 + 200 + 10
      [8192, 1000 * us, 1500 * us, 1520 * us], // seen twice inside the window: ambiguous
      [12288, 2000 * us, 2600 * us, 2601 * us], // seen only before the request: not this one
      [16384, 3000 * us, 0, 3900 * us], // never placed as a requested page
    ];
    const seen: Array<[number, number]> = [
      [4096, 100 * us],
      [8192, 1100 * us],
      [8192, 1200 * us],
      [12288, 1900 * us],
    ];
    const l = splitLegs(legs, seen);
    expect(l.toSource).toMatchObject({ count: 1, p50Us: 100 });
    expect(l.toPlaced).toMatchObject({ count: 1, p50Us: 200 });
    expect(l.toResumed.count).toBe(3);
    expect([l.toResumed.p50Us, l.toResumed.maxUs]).toEqual([10, 20]);
  });

  it('finds the RESULT line among other output', () => {
    const r = { design: 'x', ramBytes: 4096 };
    expect(parseResult(`hello\n${RESULT_PREFIX}${JSON.stringify(r)}\nbye\n`)).toEqual(r);
    expect(() => parseResult('no result here')).toThrow(/no RESULT line/);
  });
});

describe('bench:faults run (32 MiB, baseline then preempt)', () => {
  it.skipIf(!fs.existsSync(BENCH))('prints consistent figures: faults in both phases, ordered percentiles, background rate, RAM equal', async () => {
    const args = [BENCH, '--quick', '--size', '32', '--idle-ms', '300', '--idle-faults', '300', '--design', 'baseline,preempt'];
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, args, { timeout: 60_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout),
      );
    });
    expect(out.match(/^idle \(background ~0\)/gm)).toHaveLength(2);
    expect(out).toMatch(/^loaded p50 .*  (met|NOT met)  +(-|\d.*)$/m); // then the "Node alone" column (- with --quick)
    expect(out).toMatch(/^Medians over 1 rounds per design\n.*\n.*\nbaseline .*\npreempt /m);
    // The RESULT is the last run's: the preempt design, whose requested pages went on the preempt channel.
    const r = parseResult(out);
    expect(r.design).toBe('preempt');
    expect(r.preemptPages).toBeGreaterThan(0);
    // (requests read before the package was flushed still go through the main channel's queue)
    expect(r.preemptPages + r.ignoredRequests).toBeLessThanOrEqual(r.postcopyRequests);
    expect(r.preemptPages).toBeGreaterThan(r.postcopyRequests / 2);
    expect(r.ramBytes).toBe(32 << 20);
    expect(r.sourceStatus).toBe('completed');
    expect(r.destStatus).toBe('completed');
    expect(r.ramEqual).toBe(true);
    consistent('idle', r.idle);
    consistent('loaded', r.loaded);
    expect(r.backgroundGBps).toBeGreaterThan(0);
    expect(r.loadedBytes).toBeGreaterThan(0);
    expect(r.loadedBytes).toBeLessThanOrEqual(r.ramBytes * 1.1);
    // Every fault of both phases sent one request; the source saw each.
    expect(r.destStats.requests).toBeGreaterThanOrEqual(r.idle.count + r.loaded.count);
    expect(r.postcopyRequests).toBe(r.destStats.requests);
    expect(r.destStats.p50Us).toBeLessThanOrEqual(r.destStats.p99Us);
    expect(r.destStats.p99Us).toBeLessThanOrEqual(r.destStats.maxUs);
  });
});

describe('Node alone on this host (bench/lib/node-loopback, built)', () => {
  it('measures both streams and the three round-trip rows with well-formed figures', async () => {
    const mod = (await import(path.join(ROOT, 'dist/bench/lib/node-loopback.js'))) as typeof import('../../bench/lib/node-loopback.js');
    const f = await mod.measureNodeLoopback(8 << 20, 50, -2); // small: it runs beside other test files
    expect(f.streamDataGBps).toBeGreaterThan(0);
    expect(f.streamOnreadGBps).toBeGreaterThan(0);
    for (const [name, l] of [['idle', f.idle], ['loaded', f.loaded], ['loadedWorkers', f.loadedWorkers]] as const) {
      expect(l.count, name).toBe(50);
      consistent(name, l);
    }
    // the bulk stream really ran during the loaded round trips, in the event loops and in the workers
    expect(f.loaded.bulkGBps).toBeGreaterThan(0);
    expect(f.loadedWorkers.bulkGBps).toBeGreaterThan(0);
    // the main threads of both peers at the nice value asked for (or, unprivileged, unchanged with the reason)
    if (process.getuid?.() === 0) expect(f.loadedWorkers.priority).toEqual([{ nice: -2 }, { nice: -2 }]);
    else for (const p of f.loadedWorkers.priority!) expect(p.error).toMatch(/^setpriority\(-2\): /);
  }, 60_000);
});
