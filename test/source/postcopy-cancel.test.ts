/**
 * migrate_cancel after the switchover: the guest already runs on the
 * destination, so the source ends `cancelled` without resuming it (QEMU 7.2:
 * postcopy-active → cancelling → cancelled, source run state postmigrate),
 * and the destination, which lost its source, pauses instead of failing.
 * From postcopy-paused QEMU 7.2 stays in `cancelling` forever; we finish it.
 */
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import { memoryChannelPair } from '../../src/transport/channel.js';
import type { MigrationStatus } from '../../src/engine/status.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';
import { until } from '../destination/postcopy-script.js';

const MiB = 1 << 20;
const SIZE = 8 * MiB;
const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

async function inPostcopy(): Promise<{ g: TestGuest; src: MigrationSource; dst: MigrationDestination; run: Promise<MigrationStatus>; cut: () => void }> {
  const g = new TestGuest([{ idstr: 'ram', size: SIZE }]);
  fillRandom(g.blocks[0]!.bytes, 5);
  const src = new MigrationSource(g, {
    capabilities: { postcopyRam: true },
    parameters: { maxBandwidth: 4 * MiB, maxPostcopyBandwidth: 1 * MiB, downtimeLimit: 1 },
  });
  const dst = new MigrationDestination({ postcopyRam: true, blocks: [{ idstr: 'ram', usedLength: SIZE, ramAddr: 0, bytes: new Uint8Array(SIZE) }] });
  const [a, b] = memoryChannelPair();
  const run = src.migrate(a);
  void dst.load(b);
  cleanups.push(() => {
    a.destroy();
    b.destroy();
  });
  await until(() => src.status === 'active', 5000);
  src.startPostcopy();
  await once(dst, 'postcopyRun');
  await until(() => src.status === 'postcopy-active', 5000);
  return { g, src, dst, run, cut: () => a.shutdown({ reset: true }) };
}

describe('migrate_cancel in postcopy (source)', () => {
  it('postcopy-active → cancelling → cancelled; the guest stays stopped here; the destination pauses', async () => {
    const { g, src, dst, run } = await inPostcopy();
    const resumedBefore = g.resumed;
    src.cancel();
    expect(src.status).toBe('cancelling');
    expect(await run).toBe('cancelled');
    expect(g.stopped).toBe(true);
    expect(g.resumed).toBe(resumedBefore);
    await until(() => dst.status === 'postcopy-paused', 5000);
    // nothing more to cancel, and no way back
    src.cancel();
    expect(src.status).toBe('cancelled');
    await expect(src.resume(memoryChannelPair()[0])).rejects.toThrow('Cannot resume if there is no paused migration');
  }, 20_000);

  it('postcopy-paused → cancelled (QEMU 7.2 would stay in cancelling): the parked migration ends', async () => {
    const { g, src, run, cut } = await inPostcopy();
    cut();
    await until(() => src.status === 'postcopy-paused', 5000);
    src.cancel();
    expect(await run).toBe('cancelled');
    expect(g.stopped).toBe(true);
    expect(src.queryMigrate().status).toBe('cancelled');
  }, 20_000);
});
