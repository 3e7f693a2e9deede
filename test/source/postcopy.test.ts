/**
 * MigrationSource postcopy against a scripted destination (wire decoders
 * only, test/source/scripted-destination.ts): stream order of the
 * switchover, requested pages first with locality and no page twice after
 * LISTEN, release-ram, pause-before-switchover, QEMU's error texts.
 */
import { describe, expect, it } from 'vitest';
import { MigrationSource, type SwitchoverEvent } from '../../src/source/source.js';
import { StatusMachine } from '../../src/control/status.js';
import { memoryChannelPair } from '../../src/transport/channel.js';
import { fillRandom, startDirtier, TestGuest } from '../engine/helpers.js';
import { ScriptedDestination, type PageLog } from './scripted-destination.js';

const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function guest(size = 4 * MiB, random = size - MiB): TestGuest {
  const g = new TestGuest([{ idstr: 'ram', size }]);
  fillRandom(g.blocks[0]!.bytes.subarray(0, random), 5);
  return g;
}

describe('postcopy source vs a scripted destination', () => {
  it('stream order: ADVISE, precopy, DISCARD, PING 2, PACKAGED{LISTEN, PING 3, RUN}, PING 4, PARTs, END, EOF; each discarded page once', async () => {
    const g = guest();
    const stopDirty = startDirtier(g, { pagesPerTick: 4, intervalMs: 1 });
    const status = new StatusMachine();
    const src = new MigrationSource(g, { status, capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 8 * MiB, downtimeLimit: 1 } });
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(4 * MiB);
    let sw: SwitchoverEvent | undefined;
    let atStop: Uint8Array | undefined;
    src.on('switchover', (e: SwitchoverEvent) => {
      sw = e;
      atStop = Uint8Array.from(g.blocks[0]!.bytes);
    });
    dest.afterPrecopyPages(400, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    expect(await run).toBe('completed');
    stopDirty();
    expect(await served).toBe('eof');
    expect(status.history).toEqual(['setup', 'active', 'postcopy-active', 'completed']);
    const it = dest.items;
    expect(it.slice(0, 4)).toEqual(['openReturnPath', 'ping 1', 'postcopyAdvise', 'start:ram']);
    const d0 = it.indexOf('postcopyRamDiscard');
    const pk = it.indexOf('packaged');
    expect(d0).toBeGreaterThan(4);
    expect(it.slice(d0, pk).every((x) => x === 'postcopyRamDiscard' || x === 'ping 2')).toBe(true);
    expect(it[pk - 1]).toBe('ping 2');
    expect(it.slice(pk, pk + 5)).toEqual(['packaged', 'pkg:postcopyListen', 'pkg:ping 3', 'pkg:postcopyRun', 'ping 4']);
    expect(it.slice(-2)).toEqual(['end:ram', 'eof']);
    expect(it.slice(pk + 5, -2).every((x) => x === 'part:ram')).toBe(true);
    // ≤ 12 ranges per discard command: commands ≥ ranges / 12
    expect(sw!.discards.commands).toBe(Math.ceil(sw!.discards.ranges / 12));
    expect(it.filter((x) => x === 'postcopyRamDiscard')).toHaveLength(sw!.discards.commands);
    // exactly the discarded pages come after LISTEN, each once
    const post = dest.pages.filter((p) => p.postcopy).map((p) => p.page);
    expect(dest.duplicates).toEqual([]);
    expect(new Set(post).size).toBe(post.length);
    expect([...post].sort((x, y) => x - y)).toEqual([...dest.discarded].sort((x, y) => x - y));
    expect(dest.missing()).toEqual([]);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(atStop!))).toBe(0);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
    expect(g.stopped).toBe(true);
    expect(g.resumed).toBe(0);
  });

  it('a REQ_PAGES_ID page jumps the rate-limited background scan, the scan continues after it, a request for a sent page is ignored', async () => {
    const g = guest();
    const src = new MigrationSource(g, {
      capabilities: { postcopyRam: true },
      parameters: { maxBandwidth: 16 * MiB, maxPostcopyBandwidth: 4 * MiB, downtimeLimit: 1 },
    });
    const [a, b] = memoryChannelPair();
    let asked = -1;
    let askedAt = 0;
    let sentPage = -1;
    const dest = new ScriptedDestination(4 * MiB, {
      onPage(d, p) {
        if (!p.postcopy || asked >= 0 || d.pages.filter((x) => x.postcopy).length < 20) return;
        // far ahead of the scan: a missing page whose next 3 are missing too
        const miss = d.missing();
        const set = new Set(miss);
        asked = miss.slice(Math.floor(miss.length * 0.75)).find((x) => set.has(x + 1) && set.has(x + 2) && set.has(x + 3))!;
        sentPage = p.page;
        askedAt = performance.now();
        d.send({ kind: 'reqPagesId', start: asked * 4096, length: 4096, blockName: 'ram' });
        d.send({ kind: 'reqPages', start: sentPage * 4096, length: 4096 });
      },
    });
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    expect(await run).toBe('completed');
    expect(await served).toBe('eof');
    expect(asked).toBeGreaterThan(0);
    const post = dest.pages.filter((p) => p.postcopy);
    const i = post.findIndex((p) => p.page === asked);
    const got = post[i]!;
    // only pages already on the wire when the request was read (at most one 100 ms window's
    // budget, 4 MiB/s / 10 = 102 pages) may come first; the scan's remaining queue does not
    const before = post.filter((p: PageLog) => p.at >= askedAt && p.at < got.at).length;
    expect(before).toBeLessThanOrEqual(102);
    expect(got.at - askedAt).toBeLessThan(50); // 4 MiB/s would need ≫ 50 ms to reach it
    expect(post.slice(i + 1, i + 4).map((p) => p.page)).toEqual([asked + 1, asked + 2, asked + 3]);
    expect(Buffer.compare(Buffer.from(dest.ram.subarray(asked * 4096, asked * 4096 + 4096)), Buffer.from(g.blocks[0]!.bytes.subarray(asked * 4096, asked * 4096 + 4096)))).toBe(0);
    expect(dest.duplicates).toEqual([]);
    expect(post.filter((p) => p.page === sentPage)).toHaveLength(1);
    expect(src.ramStats()['postcopy-requests']).toBe(2);
    expect(src.ignoredRequestPages).toBe(1);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
  });

  it('XBZRLE in precopy, none after LISTEN (the destination decodes postcopy RAM without it)', async () => {
    // A guest whose first 64 pages change a little before every bitmap sync: precopy never converges.
    class HotGuest extends TestGuest {
      n = 0;
      override syncDirty(i: number, bm: Uint32Array): number {
        if (!this.stopped) for (let p = 0; p < 64; p++) this.write(0, p * 4096 + (this.n++ % 4096), Uint8Array.of(this.n & 0xff));
        return super.syncDirty(i, bm);
      }
    }
    const g = new HotGuest([{ idstr: 'ram', size: 8 * MiB }]);
    fillRandom(g.blocks[0]!.bytes, 8);
    const src = new MigrationSource(g, {
      capabilities: { postcopyRam: true, xbzrle: true },
      parameters: { maxBandwidth: 32 * MiB, downtimeLimit: 1, xbzrleCacheSize: 1 * MiB },
    });
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(8 * MiB);
    let xbzrleAtSwitch = 0;
    src.on('switchover', () => (xbzrleAtSwitch = src.xbzrleStats()!.pages));
    // once XBZRLE has encoded pages (the second round), switch
    const poll = setInterval(() => {
      if ((src.xbzrleStats()?.pages ?? 0) > 20) {
        clearInterval(poll);
        src.startPostcopy();
      }
    }, 2);
    const run = src.migrate(a);
    const served = dest.serve(b); // its postcopy RAM decoder rejects XBZRLE records
    expect(await run).toBe('completed');
    clearInterval(poll);
    expect(await served).toBe('eof');
    expect(xbzrleAtSwitch).toBeGreaterThan(20);
    expect(dest.xbzrlePages).toBeGreaterThan(0);
    expect(src.xbzrleStats()!.pages).toBe(xbzrleAtSwitch);
    expect(dest.pages.filter((p) => p.postcopy).length).toBeGreaterThan(0);
    expect(dest.duplicates).toEqual([]);
    expect(dest.missing()).toEqual([]);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
  });

  it('release-ram: every sent page is zeroed on the source once in postcopy; resume is refused', async () => {
    const g = guest(2 * MiB, 2 * MiB);
    const orig = Uint8Array.from(g.blocks[0]!.bytes);
    const src = new MigrationSource(g, {
      capabilities: { postcopyRam: true, releaseRam: true },
      parameters: { maxBandwidth: 8 * MiB, maxPostcopyBandwidth: 16 * MiB, downtimeLimit: 1 },
    });
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(2 * MiB);
    let releasedAtSwitch = -1;
    src.on('switchover', () => (releasedAtSwitch = src.releasedPages));
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    expect(await run).toBe('completed');
    await served;
    expect(releasedAtSwitch).toBeGreaterThan(0);
    expect(src.releasedPages).toBe(512);
    expect(g.blocks[0]!.bytes.every((x) => x === 0)).toBe(true);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(orig))).toBe(0);
    await expect(src.resume(memoryChannelPair()[0])).rejects.toThrow('Cannot resume if there is no paused migration');
  });

  it('pause-before-switchover: active → pre-switchover (guest stopped) → migrate-continue → postcopy-active', async () => {
    const g = guest(2 * MiB);
    const status = new StatusMachine();
    const src = new MigrationSource(g, {
      status,
      capabilities: { postcopyRam: true, pauseBeforeSwitchover: true },
      parameters: { maxBandwidth: 4 * MiB, downtimeLimit: 1 },
    });
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(2 * MiB);
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    while (src.status !== 'pre-switchover') await sleep(5);
    expect(g.stopped).toBe(true);
    expect(dest.listening).toBe(false);
    src.continue('pre-switchover');
    expect(await run).toBe('completed');
    expect(await served).toBe('eof');
    expect(status.history).toEqual(['setup', 'active', 'pre-switchover', 'postcopy-active', 'completed']);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
  });

  it("QEMU's error texts for startPostcopy / pause / resume in the wrong state", async () => {
    const off = new MigrationSource(guest(1 * MiB));
    expect(() => off.startPostcopy()).toThrow('Enable postcopy with migrate_set_capability before the start of migration');
    const src = new MigrationSource(guest(4 * MiB, 4 * MiB), { capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 1 * MiB } });
    expect(() => src.startPostcopy()).toThrow('Postcopy must be started after migration has been started');
    expect(() => src.pause()).toThrow('migrate-pause is currently only supported during postcopy-active state');
    await expect(src.resume(memoryChannelPair()[0])).rejects.toThrow('Cannot resume if there is no paused migration');
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(4 * MiB);
    const run = src.migrate(a);
    void dest.serve(b);
    await sleep(30);
    expect(src.status).toBe('active');
    expect(() => src.pause()).toThrow('migrate-pause is currently only supported during postcopy-active state');
    await expect(src.resume(memoryChannelPair()[0])).rejects.toThrow('Cannot resume if there is no paused migration');
    src.cancel();
    expect(await run).toBe('cancelled');
    expect(() => src.startPostcopy()).not.toThrow(); // harmless once ended
    expect(src.status).toBe('cancelled');
  });
});
