/**
 * The demo's two `postcopy vm` processes: the guest image, spawning a VM
 * with its QMP connection, and the timeline of the QMP events both send
 * (MIGRATION statuses, STOP, RESUME) that the demo waits on and prints.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient, type QmpEvent } from '../../control/qmp-client.js';

const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `bin/postcopy.js` of this package, found from this module (src/ under vitest, dist/src/ when built). */
export function postcopyBin(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = path.join(dir, 'bin', 'postcopy.js');
    if (fs.existsSync(p)) return p;
    dir = path.dirname(dir);
  }
  throw new Error('cannot find bin/postcopy.js above ' + fileURLToPath(import.meta.url));
}

/**
 * Writes the source guest's RAM image: in every 4 MiB, the first MiB random
 * (incompressible data, spread over the whole address space) and the rest
 * zero pages. Returns the number of data bytes.
 */
export function writeGuestImage(file: string, ramMiB: number): number {
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(4 * MiB);
  let data = 0;
  try {
    for (let off = 0; off < ramMiB * MiB; off += chunk.length) {
      const len = Math.min(chunk.length, ramMiB * MiB - off);
      chunk.fill(0);
      randomFillSync(chunk, 0, Math.min(MiB, len));
      data += Math.min(MiB, len);
      fs.writeSync(fd, chunk, 0, len, off);
    }
  } finally {
    fs.closeSync(fd);
  }
  return data;
}

export type Side = 'source' | 'destination';

/** One event of the timeline. */
export interface TimelineEntry {
  /** ms since the timeline started. */
  t: number;
  side: Side;
  /** MIGRATION status, or 'STOP' / 'RESUME'. */
  what: string;
}

/** A running `postcopy vm` with QMP connected. */
export interface DemoVm {
  side: Side;
  child: ChildProcess;
  qmp: QmpClient;
  /** What the process wrote on stderr so far. */
  stderr(): string;
}

/** Spawns `postcopy vm ARGS --qmp unix:DIR/SIDE.qmp` and connects QMP; fails at once if the process dies. */
export async function startVm(dir: string, side: Side, args: string[]): Promise<DemoVm> {
  const qmpPath = path.join(dir, `${side}.qmp`);
  const child = spawn(process.execPath, [postcopyBin(), 'vm', ...args, '--qmp', `unix:${qmpPath}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err += d));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the ${side} vm exited at start (${child.exitCode ?? child.signalCode}): ${err.trim()}`);
    }
    try {
      if (fs.existsSync(qmpPath)) {
        const qmp = await QmpClient.connect(qmpPath, { timeoutMs: 2000 });
        return { side, child, qmp, stderr: () => err };
      }
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the ${side} vm did not open its QMP socket: ${err.trim()}`);
    }
    await sleep(25);
  }
}

/**
 * MIGRATION/STOP/RESUME events of both VMs in arrival order, with a callback
 * per entry (the demo prints them) and waits on them.
 */
export class Timeline {
  readonly entries: TimelineEntry[] = [];
  private t0 = performance.now();
  private readonly waiters = new Set<() => void>();

  constructor(private readonly onEntry: (e: TimelineEntry) => void) {}

  /** Restarts the clock (time 0 = now). */
  start(): void {
    this.t0 = performance.now();
  }

  /** ms since the timeline started. */
  now(): number {
    return performance.now() - this.t0;
  }

  /** Records `vm`'s events from now on. */
  follow(vm: DemoVm): void {
    vm.qmp.on('event', (e: QmpEvent) => {
      let what: string | undefined;
      if (e.event === 'MIGRATION') what = String((e.data as { status?: unknown } | undefined)?.status);
      else if (e.event === 'STOP' || e.event === 'RESUME') what = e.event;
      if (what === undefined) return;
      const entry = { t: this.now(), side: vm.side, what };
      this.entries.push(entry);
      this.onEntry(entry);
      for (const w of [...this.waiters]) w();
    });
  }

  /** Statuses (and STOP/RESUME) of one side, in order. */
  sequence(side: Side): string[] {
    return this.entries.filter((e) => e.side === side).map((e) => e.what);
  }

  /** The `n`th (1-based) entry of `side` with `what`, if seen. */
  find(side: Side, what: string, n = 1): TimelineEntry | undefined {
    return this.entries.filter((e) => e.side === side && e.what === what)[n - 1];
  }

  /**
   * Resolves with the `n`th `what` of `side`; rejects after `timeoutMs`, or
   * as soon as `side` reaches one of `fatal` (e.g. failed), naming what was seen.
   */
  wait(side: Side, what: string, n: number, timeoutMs: number, fatal: readonly string[] = ['failed', 'cancelled']): Promise<TimelineEntry> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = this.find(side, what, n);
        const bad = this.entries.find((e) => e.side === side && fatal.includes(e.what));
        if (!hit && !bad) return;
        this.waiters.delete(check);
        clearTimeout(timer);
        if (hit) resolve(hit);
        else reject(new Error(`the ${side} went ${bad!.what} while the demo waited for ${what} (${this.sequence(side).join(' → ')})`));
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${what} on the ${side} within ${timeoutMs / 1000} s (${side} so far: ${this.sequence(side).join(' → ') || 'nothing'})`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }
}
