/**
 * PreemptSource → PreemptDestination over loopback TCP (main channel and a
 * second, preempt connection): requested pages travel on the preempt
 * channel, never twice, the background on the main channel; completed with
 * RAM equal. A broken preempt channel pauses both sides; after recovery the
 * requests go on the main channel. Each runs twice: with plain guest RAM
 * (requests served on the source's main thread) and with shared RAM (served
 * by its urgent worker, preempt/urgent/, when the native helper is built).
 */
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { PreemptDestination } from '../../src/preempt/destination.js';
import { PreemptSource } from '../../src/preempt/source.js';
import { nativeOs } from '../../src/native.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';
import { connections } from './helpers.js';

const MiB = 1 << 20;
const TP = 4096;

type Memory = 'plain' | 'shared';
const alloc = (memory: Memory, size: number): Uint8Array => new Uint8Array(memory === 'shared' ? new SharedArrayBuffer(size) : new ArrayBuffer(size));

async function setup(memory: Memory) {
  const size = 8 * MiB;
  const g = new TestGuest([{ idstr: 'ram', size }], { shared: memory === 'shared' });
  fillRandom(g.blocks[0]!.bytes, 5);
  g.blocks[0]!.bytes.fill(0, 0, 64 * TP); // some zero pages
  // A slow background (4 MiB/s) so that most faulted pages are still missing.
  const src = new PreemptSource(g, { capabilities: { postcopyRam: true }, parameters: { maxPostcopyBandwidth: 4 * MiB }, traceUrgentRequests: 1000 });
  const ram = { idstr: 'ram', usedLength: size, ramAddr: 0, bytes: alloc(memory, size) };
  const dest = new PreemptDestination({ blocks: [ram], postcopyRam: true });
  const { client, server } = await connections(2);
  src.setPreemptChannel(client[1]!);
  const preemptDone = dest.attachPreempt(server[1]!).then(
    () => 'eos',
    (e: unknown) => `error: ${(e as Error).message}`,
  );
  const loaded = dest.load(server[0]!);
  const migrated = src.migrate(client[0]!);
  src.startPostcopy();
  await new Promise<void>((r) => dest.once('postcopyRun', () => r()));
  const bits = dest.received.get('ram')!;
  const missing = (p: number): boolean => ((bits[p >>> 5]! >>> (p & 31)) & 1) === 0;
  const faulted: number[] = [];
  let x = 12345;
  /** Faults up to n random missing pages (one at a time) and checks their bytes. */
  const faults = async (n: number): Promise<void> => {
    const goal = faulted.length + n;
    for (let i = 0; i < 10 * n && faulted.length < goal; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const p = (x >>> 8) % (size / TP);
      if (!missing(p)) continue;
      faulted.push(p);
      const data = await dest.read('ram', p * TP, TP);
      expect(Buffer.compare(data, g.blocks[0]!.bytes.subarray(p * TP, (p + 1) * TP))).toBe(0);
    }
  };
  return { src, dest, g, ram, client, server, preemptDone, loaded, migrated, faults, faulted };
}

/** Recovery over one new connection (no preempt channel), 20 more faults, then the background at full speed: completed, RAM equal. */
async function recoverAndComplete(r: Awaited<ReturnType<typeof setup>>): Promise<void> {
  const { client, server } = await connections(1);
  await Promise.all([r.dest.recover(server[0]!), r.src.resume(client[0]!)]);
  await r.faults(20);
  r.src.setParameters({ maxPostcopyBandwidth: 0 });
  expect(await r.migrated).toBe('completed');
  expect(await r.loaded).toBe('completed');
  expect(Buffer.compare(r.ram.bytes, r.g.blocks[0]!.bytes)).toBe(0);
}

/** Requests the urgent worker must have served: all of them with shared RAM (and the helper), none with plain RAM. */
function expectServedBy(memory: Memory, src: PreemptSource, faulted: number[]): void {
  if (memory === 'shared' && nativeOs()) {
    expect(src.urgentStats?.runs).toBeGreaterThanOrEqual(1);
    expect(src.urgentStats?.requests).toBe(faulted.length);
    // the trace: one entry per request, in order, on a clock that moves forward
    const times = src.urgentRequestTimes;
    expect(times.map(([start]) => start / TP)).toEqual(faulted);
    expect(times.every(([, t], i) => i === 0 || t >= times[i - 1]![1])).toBe(true);
  } else {
    expect(src.urgentStats).toBeUndefined();
    expect(src.urgentRequestTimes).toEqual([]);
  }
}

