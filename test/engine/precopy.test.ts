import { decodeMainStream, ProxySession, type ProxyItem } from '../../src/proxy/decoder.js';
import { qemuRamTransferred } from '../../src/proxy/stats.js';
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination, encodeGlobalState } from '../../src/destination/destination.js';
import { StatusMachine } from '../../src/control/status.js';
import { duplexPair, fillRandom, startDirtier, TestGuest } from './helpers.js';

const MiB = 1 << 20;

function guestWithContent(): TestGuest {
  const g = new TestGuest([
    { idstr: 'pc.ram', size: 4 * MiB },
    { idstr: 'vga.vram', size: 256 * 1024 },
  ]);
  // first half random, then zero pages, a few sparse pages
  fillRandom(g.blocks[0]!.bytes.subarray(0, 2 * MiB), 1);
  for (let p = 600; p < 1024; p += 17) g.blocks[0]!.bytes[p * 4096 + 5] = 9;
  fillRandom(g.blocks[1]!.bytes.subarray(0, 8192), 2);
  return g;
}

function destFor(g: TestGuest, extra: Partial<ConstructorParameters<typeof MigrationDestination>[0]> = {}): MigrationDestination {
  return new MigrationDestination({
    blocks: g.blocks.map((b) => ({ ...b, bytes: new Uint8Array(b.usedLength) })),
    ...extra,
  });
}

describe('precopy source → destination (in-memory pair)', () => {
  it('copies RAM byte for byte and reports consistent statistics', async () => {
    const g = guestWithContent();
    const [a, b] = duplexPair();
    const got: Uint8Array[] = [];
    b.on('data', (c: Uint8Array) => got.push(Uint8Array.from(c)));
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 1e12 } });
    const dst = destFor(g);
    const [s, d] = await Promise.all([
      src.migrate(a, { devices: () => [{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState(g.runState) }] }),
      dst.load(b),
    ]);
    expect(s).toBe('completed');
    expect(d).toBe('completed');
    for (let i = 0; i < g.blocks.length; i++) expect(Buffer.compare(dst.blocks[i]!.bytes, g.blocks[i]!.bytes)).toBe(0);
    const info = src.queryMigrate();
    expect(info.status).toBe('completed');
    const ram = info.ram!;
    // ram.transferred as QEMU 7.2 counts it: page records plus 8 per PART's EOS, recomputed from the
    // wire by the proxy's decoder; headers, device state and vmdesc make the stream itself larger.
    const wire = Buffer.concat(got);
    const items: ProxyItem[] = [];
    await decodeMainStream((async function* () { yield wire; })(), new ProxySession(), (i) => items.push(i));
    expect(items.at(-1)!.kind).toBe('VMDESCRIPTION');
    expect(ram.transferred).toBe(qemuRamTransferred(items));
    expect(wire.length).toBeGreaterThan(ram.transferred);
    expect(ram.total).toBe(4 * MiB + 256 * 1024);
    const counts = dst.pageCounts;
    expect(ram.normal).toBe(counts.normal);
    expect(ram.duplicate).toBe(counts.zero);
    expect(ram['normal-bytes']).toBe(ram.normal * 4096);
    expect(ram.normal + ram.duplicate).toBe((4 * MiB + 256 * 1024) / 4096);
    expect(ram['precopy-bytes'] + ram['downtime-bytes']).toBe(ram.transferred);
    expect(ram.remaining).toBe(0);
    expect(ram['dirty-sync-count']).toBeGreaterThanOrEqual(2);
    expect(dst.runState).toBe('running');
    expect(g.stopped).toBe(true);
  });

  it('keeps up with a guest that dirties pages while precopy runs, with XBZRLE', async () => {
    const g = guestWithContent();
    const stop = startDirtier(g, { pagesPerTick: 16, intervalMs: 1, workingSet: 128 });
    const [a, b] = duplexPair();
    const status = new StatusMachine();
    const src = new MigrationSource(g, {
      capabilities: { xbzrle: true, events: true },
      parameters: { maxBandwidth: 16 * MiB, downtimeLimit: 1, xbzrleCacheSize: 1 * MiB },
      status,
    });
    let passes = 0;
    // keep dirtying for 6 passes (XBZRLE: pass 2 fills the cache, later passes hit it)
    // Besides the timer dirtier, every pass rewrites 32 pages (one byte each), so the
    // migration cannot converge before XBZRLE has had hits, however loaded the machine.
    let dirtying = true;
    src.on('MIGRATION_PASS', () => {
      if (++passes >= 6 && src.xbzrleStats()!.pages > 0) {
        dirtying = false;
        stop();
      }
      if (dirtying && !g.stopped) for (let p = 0; p < 32; p++) g.write(0, p * 4096 + passes, Uint8Array.of(passes | 1));
    });
    const dst = destFor(g);
    const [s, d] = await Promise.all([src.migrate(a), dst.load(b)]);
    stop();
    expect(s).toBe('completed');
    expect(d).toBe('completed');
    for (let i = 0; i < g.blocks.length; i++) expect(Buffer.compare(dst.blocks[i]!.bytes, g.blocks[i]!.bytes)).toBe(0);
    const x = src.xbzrleStats()!;
    expect(x.pages).toBeGreaterThan(0);
    expect(dst.pageCounts.xbzrle).toBeGreaterThan(0);
    expect(x['cache-size']).toBe(1 * MiB);
    expect(passes).toBe(src.ramStats()['dirty-sync-count']);
    expect(passes).toBeGreaterThanOrEqual(6);
    expect(status.history).toEqual(['setup', 'active', 'completed']);
  });
});
