/**
 * The guest workload, run in a worker thread (src/vm/workload.ts starts it).
 * It sees the VM's RAM through the shared WebAssembly.Memory described by a
 * GuestMemoryDescriptor and, like a vCPU under KVM dirty logging, writes
 * pages and sets their bits in the DirtyLog (Atomics.or on 32-bit words).
 *
 * Control words (Int32Array over a SharedArrayBuffer, see CONTROL_*):
 * the main thread asks to run/pause/quit and sets the throttle percentage;
 * the worker acknowledges the state it is in, so a pause is complete (no
 * write in flight) once CONTROL_STATE reads 0.
 *
 * Postcopy (CONTROL_POSTCOPY = 1, set by the main thread at RUN): before a
 * page is read or written the worker checks its bit in the destination's
 * received bitmap (shared words at CONTROL_BITMAP). On a miss it posts a
 * FaultMessage and Atomics.wait()s on CONTROL_FAULT until the main thread
 * has placed the page (dest.ensure()) and notified, like a vCPU blocked in
 * userfaultfd. A pause asked for while blocked is acknowledged at once (no
 * write is in flight) and the visit is dropped.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { GuestMemoryDescriptor } from '../memory/guest-memory.js';
import {
  CONTROL_BITMAP,
  CONTROL_BLOCKED_US,
  CONTROL_FAULT,
  CONTROL_FAULTS,
  CONTROL_MAX_BLOCKED_US,
  CONTROL_POSTCOPY,
  CONTROL_QUIT,
  CONTROL_RUN,
  CONTROL_STATE,
  CONTROL_THROTTLE,
  CONTROL_VISITS,
  type FaultMessage,
  type FaultTraceMessage,
  type WorkloadSpec,
} from './workload-types.js';

interface Data {
  desc: GuestMemoryDescriptor;
  spec: WorkloadSpec;
  control: SharedArrayBuffer;
  seed: number;
  /** Post a FaultTraceMessage after every fault (tests). */
  trace?: boolean;
}

const PAGE = 4096;
const SLICE_MS = 10;
const { desc, spec, control, seed, trace } = workerData as Data;
const ctl = new Int32Array(control);
const block = desc.blocks[0]!;
const u8 = new Uint8Array(desc.memory.buffer);
const i32 = new Int32Array(desc.memory.buffer);
/** View over the whole current memory (the received bitmap may lie beyond the RAM, in memory grown later). */
let bits = new Int32Array(desc.memory.buffer);
/** How long one wait on the fault word lasts before the worker looks at the run/quit words again, ms. */
const FAULT_POLL_MS = 50;
const blockPages = block.usedLength / PAGE;
const wssPages = Math.max(1, Math.min(blockPages, spec.wss > 0 ? Math.floor(spec.wss / PAGE) : blockPages));
const hotPages = Math.max(1, Math.floor(wssPages / 10));
let x = seed >>> 0 || 1;
let seqNext = 0;
let counter = 1;
let sink = 0;

function rnd(): number {
  // xorshift32
  x ^= x << 13;
  x >>>= 0;
  x ^= x >>> 17;
  x ^= x << 5;
  return (x >>>= 0);
}

function nextPage(): number {
  switch (spec.pattern) {
    case 'seq': {
      const p = seqNext;
      seqNext = (seqNext + 1) % wssPages;
      return p;
    }
    case 'rand':
      return rnd() % wssPages;
    case 'hot':
      return rnd() % 10 < 9 ? rnd() % hotPages : rnd() % wssPages;
  }
}

function setState(v: number): void {
  if (Atomics.load(ctl, CONTROL_STATE) !== v) {
    Atomics.store(ctl, CONTROL_STATE, v);
    Atomics.notify(ctl, CONTROL_STATE);
  }
}

function received(page: number): boolean {
  const at = (Atomics.load(ctl, CONTROL_BITMAP) >>> 2) + (page >>> 5);
  if (at >= bits.length) bits = new Int32Array(desc.memory.buffer);
  return (Atomics.load(bits, at) & (1 << (page & 31))) !== 0;
}

/**
 * The fault path: true when `page` may be touched now. On a miss: post the
 * fault, wait until the main thread says it is placed. False when the
 * workload was paused or asked to quit meanwhile (the visit is dropped).
 */