describe.each(['plain', 'shared'] as const)('postcopy with a preempt channel (ours → ours), %s guest RAM', (memory) => {
  it('postcopy never started: completes as precopy, no EOS, the preempt channel is closed at the end', async () => {
    const size = 2 * MiB;
    const g = new TestGuest([{ idstr: 'ram', size }]);
    fillRandom(g.blocks[0]!.bytes, 9);
    const src = new PreemptSource(g, { capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 1 << 30 } });
    const ram = { idstr: 'ram', usedLength: size, ramAddr: 0, bytes: new Uint8Array(size) };
    const dest = new PreemptDestination({ blocks: [ram], postcopyRam: true });
    const { client, server } = await connections(2);
    src.setPreemptChannel(client[1]!);
    const preempt = dest.attachPreempt(server[1]!).then(
      () => 'eos',
      (e: unknown) => `error: ${(e as Error).message}`,
    );
    const [s, d] = await Promise.all([src.migrate(client[0]!), dest.load(server[0]!)]);
    expect([s, d]).toEqual(['completed', 'completed']);
    // closed without any record: the receiver sees the end of input, not an EOS
    expect(await preempt).toMatch(/^error: .*ram record/);
    expect(src.preemptPages).toBe(0);
    expect(dest.preemptPages).toBe(0);
    expect(Buffer.compare(ram.bytes, g.blocks[0]!.bytes)).toBe(0);
  });

  it('serves requested pages on the preempt channel, each page sent once, completes with RAM equal', async () => {
    const r = await setup(memory);
    await r.faults(60);
    r.src.setParameters({ maxPostcopyBandwidth: 0 });
    expect(await r.migrated).toBe('completed');
    expect(await r.loaded).toBe('completed');
    expect(await r.preemptDone).toBe('eos');
    expect(r.faulted.length).toBeGreaterThanOrEqual(50);
    // Each request was served on the preempt channel (the slow background had not sent them).
    expect(r.src.preemptPages).toBe(r.dest.preemptPages);
    expect(r.src.preemptPages + r.src.ignoredRequestPages).toBe(r.faulted.length);
    expect(r.src.preemptPages).toBeGreaterThanOrEqual(r.faulted.length - 3);
    expect(r.dest.faultStats().requests).toBe(r.faulted.length);
    expect(r.src.queryMigrate().ram?.['postcopy-requests']).toBe(r.faulted.length);
    expectServedBy(memory, r.src, r.faulted);
    expect(Buffer.compare(r.ram.bytes, r.g.blocks[0]!.bytes)).toBe(0);
    // With requests off the main channel, the sender yields every 0.1 ms in postcopy.
    expect(r.src.senderYieldMs).toBe(0.1);
    expect(r.client[1]!.writableEnded).toBe(true);
  });

  it('a broken preempt channel pauses both sides (as QEMU); after recovery requests go on the main channel, completes', async () => {
    const r = await setup(memory);
    await r.faults(10);
    const before = r.src.preemptPages;
    expect(before).toBeGreaterThanOrEqual(8);
    const paused = Promise.all([once(r.dest, 'paused'), once(r.src, 'paused')]);
    r.client[1]!.destroy();
    await paused;
    expect(await r.preemptDone).toMatch(/^error/);
    expect(r.dest.status).toBe('postcopy-paused');
    expect(r.src.status).toBe('postcopy-paused');
    await recoverAndComplete(r);
    expect(r.faulted.length).toBeGreaterThanOrEqual(25);
    expect(r.src.preemptPages).toBe(before); // none after the pause: the channel was dropped
    expect(r.src.senderYieldMs).toBe(0.1); // set at the switchover
    expect(r.dest.preemptPages).toBe(before);
    expect(r.src.queryMigrate().ram?.['postcopy-requests']).toBeGreaterThanOrEqual(r.faulted.length);
    expect(Buffer.compare(r.ram.bytes, r.g.blocks[0]!.bytes)).toBe(0);
  });
  it('a reset of the main channel while requests are served pauses both sides; recovered, nothing lost, completes', async () => {
    const r = await setup(memory);
    await r.faults(20);
    const served = r.src.urgentStats?.requests ?? 0;
    const paused = Promise.all([once(r.dest, 'paused'), once(r.src, 'paused')]);
    r.client[0]!.resetAndDestroy();
    await paused;
    // the preempt channel closes with the pause, whoever held a descriptor of it
    expect(await r.preemptDone).toMatch(/^error/);
    await recoverAndComplete(r);
    if (memory === 'shared' && nativeOs()) expect(served).toBe(20);
    // after the pause requests go on the main channel: the worker served none of them
    expect(r.src.urgentStats?.requests ?? 0).toBe(served);
    expect(r.src.queryMigrate().ram?.['postcopy-requests']).toBeGreaterThanOrEqual(40);
  });
});
