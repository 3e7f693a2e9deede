/**
 * What the demo prints: story lines on stdout (through `out`), a progress
 * line on stderr (redrawn in place on a terminal, a line every 500 ms
 * otherwise), and the figures of the final summary.
 */
import type { TimelineEntry } from './vms.js';

const MiB = 1 << 20;

/** Bytes as MiB with one decimal (KiB below 1 MiB, `0 B` for nothing). */
export function size(b: number): string {
  if (b === 0) return '0 B';
  return b < MiB ? `${(b / 1024).toFixed(1)} KiB` : `${(b / MiB).toFixed(1)} MiB`;
}

/** Microseconds as ms with two decimals, or µs below 1 ms. */
export function micros(us: number): string {
  return us < 1000 ? `${Math.round(us)} µs` : `${(us / 1000).toFixed(2)} ms`;
}

/** A time on the timeline: `[  1.23 s]`. */
export function stamp(ms: number): string {
  return `[${(ms / 1000).toFixed(2).padStart(6)} s]`;
}

/** `[#####.....]` for a fraction done. */
export function bar(fraction: number, width = 24): string {
  const n = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return '[' + '#'.repeat(n) + '.'.repeat(width - n) + ']';
}

const WHO_WIDTH = 12;

/** One story line: `[  1.23 s] source       text`. */
export function storyLine(ms: number, who: string, text: string): string {
  return `${stamp(ms)} ${who.padEnd(WHO_WIDTH)} ${text}`;
}

/** How a timeline entry reads in the story. */
export function describeEntry(e: TimelineEntry): string {
  if (e.what === 'STOP') return 'STOP: the guest is paused';
  if (e.what === 'RESUME') return e.side === 'destination' ? 'RESUME: the guest runs here now' : 'RESUME: the guest runs again';
  return `MIGRATION ${e.what}`;
}

/** Writes story lines and the progress line without mixing them up. */
export class Reporter {
  private readonly tty: boolean;
  private lastProgress = -Infinity;
  private progressShown = false;

  constructor(
    private readonly out: (line: string) => void,
    private readonly err: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = err.isTTY === true;
  }

  /** A story line (stdout); clears a progress line drawn in place first. */
  line(text: string): void {
    this.clearProgress();
    this.out(text);
  }

  /** The progress line: in place on a terminal, else at most every 500 ms. */
  progress(text: string): void {
    const now = performance.now();
    if (!this.tty) {
      if (now - this.lastProgress < 500) return;
      this.lastProgress = now;
      this.err.write(text + '\n');
      return;
    }
    this.err.write('\r\x1b[K' + text);
    this.progressShown = true;
  }

  /** Removes the in-place progress line (terminal only). */
  clearProgress(): void {
    if (this.tty && this.progressShown) this.err.write('\r\x1b[K');
    this.progressShown = false;
  }
}

/** The RAM statistics of the source's query-migrate we use. */
export interface RamStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests'?: number;
  'precopy-bytes'?: number;
  'downtime-bytes'?: number;
  'postcopy-bytes'?: number;
}

/** query-migrate as the demo reads it (source or destination). */
export interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: RamStats;
  'xbzrle-cache'?: { 'cache-size': number; bytes: number; pages: number; 'cache-miss': number; overflow: number };
  'postcopy-blocktime'?: number;
  'x-postcopy-fault-latency'?: { count: number; 'p50-us': number; 'p99-us': number; 'max-us': number };
}

/** x-query-workload. */
export interface WorkloadInfo {
  visits: number;
  faults: number;
  'blocked-ms': number;
  'max-blocked-ms': number;
}

/** The progress line for one poll of the source (and the destination's workload in postcopy). */
export function progressLine(info: MigrateInfo, dstWorkload?: WorkloadInfo): string {
  const r = info.ram;
  const st = (info.status ?? 'none').padEnd(15);
  if (!r) return st;
  const done = r.total > 0 ? 1 - r.remaining / r.total : 0;
  let line = `${bar(done)} ${st} pass ${String(r['dirty-sync-count']).padStart(2)}  remaining ${size(r.remaining).padStart(10)}  rate ${r.mbps.toFixed(0).padStart(4)} Mbps  sent ${size(r.transferred)}`;
  if (info.status?.startsWith('postcopy')) {
    line += `  requests ${r['postcopy-requests'] ?? 0}`;
    if (dstWorkload) line += `  guest faults ${dstWorkload.faults}`;
  }
  return line;
}
