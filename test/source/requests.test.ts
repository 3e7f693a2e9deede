/**
 * Page requests on the return path jump the queue (postcopy will rely on
 * it); AbortSignal cancels; received bitmaps as memory/ PageBitmaps.
 */
import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { ByteCursor, decodeSection, decodeStreamStart, RamRecordDecoder } from '../../src/wire/index.js';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination } from '../../src/destination/destination.js';
import { duplexPair, fillRandom, TestGuest } from '../engine/helpers.js';

const MiB = 1 << 20;

/** REQ_PAGES_ID start=off len=4096 "ram". */
function reqPagesId(off: number, name = 'ram'): Uint8Array {
  const b = Buffer.alloc(4 + 13 + name.length);
  b.writeUInt16BE(3, 0);
  b.writeUInt16BE(13 + name.length, 2);
  b.writeBigUInt64BE(BigInt(off), 4);
  b.writeUInt32BE(4096, 12);
  b.writeUInt8(name.length, 16);
  b.write(name, 17, 'latin1');
  return b;
}

describe('urgent pages and cancellation', () => {
  it('serves a REQ_PAGES_ID page before the background scan reaches it', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: 4 * MiB }]);
    fillRandom(g.blocks[0]!.bytes, 12);
    const src = new MigrationSource(g, { capabilities: { returnPath: true }, parameters: { maxBandwidth: 8 * MiB, downtimeLimit: 1 } });
    const dst = new MigrationDestination({ adopt: true });
    const [a, b] = duplexPair();
    const got: Uint8Array[] = [];
    b.on('data', (c: Uint8Array) => got.push(Uint8Array.from(c)));
    let asked = false;
    b.on('data', () => {
      if (!asked) {
        asked = true;
        b.write(reqPagesId(1000 * 4096));
      }
    });
    const [s, d] = await Promise.all([src.migrate(a), dst.load(b)]);
    expect([s, d]).toEqual(['completed', 'completed']);
    expect(src.ramStats()['postcopy-requests']).toBe(1);
    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
    // order of page offsets on the wire: 1000 comes early, the scan stays ascending
    const c = new ByteCursor(Buffer.concat(got));
    decodeStreamStart(c);
    const dec = new RamRecordDecoder();
    const order: number[] = [];
    for (;;) {
      const sec = decodeSection(c);
      if (sec.kind === 'eof') break;
      if (sec.kind === 'command' || sec.kind === 'vmdesc' || sec.kind === 'full') continue;
      for (;;) {
        const r = dec.decode(c);
        if (r.kind === 'eos') break;
        if (r.kind !== 'memSize') order.push(r.offset / 4096);
      }
      c.pos += 5;
    }
    expect(order).toHaveLength(1024);
    const at = order.indexOf(1000);
    expect(at).toBeLessThan(500);
    expect(order.filter((p) => p !== 1000)).toEqual([...Array(1024).keys()].filter((p) => p !== 1000));
  });

  it('a request for an unknown block turns the return path bad: failed at completion', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: 256 * 1024 }]);
    const src = new MigrationSource(g, { capabilities: { returnPath: true }, parameters: { maxBandwidth: 1e12 } });
    const dst = new MigrationDestination({ adopt: true });
    const [a, b] = duplexPair();
    b.once('data', () => b.write(reqPagesId(0, 'nope')));
    const [s] = await Promise.all([src.migrate(a), dst.load(b)]);
    expect(s).toBe('failed');
    expect(src.queryMigrate()['error-desc']).toBe('Unknown block name: nope');
  });

  it('AbortSignal cancels the source; the destination load can be aborted too', async () => {
    const g = new TestGuest([{ idstr: 'ram', size: 4 * MiB }]);
    fillRandom(g.blocks[0]!.bytes, 13);
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 4 * MiB } });
    const hp = Hotpath.create({ initialBytes: MiB });
    const dst = new MigrationDestination({ blocks: [{ ...g.blocks[0]!, bytes: new Uint8Array(4 * MiB) }], hotpath: hp });
    const [a, b] = duplexPair();
    const ac = new AbortController();
    const dc = new AbortController();
    setTimeout(() => ac.abort(), 150);
    setTimeout(() => dc.abort(), 120);
    const [s, d] = await Promise.all([src.migrate(a, { signal: ac.signal }), dst.load(b, { signal: dc.signal })]);
    expect(s).toMatch(/^(cancelled|failed)$/);
    expect(d).toBe('failed');
    // pages received before the abort are recorded in the PageBitmap
    const bm = dst.receivedBitmaps.get('ram')!;
    expect(bm.count()).toBeGreaterThan(0);
    expect(bm.count()).toBeLessThan(1024);
    expect(bm.count()).toBe(dst.pageCounts.normal + dst.pageCounts.zero);
  });
});
