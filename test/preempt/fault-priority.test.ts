/**
 * faultPriority: the threads on the page-fault path run at the nice value
 * asked for — the source's urgent worker (its own thread) and the
 * destination's thread from POSTCOPY_LISTEN until the migration ends (then
 * it is put back), while the destination's bulk worker keeps the old value.
 * Values outside [-20, 19] are refused when the engine is made; a raise the
 * kernel refuses (no CAP_SYS_NICE) leaves the thread as it was and says why.
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MigrationDestination } from '../../src/destination/destination.js';
import { PreemptDestination } from '../../src/preempt/destination.js';
import { PreemptSource } from '../../src/preempt/source.js';
import { nativeOs } from '../../src/native.js';
import { findPackageRoot } from '../../src/hotpath/wasm.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';
import { connections, threadNices } from './helpers.js';

const MiB = 1 << 20;
const TP = 4096;
const root = process.getuid?.() === 0;

/** Our source → our destination over TCP with shared RAM (so both workers run); faults 10 pages; completes. */
async function migrate(srcNice: number | undefined, destNice: number | undefined) {
  const size = 4 * MiB;
  const g = new TestGuest([{ idstr: 'ram', size }], { shared: true });
  fillRandom(g.blocks[0]!.bytes, 3);
  const src = new PreemptSource(g, { capabilities: { postcopyRam: true }, parameters: { maxPostcopyBandwidth: 4 * MiB }, faultPriority: srcNice });
  const ram = { idstr: 'ram', usedLength: size, ramAddr: 0, bytes: new Uint8Array(new SharedArrayBuffer(size)) };
  const dest = new PreemptDestination({ blocks: [ram], postcopyRam: true, faultPriority: destNice });
  const { client, server } = await connections(2);
  src.setPreemptChannel(client[1]!);
  void dest.attachPreempt(server[1]!).catch(() => undefined);
  const loaded = dest.load(server[0]!);
  const migrated = src.migrate(client[0]!);
  src.startPostcopy();
  let atRun = NaN;
  await new Promise<void>((r) =>
    dest.once('postcopyRun', () => {
      atRun = os.getPriority();
      r();
    }),
  );
  const bits = dest.received.get('ram')!;
  let faulted = 0;
  for (let p = 1; faulted < 10 && p < size / TP; p += 37) {
    if ((bits[p >>> 5]! >>> (p & 31)) & 1) continue;
    await dest.read('ram', p * TP, TP);
    faulted++;
  }
  const during = [...threadNices().values()];
  src.setParameters({ maxPostcopyBandwidth: 0 });
  const statuses = [await migrated, await loaded];
  return { src, dest, atRun, during, statuses, faulted, equal: Buffer.compare(ram.bytes, g.blocks[0]!.bytes) === 0 };
}

describe('faultPriority', () => {
  it('refuses a value that is not a whole nice value in [-20, 19], naming the range', () => {
    const g = new TestGuest([{ idstr: 'ram', size: MiB }]);
    for (const bad of [20, -21, 1.5, Number.NaN]) {
      expect(() => new PreemptSource(g, { faultPriority: bad })).toThrow(`faultPriority must be a whole nice value between -20 and 19, not ${bad}`);
      expect(() => new MigrationDestination({ faultPriority: bad })).toThrow(/faultPriority must be a whole nice value between -20 and 19/);
    }
    expect(() => new PreemptSource(g, { faultPriority: -20 })).not.toThrow();
    expect(() => new MigrationDestination({ faultPriority: 19 })).not.toThrow();
  });

  it.runIf(root && nativeOs())('the urgent worker and the destination thread run at it during postcopy, the bulk worker does not, and the destination thread gets its value back', async () => {
    const before = os.getPriority();
    const atStart = [...threadNices().values()].filter((n) => n === -3).length;
    const r = await migrate(-3, -3);
    expect(r.statuses).toEqual(['completed', 'completed']);
    expect(r.equal).toBe(true);
    expect(r.faulted).toBe(10);
    expect(r.src.urgentStats?.requests).toBe(10);
    expect(r.src.urgentStats?.priority).toEqual({ nice: -3 });
    expect(r.dest.faultThreadPriority).toEqual({ nice: -3 });
    expect(r.dest.bulkStats?.runs).toBeGreaterThan(0);
    expect(r.atRun).toBe(-3);
    // exactly two threads more at -3: this (destination) thread and the urgent worker — not the bulk worker
    expect(r.during.filter((n) => n === -3).length - atStart).toBe(2);
    expect(os.getPriority()).toBe(before);
  });

  it.runIf(root && nativeOs())('without it no thread changes: the destination thread stays as it was through postcopy', async () => {
    const before = os.getPriority();
    const r = await migrate(undefined, undefined);
    expect(r.statuses).toEqual(['completed', 'completed']);
    expect(r.atRun).toBe(before);
    expect(r.src.urgentStats?.priority).toBeUndefined();
    expect(r.dest.faultThreadPriority).toBeUndefined();
  });

  it('a raise the kernel refuses leaves the thread as it was and says why (as an unprivileged user)', () => {
    const threads = path.join(findPackageRoot(), 'dist', 'src', 'threads.js');
    const script = `import('${threads}').then((m) => console.log(JSON.stringify(m.setThreadPriority(-5))))`;
    const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', ...(root && { uid: 65534, gid: 65534 }) });
    const r = JSON.parse(out) as { nice: number; error?: string };
    expect(r.nice).toBe(os.getPriority());
    expect(r.error).toBe('setpriority(-5): permission denied (EACCES)');
  });
});
