/**
 * Throughput measurement (a script, not a test): one process, loopback TCP,
 * precopy of a stopped guest holding random RAM, GuestMemory + WASM hot
 * path (as `postcopy vm` does) and plain JS page ops on plain ArrayBuffers.
 *
 *   npx tsc -p test/engine/measure-tsconfig.json   # → .h10dist/ (not committed)
 *   node .h10dist/test/engine/measure-precopy.js [MiB] [rounds] [wasm|js|wsrc]
 *
 * PREFAULT=1 touches the destination's WASM RAM before timing (first-touch
 * page faults are ~150-200 ms of a 256 MiB run on this host). Both sides
 * share one thread, so compare the cpu column; bench:migrate is the real test.
 */
import net from 'node:net';
import { Hotpath } from '../../src/hotpath/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import { hotpathPageOps } from '../../src/engine/hotpath-ops.js';
import { engineBlocks, sourceGuestFromMemory } from '../../src/engine/memory-guest.js';
import { fillRandom, TestGuest } from './helpers.js';

const MiB = 1 << 20;
const size = Number(process.argv[2] ?? 256) * MiB;
const rounds = Number(process.argv[3] ?? 3);

async function pair(): Promise<[net.Socket, net.Socket]> {
  return new Promise((resolve) => {
    const srv = net.createServer((s) => {
      srv.close();
      resolve([c, s]);
    });
    let c: net.Socket;
    srv.listen(0, '127.0.0.1', () => {
      c = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
    });
  });
}

let cpuMs = 0;

async function run(kind: 'wasm' | 'js' | 'wsrc'): Promise<number> {
  let src: MigrationSource;
  let dst: MigrationDestination;
  let check: () => boolean;
  const opts = { parameters: { maxBandwidth: 1e12 } };
  if (kind === 'wsrc') {
    // WASM source, plain destination: isolates the two sides.
    const shp = Hotpath.create({ initialBytes: size + 8 * MiB });
    const mem = GuestMemory.create(shp, [{ idstr: 'pc.ram', usedLength: size }]);
    fillRandom(mem.blocks[0]!.bytes(), 1);
    const guest = sourceGuestFromMemory(mem, { stop() {}, resume() {}, runState: 'paused' });
    src = new MigrationSource(guest, { ...opts, pageOps: hotpathPageOps(shp) });
    const blocks = guest.blocks.map((b) => ({ ...b, bytes: new Uint8Array(b.usedLength) }));
    dst = new MigrationDestination({ blocks });
    check = () => Buffer.compare(blocks[0]!.bytes, mem.blocks[0]!.bytes()) === 0;
  } else if (kind === 'wasm') {
    const shp = Hotpath.create({ initialBytes: size + 8 * MiB });
    const mem = GuestMemory.create(shp, [{ idstr: 'pc.ram', usedLength: size }]);
    fillRandom(mem.blocks[0]!.bytes(), 1);
    const guest = sourceGuestFromMemory(mem, { stop() {}, resume() {}, runState: 'paused' });
    src = new MigrationSource(guest, { ...opts, pageOps: hotpathPageOps(shp) });
    const dhp = Hotpath.create({ initialBytes: size + 8 * MiB });
    const dmem = GuestMemory.create(dhp, [{ idstr: 'pc.ram', usedLength: size }]);
    if (process.env.PREFAULT) dmem.blocks[0]!.bytes().fill(1); // touch every page before timing
    dst = new MigrationDestination({ blocks: engineBlocks(dmem), pageOps: hotpathPageOps(dhp) });
    check = () => Buffer.compare(dmem.blocks[0]!.bytes(), mem.blocks[0]!.bytes()) === 0;
  } else {
    const g = new TestGuest([{ idstr: 'pc.ram', size }]);
    fillRandom(g.blocks[0]!.bytes, 1);
    src = new MigrationSource(g, opts);
    const blocks = g.blocks.map((b) => ({ ...b, bytes: new Uint8Array(b.usedLength) }));
    dst = new MigrationDestination({ blocks });
    check = () => Buffer.compare(blocks[0]!.bytes, g.blocks[0]!.bytes) === 0;
  }
  const [a, b] = await pair();
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const [s, d] = await Promise.all([src.migrate(a), dst.load(b)]);
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  cpuMs = (cpu.user + cpu.system) / 1000;
  a.destroy();
  b.destroy();
  if (s !== 'completed' || d !== 'completed' || !check()) throw new Error(`${kind}: ${s}/${d} or RAM differs`);
  return ms;
}

for (let r = 0; r < rounds; r++) {
  for (const k of (process.argv[4] ? [process.argv[4]] : ['wasm', 'js']) as ('wasm' | 'js' | 'wsrc')[]) {
    const ms = await run(k);
    console.log(`${k} ${size / MiB} MiB: ${ms.toFixed(0)} ms  ${((size / MiB) / (ms / 1000)).toFixed(0)} MiB/s  (cpu ${cpuMs.toFixed(0)} ms)`);
  }
}
