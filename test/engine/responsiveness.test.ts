/**
 * The sender never starves the event loop: timers keep firing while an
 * unthrottled migration runs (QMP must stay responsive).
 */
import { expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import { connect } from '../../src/transport/connect.js';
import { listen } from '../../src/transport/listen.js';
import { fillRandom, TestGuest } from './helpers.js';

it('keeps event-loop gaps short during an unthrottled 32 MiB migration over TCP', async () => {
  const g = new TestGuest([{ idstr: 'ram', size: 32 << 20 }]);
  fillRandom(g.blocks[0]!.bytes.subarray(0, 24 << 20), 8);
  const l = await listen('tcp:127.0.0.1:0');
  const port = (l.socketAddress![0] as { port: string }).port;
  const dst = new MigrationDestination({ adopt: true });
  const incoming = l.accept().then((ch) => dst.load(ch));
  const src = new MigrationSource(g, { parameters: { maxBandwidth: 1e15, downtimeLimit: 1 } });
  let last = performance.now();
  let maxGap = 0;
  let ticks = 0;
  const t = setInterval(() => {
    ticks++;
    const n = performance.now();
    maxGap = Math.max(maxGap, n - last);
    last = n;
  }, 1);
  const t0 = performance.now();
  const [s, d] = await Promise.all([src.migrate(await connect(`tcp:127.0.0.1:${port}`)), incoming]);
  const ms = performance.now() - t0;
  clearInterval(t);
  await l.close();
  expect([s, d]).toEqual(['completed', 'completed']);
  expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
  console.log(`32 MiB (24 random) over TCP in ${ms.toFixed(0)} ms, ${((32 / ms) * 1000).toFixed(0)} MiB/s of guest RAM; max event-loop gap ${maxGap.toFixed(1)} ms`);
  // Shared 2-core machine (QEMU interop tests may run alongside): the bounds
  // are loose on purpose; alone, typical gaps are 20-50 ms.
  expect(ticks).toBeGreaterThan(ms / 200);
  expect(maxGap).toBeLessThan(500);
});
