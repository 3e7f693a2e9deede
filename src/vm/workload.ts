/**
 * Workload: the controller of the guest workload worker (workload-worker.ts).
 * `resume()` lets it run, `pause()` stops it and resolves once no write is
 * in flight (what vm_stop guarantees before the last migration pass),
 * `setThrottle(p)` applies auto-converge's cpu-throttle-percentage.
 * On a postcopy destination `attachFaults()` makes every page touch go
 * through the fault path (see workload-worker.ts and fault-bridge.ts).
 */
import { Worker } from 'node:worker_threads';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { WorkloadSpec } from './options.js';
import {
  CONTROL_BITMAP,
  CONTROL_BLOCKED_US,
  CONTROL_FAULTS,
  CONTROL_MAX_BLOCKED_US,
  CONTROL_POSTCOPY,
  CONTROL_QUIT,
  CONTROL_RUN,
  CONTROL_STATE,
  CONTROL_THROTTLE,
  CONTROL_VISITS,
  CONTROL_WORDS,
  type FaultMessage,
  type FaultTraceMessage,
} from './workload-types.js';
import { FaultBridge } from './fault-bridge.js';

/** Options of a Workload beyond its spec. */
export interface WorkloadOptions {
  /** xorshift seed (default: the clock). */
  seed?: number;
  /** Report every resolved fault with the first word of the page as read (tests). */
  onTrace?: (t: FaultTraceMessage) => void;
}

/** Fault statistics of the workload (x-query-workload). */
export interface WorkloadFaultStats {
  faults: number;
  blockedUs: number;
  maxBlockedUs: number;
}

/** Atomics.waitAsync (Node 20 has it; the ES2022 lib typings do not). */
interface AtomicsWaitAsync {
  waitAsync(a: Int32Array, index: number, value: number, timeout?: number): { async: boolean; value: Promise<string> | string };
}

export class Workload {
  private readonly worker: Worker;
  private readonly ctl: Int32Array;
  private exited = false;
  private readonly exit: Promise<void>;
  private bridge: FaultBridge | undefined;

  /** Starts the worker paused on `mem`'s first RAM block. */
  constructor(mem: GuestMemory, readonly spec: WorkloadSpec, opts: WorkloadOptions | number = {}) {
    if (mem.blocks.length === 0) throw new RangeError('workload: the VM has no RAM');
    const o = typeof opts === 'number' ? { seed: opts } : opts;
    const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
    this.ctl = new Int32Array(control);
    this.worker = new Worker(new URL('./workload-worker.js', import.meta.url), {
      workerData: { desc: mem.describe(), spec, control, seed: o.seed ?? Date.now(), trace: o.onTrace !== undefined },
    });
    this.worker.unref();
    this.worker.on('message', (m: FaultMessage | FaultTraceMessage | { type?: undefined }) => {
      if (m.type === 'fault') {
        if (this.bridge) void this.bridge.serve(m, this.ctl);
        else FaultBridge.wake(this.ctl); // postcopy already over: the page is there
      } else if (m.type === 'trace') o.onTrace?.(m);
    });
    this.exit = new Promise((resolve) => {
      this.worker.once('exit', () => {
        this.exited = true;
        resolve();
      });
      this.worker.once('error', (e) => {
        process.stderr.write(`postcopy vm: workload: ${e.message}\n`);
      });
    });
  }

  /** Page visits so far. */
  get visits(): number {
    return Atomics.load(this.ctl, CONTROL_VISITS) >>> 0;
  }

  /**
   * Postcopy: from now on every page touch checks the received bitmap whose
   * words start at byte `bitmapOffset` of the shared memory; misses go to
   * `bridge`. Call before resume() at RUN.
   */
  attachFaults(bridge: FaultBridge, bitmapOffset: number): void {
    this.bridge = bridge;
    Atomics.store(this.ctl, CONTROL_BITMAP, bitmapOffset);
    Atomics.store(this.ctl, CONTROL_POSTCOPY, 1);
  }

  /** Postcopy over (every page received): skip the check; a waiting worker is released. */
  detachFaults(): void {
    Atomics.store(this.ctl, CONTROL_POSTCOPY, 0);
    this.bridge = undefined;
    FaultBridge.wake(this.ctl);
  }

  /** Faults taken and time blocked on them. */
  get faultStats(): WorkloadFaultStats {
    return {
      faults: Atomics.load(this.ctl, CONTROL_FAULTS) >>> 0,
      blockedUs: Atomics.load(this.ctl, CONTROL_BLOCKED_US) >>> 0,
      maxBlockedUs: Atomics.load(this.ctl, CONTROL_MAX_BLOCKED_US) >>> 0,
    };
  }

  /** Let the workload run. */
  resume(): void {
    Atomics.store(this.ctl, CONTROL_RUN, 1);
    Atomics.notify(this.ctl, CONTROL_RUN);
  }

  /** Stop the workload; resolves once the worker has acknowledged (no write in flight). */
  async pause(): Promise<void> {
    Atomics.store(this.ctl, CONTROL_RUN, 0);
    Atomics.notify(this.ctl, CONTROL_QUIT); // wakes a throttle sleep
    while (!this.exited && Atomics.load(this.ctl, CONTROL_STATE) !== 0) {
      const r = (Atomics as unknown as AtomicsWaitAsync).waitAsync(this.ctl, CONTROL_STATE, 1, 50);
      if (r.async) await r.value;
    }
  }

  /** cpu-throttle-percentage (0 = none). */
  setThrottle(percent: number): void {
    Atomics.store(this.ctl, CONTROL_THROTTLE, Math.max(0, Math.min(99, Math.round(percent))));
  }

  /** Current throttle percentage. */
  get throttle(): number {
    return Atomics.load(this.ctl, CONTROL_THROTTLE);
  }

  /** Ends the worker. */
  async close(): Promise<void> {
    Atomics.store(this.ctl, CONTROL_RUN, 0);
    Atomics.store(this.ctl, CONTROL_QUIT, 1);
    Atomics.notify(this.ctl, CONTROL_RUN);
    Atomics.notify(this.ctl, CONTROL_QUIT);
    await Promise.race([this.exit, new Promise((r) => setTimeout(r, 1000))]);
    if (!this.exited) await this.worker.terminate();
  }
}
