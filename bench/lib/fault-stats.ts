/**
 * Figures of the fault-latency benchmark (`npm run bench:faults`): latency
 * summaries, the result record every run prints as one `RESULT {json}` line
 * (the test parses it), and machine-load sampling from /proc/stat.
 */
import fs from 'node:fs';
import type { ThreadPriority } from '../../src/threads.js';

/** p50/p99/max of a set of round trips, µs. */
export interface LatencySummary {
  count: number;
  p50Us: number;
  p99Us: number;
  maxUs: number;
  meanUs: number;
}

/** Nearest-rank percentile of sorted values (q in [0, 1]). */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

/** Summarises round trips given in µs. */
export function summarise(us: readonly number[]): LatencySummary {
  const s = [...us].sort((a, b) => a - b);
  const sum = s.reduce((a, b) => a + b, 0);
  return {
    count: s.length,
    p50Us: percentile(s, 0.5),
    p99Us: percentile(s, 0.99),
    maxUs: s.length ? s[s.length - 1]! : NaN,
    meanUs: s.length ? sum / s.length : NaN,
  };
}

/** CPU time of one process over a phase, ms, and its event-loop delay (ms, sampled every ms). */
export interface CpuFigures {
  userMs: number;
  sysMs: number;
  loopDelayP50Ms?: number;
  loopDelayP99Ms?: number;
  loopDelayMaxMs?: number;
  /** CPU of the main thread and of the process's other threads (GC and compiler helpers, libuv), ms. */
  mainThreadMs?: number;
  otherThreadsMs?: number;
}

/** What one run measured. */
export interface FaultBenchResult {
  /** Guest RAM, bytes. */
  ramBytes: number;
  /** Design variant measured (e.g. "baseline"). */
  design: string;
  /** Round trips with the background stream throttled to ~0 (same connection, same run). */
  idle: LatencySummary;
  /** Round trips with the background stream at full speed. */
  loaded: LatencySummary;
  /** The destination's own fault → placement figures over the whole run (faultStats()). */
  destStats: { requests: number; count: number; p50Us: number; p99Us: number; maxUs: number };
  /** Background bytes received during the loaded phase / its duration, GB/s (1e9). */
  backgroundGBps: number;
  /** Loaded phase: bytes received and duration. */
  loadedBytes: number;
  loadedMs: number;
  /** Who read the background stream on the destination: its bulk worker, or its main thread. */
  backgroundReader: 'worker' | 'main thread';
  /** Requests the source served / found already sent. */
  postcopyRequests: number;
  ignoredRequests: number;
  /** Final statuses and RAM check. */
  sourceStatus: string;
  destStatus: string;
  ramEqual: boolean;
  /** Machine load: 1-min load average at the start and end; whole-machine CPU busy % during the loaded phase. */
  loadAvg: [number, number];
  machineBusyPct: number;
  cpus: number;
  /** Loaded phase, medians and p99 of each leg of the round trip (µs): request → source reads it → page placed → faulting code resumed. */
  legs: { toSource: LatencySummary; toPlaced: LatencySummary; toResumed: LatencySummary };
  /** The same legs in the idle phase. */
  idleLegs: { toSource: LatencySummary; toPlaced: LatencySummary; toResumed: LatencySummary };
  /** Requested pages the source sent on the preempt channel. */
  preemptPages: number;
  /** CPU of our two processes during the loaded phase. */
  sourceCpu: CpuFigures;
  destCpu: CpuFigures;
  /** faultPriority asked of both engines, and the nice values their fault-path threads had (undefined: left as they were). */
  faultPriority?: number;
  sourcePriority?: ThreadPriority;
  destPriority?: ThreadPriority;
}

/**
 * Splits round trips into legs with the source's request
 * arrival times (hrtime ns, one clock for both processes); a request whose
 * arrival is unknown (or ambiguous) is left out of the first two legs.
 */
export function splitLegs(
  legs: ReadonlyArray<readonly [number, number, number, number]>,
  seen: ReadonlyArray<readonly [number, number]>,
): { toSource: LatencySummary; toPlaced: LatencySummary; toResumed: LatencySummary } {
  const at = new Map<number, number[]>();
  for (const [off, t] of seen) {
    const l = at.get(off);
    if (l) l.push(t);
    else at.set(off, [t]);
  }
  const a: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  for (const [off, t0, tPlaced, tResumed] of legs) {
    if (tPlaced > 0) c.push((tResumed - tPlaced) / 1000);
    const ts = at.get(off)?.filter((t) => t >= t0 && (tPlaced === 0 || t <= tPlaced));
    if (!ts || ts.length !== 1 || tPlaced === 0) continue;
    a.push((ts[0]! - t0) / 1000);
    b.push((tPlaced - ts[0]!) / 1000);
  }
  return { toSource: summarise(a), toPlaced: summarise(b), toResumed: summarise(c) };
}

/** Targets of issue 4 §6. */
export const TARGETS = { p50Us: 100, p99Us: 1000, backgroundGBps: 1 } as const;

/** Each target with whether it was met. */
export function targetChecks(r: FaultBenchResult): Array<{ what: string; target: string; value: string; met: boolean }> {
  return [
    { what: 'loaded p50', target: `≤ ${TARGETS.p50Us} µs`, value: fmtUs(r.loaded.p50Us), met: r.loaded.p50Us <= TARGETS.p50Us },
    { what: 'loaded p99', target: `≤ ${TARGETS.p99Us} µs`, value: fmtUs(r.loaded.p99Us), met: r.loaded.p99Us <= TARGETS.p99Us },
    {
      what: 'background',
      target: `≥ ${TARGETS.backgroundGBps} GB/s`,
      value: `${r.backgroundGBps.toFixed(2)} GB/s`,
      met: r.backgroundGBps >= TARGETS.backgroundGBps,
    },
  ];
}

/** "57 µs" / "1.23 ms". */
export function fmtUs(us: number): string {
  if (!Number.isFinite(us)) return '-';
  return us < 1000 ? `${us.toFixed(0)} µs` : `${(us / 1000).toFixed(2)} ms`;
}

/** Prefix of the machine-readable line. */
export const RESULT_PREFIX = 'RESULT ';

/** Finds and parses the `RESULT {json}` line of a run's output. */
export function parseResult(output: string): FaultBenchResult {
  const line = output.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
  if (!line) throw new Error('no RESULT line in the output');
  return JSON.parse(line.slice(RESULT_PREFIX.length)) as FaultBenchResult;
}

/** Aggregate CPU jiffies of the machine (/proc/stat "cpu" line): [busy, total]. */
export function machineJiffies(): [number, number] {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    return [total - idle, total];
  } catch {
    return [NaN, NaN];
  }
}

/** Whole-machine busy % between two machineJiffies() samples. */
export function busyPct(a: [number, number], b: [number, number]): number {
  const dt = b[1] - a[1];
  return dt > 0 ? (100 * (b[0] - a[0])) / dt : NaN;
}
