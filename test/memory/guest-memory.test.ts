import { describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { findPackageRoot } from '../../src/hotpath/wasm.js';
import { GuestMemory, RamAddressError } from '../../src/memory/index.js';

const MiB = 1 << 20;
const layout = [
  { idstr: 'pc.ram', usedLength: 8 * MiB },
  { idstr: '/rom@etc/acpi/tables', usedLength: 128 * 1024 },
  { idstr: 'pc.bios', usedLength: 256 * 1024 },
];

describe('GuestMemory layout and bounds', () => {
  const gm = GuestMemory.create(Hotpath.create(), layout);
  it('places blocks in order with ramAddr = sum of previous lengths', () => {
    expect(gm.blocks.map((b) => b.idstr)).toEqual(layout.map((l) => l.idstr));
    expect(gm.blocks.map((b) => b.ramAddr)).toEqual([0, 8 * MiB, 8 * MiB + 128 * 1024]);
    expect(gm.totalBytes).toBe(8 * MiB + 384 * 1024);
    expect(gm.block('pc.ram').pages).toBe(2048);
    expect(gm.block('/rom@etc/acpi/tables').pages).toBe(32);
    for (const b of gm.blocks) expect(b.base % 4096).toBe(0);
    // blocks do not overlap
    const spans = gm.blocks.map((b) => [b.base, b.base + b.usedLength] as const).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    expect(gm.locate(8 * MiB + 4096)).toEqual({ block: gm.block('/rom@etc/acpi/tables'), offset: 4096 });
    expect(gm.locate(gm.totalBytes)).toBeNull();
  });
  it('pageView writes land in the block and nowhere else', () => {
    const ram = gm.block('pc.ram');
    ram.pageView(4096 * 7).fill(0xab);
    const all = ram.bytes();
    expect(all[4096 * 7]).toBe(0xab);
    expect(all[4096 * 8 - 1]).toBe(0xab);
    expect(all[4096 * 7 - 1]).toBe(0);
    expect(all[4096 * 8]).toBe(0);
    expect(gm.hotpath.isZeroPageAt(ram.addr(4096 * 7))).toBe(false);
    expect(gm.hotpath.isZeroPageAt(ram.addr(4096 * 8))).toBe(true);
  });
  it('rejects unaligned, out-of-range offsets and unknown blocks with clear errors', () => {
    const rom = gm.block('/rom@etc/acpi/tables');
    expect(() => rom.pageView(100)).toThrow(/Illegal RAM offset 0x64 .*not aligned/);
    expect(() => rom.pageView(128 * 1024)).toThrow(/beyond used_length 0x20000/);
    expect(() => rom.pageView(-4096)).toThrow(RamAddressError);
    expect(rom.pageView(128 * 1024 - 4096).length).toBe(4096);
    expect(() => gm.block('nope')).toThrow('Unknown ramblock "nope", cannot accept migration');
    expect(gm.findBlock('nope')).toBeUndefined();
  });
  it('validates the block list', () => {
    const hp = Hotpath.create();
    expect(() => GuestMemory.create(hp, [{ idstr: 'a', usedLength: 1000 }])).toThrow(/multiple of 4096/);
    expect(() => GuestMemory.create(hp, [{ idstr: 'a', usedLength: 4096 }, { idstr: 'a', usedLength: 4096 }])).toThrow(/duplicate/);
    expect(() => GuestMemory.create(hp, [{ idstr: 'a', usedLength: 4096, pageSize: 3000 }])).toThrow(/power of two/);
    expect(() => GuestMemory.create(hp, [{ idstr: 'h', usedLength: 4096, pageSize: 2 * MiB }])).toThrow(/multiple of 2097152/);
    const huge = GuestMemory.create(hp, [{ idstr: 'h', usedLength: 4 * MiB, pageSize: 2 * MiB }]);
    expect(huge.block('h').base % (2 * MiB)).toBe(0);
    expect(huge.block('h').pages).toBe(1024);
  });
  it('grows the memory on demand and views stay usable after a grow', () => {
    const hp = Hotpath.create({ initialBytes: 64 * 1024 });
    const before = hp.memory.buffer.byteLength;
    const g = GuestMemory.create(hp, [{ idstr: 'a', usedLength: 4 * MiB }, { idstr: 'b', usedLength: 4 * MiB }]);
    expect(hp.memory.buffer.byteLength).toBeGreaterThan(before);
    g.block('b').pageView(4 * MiB - 4096).fill(5);
    expect(hp.isZeroPageAt(g.block('b').addr(4 * MiB - 4096))).toBe(false);
  });
});

describe('DirtyLog', () => {
  it('markDirty + syncInto: fetch-and-clear, newly dirty count', () => {
    const gm = GuestMemory.create(Hotpath.create(), layout);
    const ram = gm.block('pc.ram');
    const bm = gm.newBitmap(ram);
    const log = gm.dirtyLog;
    for (const p of [0, 1, 31, 32, 63, 64, 2047]) log.markDirty(ram, p);
    log.markDirty('pc.ram', 1); // twice: still one page
    expect(log.logOf(ram).count()).toBe(7);
    expect(log.syncInto(bm, ram)).toBe(7);
    expect(log.logOf(ram).count()).toBe(0);
    expect(bm.count()).toBe(7);
    log.markDirty(ram, 0); // already in the migration bitmap
    log.markDirtyRange(ram, 100, 70); // crosses 32-bit words
    expect(log.syncInto(bm, ram)).toBe(70);
    expect(bm.count()).toBe(77);
    expect(bm.nextRun(65)).toEqual({ start: 100, length: 70 });
    expect(() => log.markDirty(ram, 2048)).toThrow(/outside block/);
    expect(() => log.syncInto(gm.newBitmap('pc.bios'), ram)).toThrow(/pages/);
  });

  it('attach(describe()) shares bytes and dirty bits (same thread)', () => {
    const gm = GuestMemory.create(Hotpath.create(), layout);
    const other = GuestMemory.attach(structuredClone(gm.describe()));
    other.block('pc.bios').pageView(8192).fill(9);
    other.dirtyLog.markDirty('pc.bios', 2);
    expect(gm.block('pc.bios').pageView(8192)[4095]).toBe(9);
    const bm = gm.newBitmap('pc.bios');
    expect(gm.dirtyLog.syncInto(bm, 'pc.bios')).toBe(1);
    expect(bm.test(2)).toBe(true);
    // the allocator is shared too: an allocation through the attached copy does not overlap
    const a = other.hotpath.alloc(4096);
    const b = gm.hotpath.alloc(4096);
    expect(Math.abs(a - b)).toBeGreaterThanOrEqual(4096);
  });

  it('a worker thread writes pages and marks them; the main thread sees bytes and dirty bits', async () => {
    const gm = GuestMemory.create(Hotpath.create(), layout);
    gm.block('pc.ram').pageView(4096 * 9).fill(0x77); // the worker probes this page
    const writes = [
      ...Array.from({ length: 300 }, (_, i) => ({ idstr: 'pc.ram', page: (i * 7) % 2048, value: 1 + (i % 250) })),
      { idstr: '/rom@etc/acpi/tables', page: 31, value: 0xee },
    ];
    const worker = new Worker(join(fileURLToPath(new URL('.', import.meta.url)), 'marker-worker.mjs'), {
      workerData: {
        desc: gm.describe(),
        wasmPath: join(findPackageRoot(), 'build', 'hotpath.wasm'),
        writes,
        probe: { idstr: 'pc.ram', page: 9 },
      },
    });
    const reply = await new Promise<{ probeZero: boolean; probeFirstByte: number; done: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    expect(reply).toEqual({ probeZero: false, probeFirstByte: 0x77, done: writes.length });
    const expectedPages = new Map<string, Map<number, number>>();
    for (const w of writes) {
      if (!expectedPages.has(w.idstr)) expectedPages.set(w.idstr, new Map());
      expectedPages.get(w.idstr)!.set(w.page, w.value); // last write wins
    }
    for (const [idstr, pages] of expectedPages) {
      const block = gm.block(idstr);
      const bm = gm.newBitmap(block);
      expect(gm.dirtyLog.syncInto(bm, block)).toBe(pages.size);
      for (const [page, value] of pages) {
        expect(bm.test(page)).toBe(true);
        const v = block.pageView(page * 4096);
        expect(v[0]).toBe(value);
        expect(v[4095]).toBe(value);
      }
    }
    expect(gm.dirtyLog.logOf('pc.bios').count()).toBe(0);
  });
});

describe('DirtyLog under concurrency', () => {
  it('no mark is lost while the main thread syncs as a worker marks (fetch-and-clear is atomic)', async () => {
    const pages = 1 << 17; // a 512 MiB block (never touched: only its dirty log is used)
    const hp = Hotpath.create({ initialBytes: 2 << 20 });
    const gm = GuestMemory.create(hp, [{ idstr: 'big', usedLength: pages * 4096 }]);
    const block = gm.block('big');
    const bm = gm.newBitmap(block);
    const desc = gm.describe();
    const flags = hp.alloc(64, 64); // [go, done] as 32-bit words
    const i32 = new Int32Array(hp.memory.buffer);
    const worker = new Worker(join(fileURLToPath(new URL('.', import.meta.url)), 'race-worker.mjs'), {
      workerData: { memory: desc.memory, logOffset: desc.blocks[0]!.dirtyLog, pages, seed: 77, flagOffset: flags },
    });
    const finished = new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    await new Promise((r) => worker.once('online', r));
    let total = 0;
    let syncs = 0;
    let midway = 0; // syncs that found something while the worker was still marking
    Atomics.store(i32, flags >>> 2, 1);
    Atomics.notify(i32, flags >>> 2);
    const deadline = Date.now() + 20_000;
    while (Atomics.load(i32, (flags >>> 2) + 1) !== 1 && Date.now() < deadline) {
      const n = gm.dirtyLog.syncInto(bm, block);
      total += n;
      syncs++;
      if (n > 0 && n < pages) midway++;
    }
    await finished;
    total += gm.dirtyLog.syncInto(bm, block);
    await worker.terminate();
    expect(total).toBe(pages); // every page counted exactly once as newly dirty
    expect(bm.count()).toBe(pages);
    expect(gm.dirtyLog.logOf(block).count()).toBe(0);
    expect(midway).toBeGreaterThan(0); // the syncs really overlapped the marking
    console.log(`concurrent sync: ${syncs} syncs, ${midway} found pages while the worker was marking`);
  });
});
