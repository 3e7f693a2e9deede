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
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { GuestMemoryDescriptor } from '../memory/guest-memory.js';
import { CONTROL_QUIT, CONTROL_RUN, CONTROL_STATE, CONTROL_THROTTLE, CONTROL_VISITS, type WorkloadSpec } from './workload-types.js';

interface Data {
  desc: GuestMemoryDescriptor;
  spec: WorkloadSpec;
  control: SharedArrayBuffer;
  seed: number;
}

const PAGE = 4096;
const SLICE_MS = 10;
const { desc, spec, control, seed } = workerData as Data;
const ctl = new Int32Array(control);
const block = desc.blocks[0]!;
const u8 = new Uint8Array(desc.memory.buffer);
const i32 = new Int32Array(desc.memory.buffer);
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

function visit(): void {
  const page = nextPage();
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
    if (Atomics.load(ctl, CONTROL_STATE) !== 1) {
      Atomics.store(ctl, CONTROL_STATE, 1);
      Atomics.notify(ctl, CONTROL_STATE);
    }
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
