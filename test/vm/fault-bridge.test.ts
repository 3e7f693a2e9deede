/**
 * The workload's postcopy fault path, in process: a real workload worker
 * (built dist/) on shared memory, a received bitmap in that memory, and a
 * fake destination whose ensure() places pages after a delay.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { PageBitmap } from '../../src/memory/page-bitmap.js';
import { DEFAULT_WORKLOAD, type WorkloadSpec } from '../../src/vm/options.js';
import type { FaultTraceMessage } from '../../src/vm/workload-types.js';
import { ROOT } from './helpers.js';

type WorkloadMod = typeof import('../../src/vm/workload.js');
type BridgeMod = typeof import('../../src/vm/fault-bridge.js');
// The worker script exists only as built JavaScript: use the dist classes.
const { Workload } = (await import(path.join(ROOT, 'dist/src/vm/workload.js'))) as WorkloadMod;
const { FaultBridge } = (await import(path.join(ROOT, 'dist/src/vm/fault-bridge.js'))) as BridgeMod;

const MiB = 1 << 20;
const PAGE = 4096;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** The word a placed page starts with. */
const tag = (page: number): number => (Math.imul(page + 1, 0x9e3779b1) | 1) >>> 0;

type W = InstanceType<WorkloadMod['Workload']>;
const workers: W[] = [];
afterEach(async () => {
  for (const w of workers.splice(0)) await w.close();
});

/** Shared RAM with its received bitmap, and a fake destination placing pages after `delayMs`. */
function setup(ramBytes: number, delayMs: number) {
  const hp = Hotpath.create({ initialBytes: ramBytes + 8 * MiB });
  const mem = GuestMemory.create(hp, [{ idstr: 'ram', usedLength: ramBytes }]);
  const received = PageBitmap.create(hp, ramBytes / PAGE);
  const block = mem.blocks[0]!;
  const requests: number[] = [];
  const pending = new Map<number, Promise<void>>();
  /** While on, newly requested pages never arrive. */
  const hold = { on: false };
  const dest = {
    ensure(idstr: string, offset: number): Promise<void> {
      expect(idstr).toBe('ram');
      const page = offset / PAGE;
      if (received.test(page)) return Promise.resolve();
      let p = pending.get(page);
      if (!p) {
        requests.push(page);
        if (hold.on) return new Promise<void>(() => undefined);
        p = sleep(delayMs).then(() => {
          const bytes = block.bytes();
          bytes.fill(0xab, page * PAGE, (page + 1) * PAGE);
          new DataView(bytes.buffer, bytes.byteOffset).setUint32(page * PAGE, tag(page), true);
          // the bit only after the bytes, atomically
          Atomics.or(received.words32(), page >>> 5, 1 << (page & 31));
          pending.delete(page);
        });
        pending.set(page, p);
      }
      return p;
    },
  };
  return { hp, mem, received, dest, requests, hold };
}

function start(mem: GuestMemory, spec: Partial<WorkloadSpec>, traces: FaultTraceMessage[], seed: number): W {
  const w = new Workload(mem, { ...DEFAULT_WORKLOAD, ...spec }, { seed, onTrace: (t) => traces.push(t) });
  workers.push(w);
  return w;
}

