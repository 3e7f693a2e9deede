/**
 * Our MigrationSource (postcopy-ram, a dirtying guest) → our
 * MigrationDestination over in-memory channels: the fault API reads pages
 * from RUN on (served by the source's request path), a cut while postcopy
 * runs pauses both sides, source.resume() + dest.recover() on a new pair of
 * channels brings both back, and the migration completes with the
 * destination's RAM equal to the guest's.
 */
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { memoryChannelPair } from '../../src/transport/channel.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import type { FaultRecord } from '../../src/destination/faults.js';
import { fillRandom, startDirtier, TestGuest } from '../engine/helpers.js';
import { until } from './postcopy-script.js';

const MiB = 1 << 20;
const TP = 4096;
const SIZE = 8 * MiB;

describe('our postcopy source → our postcopy destination', () => {
  it('faults served, cut → both paused, recovered, completed with RAM equal', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: SIZE }]);
    fillRandom(g.blocks[0]!.bytes.subarray(0, SIZE - MiB), 17);
    const stopDirty = startDirtier(g, { pagesPerTick: 4, intervalMs: 1 });
    const src = new MigrationSource(g, {
      capabilities: { postcopyRam: true },
      parameters: { maxBandwidth: 16 * MiB, maxPostcopyBandwidth: 4 * MiB, downtimeLimit: 1 },
    });
    const dst = new MigrationDestination({
      postcopyRam: true,
      postcopyBlocktime: true,
      blocks: [{ idstr: 'ram', usedLength: SIZE, ramAddr: 0, bytes: new Uint8Array(SIZE) }],
    });
    const faults: FaultRecord[] = [];
    dst.on('fault', (f: FaultRecord) => faults.push(f));
    const [a, b] = memoryChannelPair();
    const run = src.migrate(a);
    const load = dst.load(b);
    await new Promise((r) => setTimeout(r, 100));
    src.startPostcopy();
    await once(dst, 'postcopyRun');
    stopDirty();
    expect(g.stopped).toBe(true);
    const pages = SIZE / TP;
    const want = (p: number): Buffer => Buffer.from(g.blocks[0]!.bytes.subarray(p * TP, (p + 1) * TP));
    let bad = 0;
    for (let i = 0; i < 40; i++) {
      const p = (i * 7919 + 3) % pages;
      if (!Buffer.from(await dst.read('ram', p * TP, TP)).equals(want(p))) bad++;
    }
    expect(faults.length).toBeGreaterThan(5);

    // Cut the link: both sides pause.
    a.shutdown({ reset: true });
    await until(() => dst.status === 'postcopy-paused' && src.status === 'postcopy-paused', 5000);
    const missing: number[] = [];
    for (let p = pages - 1; missing.length < 2; p -= 31) if (!dst.isReceived('ram', p * TP)) missing.push(p);
    const waits = missing.map((p) => dst.read('ram', p * TP, TP).then((v) => Buffer.from(v).equals(want(p))));

    const [a2, b2] = memoryChannelPair();
    const recovered = dst.recover(b2);
    await src.resume(a2);
    await recovered;
    expect(dst.status).toBe('postcopy-active');
    expect((await Promise.all(waits)).every(Boolean)).toBe(true);
    for (let i = 0; i < 40; i++) {
      const p = (i * 104729 + 11) % pages;
      if (!Buffer.from(await dst.read('ram', p * TP, TP)).equals(want(p))) bad++;
    }
    expect(await load).toBe('completed');
    expect(await run).toBe('completed');
    expect(bad).toBe(0);
    expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
    const st = dst.faultStats();
    expect(src.queryMigrate().ram?.['postcopy-requests']).toBeGreaterThanOrEqual(st.requests - missing.length);
    console.log(`our source → us: ${st.requests} requests, latency p50 ${st.p50Us} µs p99 ${st.p99Us} µs max ${st.maxUs} µs`);
  }, 30_000);
});
