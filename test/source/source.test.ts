/**
 * MigrationSource state machine: cancel, pause-before-switchover, failure,
 * rate limiting, auto-converge, query-migrate shapes, live cache resize.
 */
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import { StatusMachine } from '../../src/control/status.js';
import { duplexPair, fillRandom, startDirtier, TestGuest } from '../engine/helpers.js';

const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function setup(size = 4 * MiB, random = size) {
  const g = new TestGuest([{ idstr: 'ram', size }]);
  fillRandom(g.blocks[0]!.bytes.subarray(0, random), 3);
  const status = new StatusMachine();
  const dst = new MigrationDestination({ adopt: true });
  const [a, b] = duplexPair();
  return { g, status, dst, a, b };
}

describe('MigrationSource', () => {
  it('cancel mid-way: cancelling → cancelled, the destination fails, the guest keeps running', async () => {
    const { g, status, dst, a, b } = setup();
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 8 * MiB }, status });
    const run = src.migrate(a);
    const load = dst.load(b);
    await sleep(150);
    expect(src.status).toBe('active');
    const mid = src.queryMigrate();
    expect(mid.ram!.transferred).toBeGreaterThan(0);
    expect(mid.ram!.remaining).toBeGreaterThan(0);
    expect(mid['expected-downtime']).toBe(300);
    src.cancel();
    expect(await run).toBe('cancelled');
    expect(status.history).toEqual(['setup', 'active', 'cancelling', 'cancelled']);
    expect(src.queryMigrate()).toEqual({ status: 'cancelled' });
    expect(await load).toBe('failed');
    expect(dst.queryMigrate()['error-desc']).toMatch(/stream ended/);
    expect(g.stopped).toBe(false);
  });

  it('pause-before-switchover waits in pre-switchover for migrate-continue, then device → completed', async () => {
    const { g, status, dst, a, b } = setup(1 * MiB);
    const src = new MigrationSource(g, { capabilities: { pauseBeforeSwitchover: true }, parameters: { maxBandwidth: 1e12 }, status });
    const run = src.migrate(a);
    const load = dst.load(b);
    while (src.status !== 'pre-switchover') await sleep(5);
    expect(g.stopped).toBe(true);
    expect(() => src.continue('device')).toThrow('Migration not in expected state: pre-switchover');
    src.continue();
    expect(await run).toBe('completed');
    expect(await load).toBe('completed');
    expect(status.history).toEqual(['setup', 'active', 'pre-switchover', 'device', 'completed']);
    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
    const info = src.queryMigrate();
    expect(Object.keys(info).sort()).toEqual(['downtime', 'ram', 'setup-time', 'status', 'total-time']);
    expect(info.downtime!).toBeGreaterThanOrEqual(0);
  });

  it('cancel in pre-switchover resumes the stopped guest', async () => {
    const { g, status, dst, a, b } = setup(1 * MiB);
    const src = new MigrationSource(g, { capabilities: { pauseBeforeSwitchover: true }, parameters: { maxBandwidth: 1e12 }, status });
    const run = src.migrate(a);
    void dst.load(b);
    while (src.status !== 'pre-switchover') await sleep(5);
    src.cancel();
    expect(await run).toBe('cancelled');
    expect(g.stopped).toBe(false);
    expect(g.resumed).toBe(1);
  });

  it('a broken channel fails the migration with error-desc', async () => {
    const { g, status, a, b } = setup();
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 8 * MiB }, status });
    b.resume();
    const run = src.migrate(a);
    await sleep(120);
    b.destroy();
    a.destroy(new Error('Broken pipe'));
    expect(await run).toBe('failed');
    expect(src.queryMigrate()).toEqual({ status: 'failed', 'error-desc': expect.stringMatching(/Broken pipe|closed/) });
    expect(status.history.at(-1)).toBe('failed');
  });

  it('a destination failure after switchover (SHUT 1) fails the source and resumes the guest', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: 256 * 1024 }]);
    const status = new StatusMachine();
    const src = new MigrationSource(g, { capabilities: { returnPath: true }, parameters: { maxBandwidth: 1e12 }, status });
    const dst = new MigrationDestination({ blocks: [{ ...g.blocks[0]!, bytes: new Uint8Array(256 * 1024) }] });
    const [a, b] = duplexPair();
    const devices = [{ idstr: 'timer', instanceId: 0, versionId: 2, payload: new Uint8Array(24) }];
    const [s, d] = await Promise.all([src.migrate(a, { devices }), dst.load(b)]);
    expect([s, d]).toEqual(['failed', 'failed']);
    expect(src.queryMigrate()).toEqual({ status: 'failed', 'error-desc': 'Destination reported failure (SHUT 1)' });
    expect(status.history).toEqual(['setup', 'active', 'failed']);
    expect(g.stopped).toBe(false);
    expect(g.resumed).toBe(1);
  });

  it('fails when the return path closes without SHUT', async () => {
    const { g, a, b } = setup(256 * 1024);
    const src = new MigrationSource(g, { capabilities: { returnPath: true }, parameters: { maxBandwidth: 1e12 } });
    b.once('data', () => b.end()); // the peer closes its side without a SHUT
    expect(await src.migrate(a)).toBe('failed');
    expect(src.queryMigrate()['error-desc']).toBe('Return path closed before SHUT');
  });

  it('respects max-bandwidth in 100 ms windows', async () => {
    const { g, dst, a, b } = setup(2 * MiB);
    // downtime-limit 10 ms: the last pass may not be sent unthrottled early
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 8 * MiB, downtimeLimit: 10 } });
    const t0 = performance.now();
    await Promise.all([src.migrate(a), dst.load(b)]);
    const ms = performance.now() - t0;
    const bytes = src.ramStats().transferred;
    // ≥ 2 MiB at 8 MiB/s: at least ~2 full windows of sleeping
    expect(bytes).toBeGreaterThan(2 * MiB);
    expect(ms).toBeGreaterThan((bytes / (8 * MiB)) * 1000 - 110);
    const mbps = src.ramStats().mbps;
    expect(mbps).toBeGreaterThan(0);
    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
  });

  it('auto-converge throttles a guest that dirties faster than the link, and the migration converges', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: 1 * MiB }]);
    fillRandom(g.blocks[0]!.bytes, 4);
    const stop = startDirtier(g, { pagesPerTick: 40, intervalMs: 1, workingSet: 128 });
    const dst = new MigrationDestination({ adopt: true });
    const [a, b] = duplexPair();
    const src = new MigrationSource(g, {
      capabilities: { autoConverge: true },
      parameters: { maxBandwidth: 4 * MiB, downtimeLimit: 50, cpuThrottleInitial: 99, cpuThrottleIncrement: 10, maxCpuThrottle: 99 },
    });
    let seen: number | undefined;
    src.on('throttle', (p: number) => {
      if (p > 0) seen ??= src.queryMigrate()['cpu-throttle-percentage'];
    });
    const [s] = await Promise.all([src.migrate(a), dst.load(b)]);
    stop();
    expect(s).toBe('completed');
    expect(g.throttleHistory[0]).toBe(99);
    expect(seen).toBe(99);
    expect(g.throttleHistory.at(-1)).toBe(0); // released at the end
    expect(src.ramStats()['dirty-pages-rate']).toBeGreaterThan(0);

    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
  }, 20_000);

  it('XBZRLE per-period rates (cache-miss-rate, encoding-rate) are computed at syncs ≥ 1 s apart', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: 1 * MiB }]);
    fillRandom(g.blocks[0]!.bytes, 6);
    const stop = startDirtier(g, { pagesPerTick: 60, intervalMs: 1, workingSet: 256 });
    setTimeout(stop, 1300);
    const dst = new MigrationDestination({ adopt: true });
    const [a, b] = duplexPair();
    const src = new MigrationSource(g, {
      capabilities: { xbzrle: true },
      parameters: { maxBandwidth: 2 * MiB, downtimeLimit: 1, xbzrleCacheSize: 2 * MiB },
    });
    const [s] = await Promise.all([src.migrate(a), dst.load(b)]);
    stop();
    expect(s).toBe('completed');
    const x = src.xbzrleStats()!;
    expect(x.pages).toBeGreaterThan(0);
    expect(x['encoding-rate']).toBeGreaterThan(1); // one-byte deltas compress 4 KiB pages a lot
    expect(src.queryMigrate()['xbzrle-cache']).toEqual(x);
    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
  }, 20_000);

  it('query-migrate shapes: none {}, active with ram + xbzrle-cache; a new xbzrle-cache-size replaces the cache', async () => {
    const { g, dst, a, b } = setup(2 * MiB);
    const src = new MigrationSource(g, { capabilities: { xbzrle: true }, parameters: { maxBandwidth: 4 * MiB, xbzrleCacheSize: 1 * MiB } });
    expect(src.queryMigrate()).toEqual({});
    const run = Promise.all([src.migrate(a), dst.load(b)]);
    await sleep(120);
    const info = src.queryMigrate();
    expect(info.status).toBe('active');
    expect(Object.keys(info).sort()).toEqual(['expected-downtime', 'ram', 'setup-time', 'status', 'total-time', 'xbzrle-cache']);
    expect(info['xbzrle-cache']!['cache-size']).toBe(1 * MiB);
    expect(Object.keys(info.ram!).sort()).toEqual(
      [
        'dirty-pages-rate', 'dirty-sync-count', 'dirty-sync-missed-zero-copy', 'downtime-bytes', 'duplicate', 'mbps',
        'multifd-bytes', 'normal', 'normal-bytes', 'page-size', 'pages-per-second', 'postcopy-bytes', 'postcopy-requests',
        'precopy-bytes', 'remaining', 'skipped', 'total', 'transferred',
      ].sort(),
    );
    src.setParameters({ xbzrleCacheSize: 2 * MiB });
    expect(src.queryMigrate()['xbzrle-cache']!['cache-size']).toBe(2 * MiB);
    await run;
    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
  });
});
