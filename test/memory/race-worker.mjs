// Worker for the concurrent sync test: marks pages 0..pages-1 of one block's
// dirty log exactly once each, in a shuffled order, with Atomics.or on 32-bit
// words (what a guest workload does), as fast as it can.
import { parentPort, workerData } from 'node:worker_threads';

const { memory, logOffset, pages, seed, flagOffset } = workerData;
const i32 = new Int32Array(memory.buffer);
const order = new Uint32Array(pages);
for (let i = 0; i < pages; i++) order[i] = i;
let s = seed >>> 0 || 1;
for (let i = pages - 1; i > 0; i--) {
  s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
  const j = s % (i + 1);
  const t = order[i]; order[i] = order[j]; order[j] = t;
}
const base = logOffset >>> 2;
const go = flagOffset >>> 2; // main sets 1 when it is syncing; we set done = 1 at the end
while (Atomics.load(i32, go) !== 1) Atomics.wait(i32, go, 0, 10);
let sink = 0;
for (let i = 0; i < pages; i++) {
  const p = order[i];
  Atomics.or(i32, base + (p >>> 5), 1 << (p & 31));
  if ((i & 255) === 0) for (let k = 0; k < 20000; k++) sink += k; // spread the marks over time
}
Atomics.store(i32, go + 1, 1);
parentPort.postMessage({ marked: pages, sink });
