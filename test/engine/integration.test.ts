/**
 * The engines on the team's layers: the WASM hot path (page ops and the
 * XBZRLE cache in its shared memory), control/'s StatusMachine + EventBus,
 * transport/'s in-memory pair and real loopback TCP; and the bytes our
 * source writes decoded independently with the wire/ decoders.
 */
import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { xbzrleDecodeRef } from '../../src/hotpath/reference.js';
import { StatusMachine } from '../../src/control/status.js';
import { EventBus } from '../../src/control/events.js';
import { connect } from '../../src/transport/connect.js';
import { listen } from '../../src/transport/listen.js';
import { ByteCursor, decodeFooter, decodeSection, decodeStreamStart, RamRecordDecoder } from '../../src/wire/index.js';
import { hotpathPageOps } from '../../src/engine/hotpath-ops.js';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination, encodeGlobalState } from '../../src/destination/destination.js';
import { duplexPair, fillRandom, startDirtier, TestGuest } from './helpers.js';

const MiB = 1 << 20;

/** A TestGuest whose RAM lives in the hot path's shared memory. */
function wasmGuest(hp: ReturnType<typeof hotpathPageOps>, sizes: [string, number][]): TestGuest {
  const g = new TestGuest(sizes.map(([idstr, size]) => ({ idstr, size })));
  (g as { blocks: TestGuest['blocks'] }).blocks = g.blocks.map((b) => ({ ...b, bytes: hp.alloc(b.usedLength) }));
  return g;
}