describe('fault bridge', () => {
  it('a worker blocks on a missing page and resumes with the placed bytes', async () => {
    const { mem, received, dest, requests, hold } = setup(4 * MiB, 300);
    const traces: FaultTraceMessage[] = [];
    const w = start(mem, { mode: 'read', pattern: 'seq', rate: 0 }, traces, 1);
    const bridge = new FaultBridge(dest, ['ram']);
    w.attachFaults(bridge, received.offset);
    w.resume();
    // page 0 is missing: the worker sits in the fault for the 300 ms the fake takes
    for (let i = 0; i < 200 && requests.length === 0; i++) await sleep(10);
    const blocked = w.visits;
    expect(requests).toEqual([0]);
    expect(w.faultStats.faults).toBe(0);
    await sleep(100);
    expect(w.visits).toBe(blocked);
    expect(traces).toEqual([]);
    for (let i = 0; i < 100 && traces.length < 3; i++) await sleep(20);
    expect(traces.slice(0, 3)).toEqual([0, 1, 2].map((page) => ({ type: 'trace', page, word: tag(page) })));
    const f = w.faultStats;
    expect(f.faults).toBeGreaterThanOrEqual(3);
    expect(f.maxBlockedUs).toBeGreaterThanOrEqual(250_000);
    expect(f.blockedUs).toBeGreaterThanOrEqual(f.maxBlockedUs);
    expect(bridge.served).toBeGreaterThanOrEqual(3);
    // from now on pages never come: a pause while blocked must still be acknowledged
    hold.on = true;
    const n = requests.length;
    for (let i = 0; i < 200 && requests.length === n; i++) await sleep(10);
    expect(requests.length).toBe(n + 1);
    const paused = await Promise.race([w.pause().then(() => true), sleep(3000).then(() => false)]);
    expect(paused).toBe(true);
  });

  it('many workers fault concurrently; every resumed read sees its page; no write lands on a missing page', async () => {
    const ram = 8 * MiB;
    const { mem, received, dest, requests } = setup(ram, 5);
    const readers: FaultTraceMessage[][] = [];
    const bridge = new FaultBridge(dest, ['ram']);
    const all: W[] = [];
    for (let i = 0; i < 4; i++) {
      const t: FaultTraceMessage[] = [];
      readers.push(t);
      all.push(start(mem, { mode: 'read', pattern: 'rand', rate: 0 }, t, 11 + i));
    }
    const writerTraces: FaultTraceMessage[] = [];
    const writer = start(mem, { mode: 'write', pattern: 'rand', rate: 0, bytes: 64 }, writerTraces, 99);
    all.push(writer);
    for (const w of all) w.attachFaults(bridge, received.offset);
    const maxInFlight = { n: 0 };
    const probe = setInterval(() => (maxInFlight.n = Math.max(maxInFlight.n, bridge.inFlight)), 1);
    for (const w of all) w.resume();
    for (let i = 0; i < 200 && readers.some((t) => t.length < 20); i++) await sleep(25);
    clearInterval(probe);
    for (const w of all) await w.pause();
    // several faults were being served at once
    expect(maxInFlight.n).toBeGreaterThan(1);
    // (a page the writer also dirtied may have changed before the reader looked)
    const log = mem.dirtyLog.logOf('ram');
    let checked = 0;
    for (const t of readers) {
      expect(t.length).toBeGreaterThanOrEqual(20);
      for (const tr of t) {
        if (log.test(tr.page)) continue;
        expect(tr.word).toBe(tag(tr.page));
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(40);
    // one request per page, however many workers waited for it
    expect(new Set(requests).size).toBe(requests.length);
    // every page the writer dirtied had been received before it wrote
    let dirty = 0;
    log.forEachSet((page) => {
      dirty++;
      expect(received.test(page)).toBe(true);
    });
    expect(dirty).toBeGreaterThan(0);
    expect(writer.faultStats.faults).toBeGreaterThan(0);
  });

  it('detachFaults: a blocked worker goes on without the page; no more checks', async () => {
    const { mem, received, requests } = setup(2 * MiB, 0);
    let asked = 0;
    const never = {
      ensure: (): Promise<void> => {
        asked++;
        return new Promise(() => undefined);
      },
    };
    const traces: FaultTraceMessage[] = [];
    const w = start(mem, { mode: 'read', pattern: 'seq', rate: 0 }, traces, 3);
    w.attachFaults(new FaultBridge(never, ['ram']), received.offset);
    w.resume();
    for (let i = 0; i < 300 && asked === 0; i++) await sleep(10);
    expect(asked).toBe(1);
    const v = w.visits;
    await sleep(50);
    expect(w.visits).toBe(v);
    w.detachFaults();
    for (let i = 0; i < 200 && w.visits <= v + 1000; i++) await sleep(10);
    expect(w.visits).toBeGreaterThan(v + 1000);
    expect(asked).toBe(1);
    expect(requests).toEqual([]);
    expect(traces.length).toBe(1);
  });
});
