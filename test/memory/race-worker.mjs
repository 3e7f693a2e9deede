// Worker for the concurrent sync test: marks pages 0..pages-1 of one block's
// dirty log exactly once each, in a shuffled order, with Atomics.or on 32-bit
// words (what a guest workload does), as fast as it can.
import { parentPort, workerData } from 'node:worker_threads';

const { memory, logOffset, pages, seed } = workerData;
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
for (let i = 0; i < pages; i++) {
  const p = order[i];
  Atomics.or(i32, base + (p >>> 5), 1 << (p & 31));
}
parentPort.postMessage({ marked: pages });