function ensurePage(page: number): boolean {
  while (Atomics.load(ctl, CONTROL_POSTCOPY) !== 0 && !received(page)) {
    const t0 = performance.now();
    Atomics.store(ctl, CONTROL_FAULT, 1);
    parentPort!.postMessage({ type: 'fault', block: 0, page } satisfies FaultMessage);
    while (Atomics.load(ctl, CONTROL_FAULT) !== 0) {
      Atomics.wait(ctl, CONTROL_FAULT, 1, FAULT_POLL_MS);
      if (Atomics.load(ctl, CONTROL_QUIT) !== 0) return false;
      // Nothing is in flight while blocked: a pause can be acknowledged now.
      if (Atomics.load(ctl, CONTROL_RUN) === 0) setState(0);
    }
    const us = Math.round((performance.now() - t0) * 1000);
    Atomics.add(ctl, CONTROL_FAULTS, 1);
    Atomics.add(ctl, CONTROL_BLOCKED_US, us);
    if (us > Atomics.load(ctl, CONTROL_MAX_BLOCKED_US)) Atomics.store(ctl, CONTROL_MAX_BLOCKED_US, us);
    if (trace) {
      const w = new DataView(desc.memory.buffer).getUint32(block.base + page * PAGE, true);
      parentPort!.postMessage({ type: 'trace', page, word: w } satisfies FaultTraceMessage);
    }
    if (Atomics.load(ctl, CONTROL_RUN) === 0) return false;
    setState(1);
  }
  return true;
}

function visit(): void {
  // A pause acknowledged while blocked on a fault: nothing more in this slice.
  if (Atomics.load(ctl, CONTROL_STATE) === 0) return;
  const page = nextPage();
  // Reads and writes both fault first: a write to a missing page would be overwritten when it arrives.
  if (!ensurePage(page)) return;
  const base = block.base + page * PAGE;
  const n = spec.bytes;
  const start = n >= PAGE ? 0 : rnd() % (PAGE - n + 1);
  if (spec.mode === 'read') {
    for (let i = 0; i < n; i++) sink ^= u8[base + start + i]!;
    return;
  }
  counter = (counter + 1) & 0xff || 1;
  for (let i = 0; i < n; i++) u8[base + start + i] = (counter + i) & 0xff;
  Atomics.or(i32, (block.dirtyLog >>> 2) + (page >>> 5), 1 << (page & 31));
}

function sleep(ms: number): void {
  Atomics.wait(ctl, CONTROL_QUIT, 0, ms);
}

function loop(): void {
  for (;;) {
    if (Atomics.load(ctl, CONTROL_QUIT) !== 0) break;
    if (Atomics.load(ctl, CONTROL_RUN) === 0) {
      Atomics.store(ctl, CONTROL_STATE, 0);
      Atomics.notify(ctl, CONTROL_STATE);
      Atomics.wait(ctl, CONTROL_RUN, 0, 1000);
      continue;
    }
    setState(1);
    // One time slice: visits at the rate asked (or as many as fit).
    const t0 = performance.now();
    const budget = spec.rate > 0 ? Math.max(1, Math.round((spec.rate * SLICE_MS) / 1000)) : Infinity;
    let done = 0;
    while (done < budget && performance.now() - t0 < SLICE_MS) {
      const n = Math.min(64, budget - done);
      for (let i = 0; i < n; i++) visit();
      done += n;
      Atomics.add(ctl, CONTROL_VISITS, n);
      if (Atomics.load(ctl, CONTROL_RUN) === 0) break;
    }
    const spent = performance.now() - t0;
    // cpu-throttle-percentage: sleep p/(100-p) of the time worked, as QEMU's vCPU throttling does.
    const p = Atomics.load(ctl, CONTROL_THROTTLE);
    let rest = spec.rate > 0 ? Math.max(0, SLICE_MS - spent) : 0;
    if (p > 0) rest += (Math.max(spent, SLICE_MS) * p) / (100 - p);
    if (rest > 0 && Atomics.load(ctl, CONTROL_RUN) !== 0) sleep(rest);
  }
  Atomics.store(ctl, CONTROL_STATE, 0);
  Atomics.notify(ctl, CONTROL_STATE);
  parentPort?.postMessage({ sink });
}

loop();