describe('engines on hotpath / control / transport', () => {
  it('XBZRLE precopy with WASM page ops, StatusMachine events', async () => {
    const ops = hotpathPageOps(Hotpath.create({ initialBytes: 16 * MiB }));
    const g = wasmGuest(ops, [['pc.ram', 4 * MiB]]);
    fillRandom(g.blocks[0]!.bytes.subarray(0, 3 * MiB), 5);
    const bus = new EventBus();
    const events: string[] = [];
    bus.subscribe((e) => events.push(`${e.event}:${JSON.stringify(e.data)}`));
    const status = new StatusMachine({ bus, eventsEnabled: () => true });
    const dstOps = hotpathPageOps(Hotpath.create({ initialBytes: 8 * MiB }));
    const dst = new MigrationDestination({
      adopt: true,
      allocBlock: (idstr, usedLength, ramAddr) => ({ idstr, usedLength, ramAddr, bytes: dstOps.alloc(usedLength) }),
      pageOps: dstOps,
    });
    const stop = startDirtier(g, { pagesPerTick: 16, intervalMs: 1, workingSet: 100 });
    const src = new MigrationSource(g, {
      capabilities: { xbzrle: true, events: true },
      parameters: { maxBandwidth: 24 * MiB, downtimeLimit: 2, xbzrleCacheSize: 512 * 1024 },
      pageOps: ops,
      status,
    });
    // transport/'s memoryChannelPair loses its `peer` link to the PeerInfo
    // property (toChannel overwrites it), so the test uses its own pair.
    let passes = 0;
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
    const [a, b] = duplexPair();
    const [s, d] = await Promise.all([src.migrate(a), dst.load(b)]);
    stop();
    expect([s, d]).toEqual(['completed', 'completed']);
    expect(Buffer.compare(dst.blocks[0]!.bytes, g.blocks[0]!.bytes)).toBe(0);
    const x = src.xbzrleStats()!;
    expect(x.pages).toBeGreaterThan(0);
    expect(x['cache-miss']).toBeGreaterThan(0);
    expect(dst.pageCounts.xbzrle).toBeGreaterThan(0);
    expect(dst.pageCounts.xbzrle).toBeLessThanOrEqual(x.pages);
    expect(events).toEqual(['MIGRATION:{"status":"setup"}', 'MIGRATION:{"status":"active"}', 'MIGRATION:{"status":"completed"}']);
  });

  it('over loopback TCP with a return path; the wire/ decoders read our stream identically', async () => {
    const g = new TestGuest([
      { idstr: 'pc.ram', size: 2 * MiB },
      { idstr: 'pc.rom', size: 128 * 1024 },
    ]);
    fillRandom(g.blocks[0]!.bytes.subarray(MiB), 9);
    fillRandom(g.blocks[1]!.bytes.subarray(0, 4096), 10);
    const l = await listen('tcp:127.0.0.1:0');
    const port = (l.socketAddress![0] as { port: string }).port;
    const dst = new MigrationDestination({ blocks: g.blocks.map((b) => ({ ...b, bytes: new Uint8Array(b.usedLength) })) });
    const got: Uint8Array[] = [];
    const incoming = l.accept().then((ch) => {
      ch.on('data', (c: Uint8Array) => got.push(Uint8Array.from(c)));
      return dst.load(ch);
    });
    const src = new MigrationSource(g, { capabilities: { returnPath: true }, parameters: { maxBandwidth: 8 * MiB } });
    const ch = await connect(`tcp:127.0.0.1:${port}`);
    const [s, d] = await Promise.all([
      src.migrate(ch, { devices: [{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState('paused') }] }),
      incoming,
    ]);
    await l.close();
    expect([s, d]).toEqual(['completed', 'completed']);
    expect(src.returnPath!.pongs).toEqual([1]);
    expect(src.returnPath!.shutValue).toBe(0);
    expect(dst.runState).toBe('paused');
    for (let i = 0; i < 2; i++) expect(Buffer.compare(dst.blocks[i]!.bytes, g.blocks[i]!.bytes)).toBe(0);

    // Independent decode of the captured bytes with wire/.
    const bytes = Buffer.concat(got);
    const stats = src.queryMigrate().ram!;
    // ram.transferred counts what QEMU 7.2 counts: page records plus 8 per PART's EOS (recomputed below).
    expect(bytes.length).toBeGreaterThan(stats.transferred);
    let qemuTransferred = 0;
    const c = new ByteCursor(bytes);
    const start = decodeStreamStart(c);
    expect(start.configuration!.machineName).toBe('none');
    const image = g.blocks.map((b) => new Uint8Array(b.usedLength));
    const idx = new Map(g.blocks.map((b, i) => [b.idstr, i]));
    const ramDec = new RamRecordDecoder();
    const names = new Map<number, string>();
    const kinds: string[] = [];
    let zero = 0;
    let normal = 0;
    let vmdesc = '';
    for (let done = false; !done; ) {
      const sec = decodeSection(c);
      kinds.push(sec.kind === 'command' ? `cmd${JSON.stringify(sec.command)}` : sec.kind);
      switch (sec.kind) {
        case 'start':
        case 'part':
        case 'end': {
          if (sec.kind === 'start') names.set(sec.sectionId, sec.idstr);
          for (;;) {
            const at = c.pos;
            const r = ramDec.decode(c);
            if (r.kind === 'eos') {
              if (sec.kind === 'part') qemuTransferred += 8;
              break;
            }
            if (r.kind !== 'memSize') qemuTransferred += c.pos - at;
            if (r.kind === 'memSize') {
              expect(r.blocks).toEqual([
                { idstr: 'pc.ram', usedLength: 2 * MiB },
                { idstr: 'pc.rom', usedLength: 128 * 1024 },
              ]);
              continue;
            }
            const img = image[idx.get(r.block)!]!;
            if (r.kind === 'zero') (img.fill(r.fill, r.offset, r.offset + 4096), zero++);
            else if (r.kind === 'page') (img.set(r.data, r.offset), normal++);
            else throw new Error(`unexpected ${r.kind}`);
          }
          decodeFooter(c, sec.sectionId, names.get(sec.sectionId)!);
          break;
        }
        case 'full':
          expect(sec.idstr).toBe('globalstate');
          c.pos += 104;
          decodeFooter(c, sec.sectionId, sec.idstr);
          break;
        case 'eof':
          vmdesc = (decodeSection(c) as { json: string }).json;
          done = true;
          break;
        default:
          break;
      }
    }
    expect(c.remaining).toBe(0);
    expect(stats.transferred).toBe(qemuTransferred);
    expect(kinds[0]).toMatch(/^cmd.*OPEN_RETURN_PATH|^cmd/);
    expect(kinds.filter((k) => k === 'start')).toHaveLength(1);
    expect(kinds.at(-2)).toBe('full');
    expect(zero).toBe(stats.duplicate);
    expect(normal).toBe(stats.normal);
    for (let i = 0; i < 2; i++) expect(Buffer.compare(image[i]!, g.blocks[i]!.bytes)).toBe(0);
    expect(JSON.parse(vmdesc)).toEqual({
      page_size: 4096,
      devices: [{ name: 'globalstate', instance_id: 0, size: 104, fields: [{ name: 'data', size: 104, type: 'buffer' }] }],
    });
    void xbzrleDecodeRef;
  });
});
