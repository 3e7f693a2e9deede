/** The source engine driving memory/'s GuestMemory + DirtyLog and the WASM hot path. */
import { expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { hotpathPageOps } from '../../src/engine/hotpath-ops.js';
import { sourceGuestFromMemory } from '../../src/engine/memory-guest.js';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import { duplexPair, fillRandom } from './helpers.js';

const MiB = 1 << 20;

it('migrates a GuestMemory whose pages are dirtied through the DirtyLog, XBZRLE via WASM', async () => {
  const hp = Hotpath.create({ initialBytes: 32 * MiB });
  const mem = GuestMemory.create(hp, [
    { idstr: 'pc.ram', usedLength: 4 * MiB },
    { idstr: 'pc.rom', usedLength: 64 * 1024 },
  ]);
  const ram = mem.blocks[0]!.bytes();
  fillRandom(ram.subarray(0, MiB), 21);
  fillRandom(mem.blocks[1]!.bytes(), 22);
  let stopped = false;
  let x = 1;
  const timer = setInterval(() => {
    if (stopped) return;
    for (let k = 0; k < 16; k++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const page = x % 96;
      ram[page * 4096 + ((x >>> 8) & 4095)] = (x >>> 20) | 1;
      mem.dirtyLog.markDirty(mem.blocks[0]!, page);
    }
  }, 1);
  const guest = sourceGuestFromMemory(mem, { stop: () => void (stopped = true), resume: () => void (stopped = false) });
  const ops = hotpathPageOps(hp);
  const src = new MigrationSource(guest, {
    capabilities: { xbzrle: true, events: true },
    parameters: { maxBandwidth: 8 * MiB, downtimeLimit: 1, xbzrleCacheSize: MiB },
    pageOps: ops,
  });
  let passes = 0;
  // Besides the timer, every pass rewrites 32 pages, so the migration cannot
  // converge before XBZRLE has had hits, however loaded the machine.
  let dirtying = true;
  src.on('MIGRATION_PASS', () => {
    if (++passes >= 6 && src.xbzrleStats()!.pages > 0) {
      dirtying = false;
      clearInterval(timer);
    }
    if (dirtying && !stopped) {
      for (let p = 0; p < 32; p++) {
        ram[p * 4096 + passes] = passes | 1;
        mem.dirtyLog.markDirty(mem.blocks[0]!, p);
      }
    }
  });
  const dst = new MigrationDestination({ adopt: true });
  const [a, b] = duplexPair();
  const [s, d] = await Promise.all([src.migrate(a), dst.load(b)]);
  clearInterval(timer);
  expect([s, d]).toEqual(['completed', 'completed']);
  expect(stopped).toBe(true);
  expect(Buffer.compare(dst.blocks[0]!.bytes, ram)).toBe(0);
  expect(Buffer.compare(dst.blocks[1]!.bytes, mem.blocks[1]!.bytes())).toBe(0);
  expect(src.xbzrleStats()!.pages).toBeGreaterThan(0);
  expect(dst.pageCounts.xbzrle).toBeGreaterThan(0);
  expect(src.ramStats()['dirty-sync-count']).toBeGreaterThanOrEqual(6);
});
