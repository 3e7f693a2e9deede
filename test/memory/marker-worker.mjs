// Worker for guest-memory.test.ts: plays the guest workload on a GuestMemory
// descriptor received from the main thread. It uses only the descriptor (the
// contract a worker relies on): block base and dirty-log offsets in the shared
// WebAssembly.Memory. It writes pages and marks them with Atomics.or on 32-bit
// words, and instantiates the real build/hotpath.wasm on the same memory to
// check a page the main thread wrote.
import { parentPort, workerData } from 'node:worker_threads';
import { readFileSync } from 'node:fs';

const { desc, wasmPath, writes, probe } = workerData;
const PAGE = 4096;
const mem = desc.memory;
const u8 = new Uint8Array(mem.buffer);
const i32 = new Int32Array(mem.buffer);
const instance = new WebAssembly.Instance(new WebAssembly.Module(readFileSync(wasmPath)), { env: { memory: mem } });

const byId = new Map(desc.blocks.map((b) => [b.idstr, b]));
for (const { idstr, page, value } of writes) {
  const b = byId.get(idstr);
  u8.fill(value, b.base + page * PAGE, b.base + (page + 1) * PAGE);
  Atomics.or(i32, (b.dirtyLog >>> 2) + (page >>> 5), 1 << (page & 31));
}
const pb = byId.get(probe.idstr);
const probeAt = pb.base + probe.page * PAGE;
parentPort.postMessage({
  probeZero: instance.exports.isZeroSimd(probeAt, PAGE) === 1,
  probeFirstByte: u8[probeAt],
  done: writes.length,
});
