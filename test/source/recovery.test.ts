/**
 * Postcopy pause and recovery of MigrationSource against a scripted
 * destination: a cut while postcopy-active pauses (never fails); failed
 * handshakes (channel cut during RECV_BITMAP, a bad RESUME_ACK, silence
 * past the time limit) go back to postcopy-paused; a later resume()
 * succeeds, serves the re-requested page first and sends only pages the
 * destination lacks; the keepalive pauses a silent link.
 */
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { StatusMachine } from '../../src/control/status.js';
import { memoryChannelPair } from '../../src/transport/channel.js';
import { KEEPALIVE_PING_VALUE } from '../../src/wire/constants.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';
import { ScriptedDestination } from './scripted-destination.js';

const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function setup(extra: ConstructorParameters<typeof MigrationSource>[1] = {}) {
  const g = new TestGuest([{ idstr: 'ram', size: 4 * MiB }]);
  fillRandom(g.blocks[0]!.bytes.subarray(0, 3 * MiB), 9);
  const status = new StatusMachine();
  const src = new MigrationSource(g, {
    status,
    capabilities: { postcopyRam: true },
    parameters: { maxBandwidth: 16 * MiB, maxPostcopyBandwidth: 8 * MiB, downtimeLimit: 1 },
    ...extra,
  });
  const paused: string[] = [];
  src.on('paused', (e: { reason: string }) => paused.push(e.reason));
  return { g, status, src, paused };
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(2);
  }
}

describe('postcopy pause and recovery (scripted destination)', () => {
  it('cut while postcopy-active → paused; three failed handshakes → paused again; the fourth resumes and completes', async () => {
    const { g, status, src, paused } = setup({ recoveryTimeoutMs: 150 });
    const [a, b] = memoryChannelPair();
    let cutAfter = 0;
    const dest = new ScriptedDestination(4 * MiB, {
      onPage: (d, p) => {
        if (p.postcopy && ++cutAfter === 40) {
          b.shutdown();
          return 'stop';
        }
      },
    });
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    expect(await served).toBe('stopped');
    await until(() => src.status === 'postcopy-paused');
    expect(paused).toHaveLength(1);
    expect(g.stopped).toBe(true);
    const missingAtCut = dest.missing().length;
    expect(missingAtCut).toBeGreaterThan(100);

    // 1: the channel breaks in the middle of the RECV_BITMAP exchange
    const [a1, b1] = memoryChannelPair();
    const s1 = dest.serve(b1, true, {
      onRecvBitmap: () => {
        b1.shutdown();
        return 'stop';
      },
    });
    await expect(src.resume(a1)).rejects.toThrow(/recovery/);
    expect(await s1).toBe('stopped');
    expect(src.status).toBe('postcopy-paused');

    // 2: RESUME_ACK with a wrong value
    const [a2, b2] = memoryChannelPair();
    void dest.serve(b2, true, { resumeAck: () => 2 });
    await expect(src.resume(a2)).rejects.toThrow('RESUME_ACK with value 2, expecting 1');
    expect(src.status).toBe('postcopy-paused');

    // 3: no RESUME_ACK at all → the time limit
    const [a3, b3] = memoryChannelPair();
    void dest.serve(b3, true, { resumeAck: () => 'none' });
    await expect(src.resume(a3)).rejects.toThrow('recovery handshake timed out after 150 ms');
    expect(src.status).toBe('postcopy-paused');
    expect(dest.pages.filter((p) => p.channel > 0)).toHaveLength(0);

    // 4: success; the destination re-requests a missing page right after the ACK
    const want = dest.missing().at(-1)!;
    const [a4, b4] = memoryChannelPair();
    const s4 = dest.serve(b4, true, {
      afterResume: (d) => d.send({ kind: 'reqPagesId', start: want * 4096, length: 4096, blockName: 'ram' }),
    });
    const missingBefore = dest.missing();
    await src.resume(a4);
    expect(src.status).toBe('postcopy-active');
    expect(await run).toBe('completed');
    expect(await s4).toBe('eof');
    const last = dest.pages.filter((p) => p.channel === 4);
    expect(last[0]!.page).toBe(want);
    // only what the destination lacked, each page once
    expect(last.map((p) => p.page).sort((x, y) => x - y)).toEqual(missingBefore);
    expect(dest.duplicates).toEqual([]);
    expect(dest.missing()).toEqual([]);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
    expect(status.history).toEqual([
      'setup', 'active', 'postcopy-active', 'postcopy-paused',
      'postcopy-recover', 'postcopy-paused', 'postcopy-recover', 'postcopy-paused', 'postcopy-recover', 'postcopy-paused',
      'postcopy-recover', 'postcopy-active', 'completed',
    ]);
    expect(src.pauseCount).toBe(1);
    expect(src.ramStats()['postcopy-requests']).toBe(1);
    expect(src.ramStats().transferred).toBeGreaterThan(4 * MiB * 0.7);
  });

  it('two blocks: discards per block, REQ_PAGES_ID switching blocks (REQ_PAGES after it), recovery bitmaps per block', async () => {
    // pc.ram is large enough that the background scan is still inside it when the requests come
    const g = new TestGuest([{ idstr: 'pc.ram', size: 8 * MiB }, { idstr: 'vga.vram', size: 512 * 1024 }]);
    fillRandom(g.blocks[0]!.bytes, 3);
    fillRandom(g.blocks[1]!.bytes.subarray(0, 256 * 1024), 4);
    const src = new MigrationSource(g, {
      capabilities: { postcopyRam: true },
      parameters: { maxBandwidth: 16 * MiB, maxPostcopyBandwidth: 8 * MiB, downtimeLimit: 1 },
    });
    const layout = [{ idstr: 'pc.ram', size: 8 * MiB }, { idstr: 'vga.vram', size: 512 * 1024 }];
    const [a, b] = memoryChannelPair(64 * 1024); // little buffered ahead of the destination
    let n = 0;
    const asked: string[] = [];
    const dest = new ScriptedDestination(layout, {
      onPage: (d, p) => {
        if (!p.postcopy) return;
        n++;
        if (n === 5) {
          const v = d.missing('vga.vram');
          const r = d.missing('pc.ram');
          asked.push(`vga.vram@${v.at(-1)}`, `vga.vram@${v.at(-2)}`, `pc.ram@${r.at(-1)}`);
          d.send({ kind: 'reqPagesId', start: v.at(-1)! * 4096, length: 4096, blockName: 'vga.vram' });
          d.send({ kind: 'reqPages', start: v.at(-2)! * 4096, length: 4096 });
          d.send({ kind: 'reqPagesId', start: r.at(-1)! * 4096, length: 4096, blockName: 'pc.ram' });
        }
        if (n === 400) {
          b.shutdown();
          return 'stop';
        }
      },
    });
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    expect(await dest.serve(b)).toBe('stopped');
    await until(() => src.status === 'postcopy-paused');
    const post = dest.pages.filter((p) => p.postcopy).map((p) => `${p.block}@${p.page}`);
    // served right after they were read, in request order
    const i = post.indexOf(asked[0]!);
    expect(i).toBeGreaterThan(4);
    expect(post.indexOf(asked[1]!)).toBeGreaterThan(i);
    expect(post.indexOf(asked[2]!)).toBeGreaterThan(post.indexOf(asked[1]!));
    expect(post.indexOf(asked[2]!) - i).toBeLessThan(8);
    expect(i).toBeLessThan(5 + 200); // what was already on its way (a 256 KiB batch, 64 KiB buffered), not the scan's queue
    const missing = { ram: dest.missing('pc.ram'), vga: dest.missing('vga.vram') };
    expect(missing.ram.length + missing.vga.length).toBeGreaterThan(100);
    const [a2, b2] = memoryChannelPair();
    const s2 = dest.serve(b2, true);
    await src.resume(a2);
    expect(await run).toBe('completed');
    expect(await s2).toBe('eof');
    const after = dest.pages.filter((p) => p.channel === 1);
    expect(after.filter((p) => p.block === 'pc.ram').map((p) => p.page).sort((x, y) => x - y)).toEqual(missing.ram);
    expect(after.filter((p) => p.block === 'vga.vram').map((p) => p.page).sort((x, y) => x - y)).toEqual(missing.vga);
    expect(dest.items.filter((x) => x === 'recvBitmap')).toHaveLength(2);
    expect(dest.duplicates).toEqual([]);
    for (const [k, blk] of [...dest.blocks.values()].entries()) {
      expect(dest.missing(blk.idstr)).toEqual([]);
      expect(Buffer.compare(Buffer.from(blk.ram), Buffer.from(g.blocks[k]!.bytes))).toBe(0);
    }
    expect(src.ramStats()['postcopy-requests']).toBe(3);
  });

  it('migrate-pause: shuts the channel → postcopy-paused (destination sees EOF), resume completes', async () => {
    const { g, src, paused } = setup();
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(4 * MiB);
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    await until(() => src.status === 'postcopy-active' && dest.pages.some((p) => p.postcopy));
    src.pause();
    expect(src.status).toBe('postcopy-paused');
    expect(paused).toEqual(['migrate-pause']);
    expect(await served).toBe('closed');
    expect(() => src.pause()).toThrow('migrate-pause is currently only supported during postcopy-active state');
    const [a2, b2] = memoryChannelPair();
    const s2 = dest.serve(b2, true);
    await src.resume(a2);
    expect(await run).toBe('completed');
    expect(await s2).toBe('eof');
    expect(dest.duplicates).toEqual([]);
    expect(dest.missing()).toEqual([]);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
  });

  it('keepalive: PINGs while postcopy-active; a destination that goes silent is paused within the timeout', async () => {
    const { g, src, paused } = setup({ keepaliveIntervalMs: 20, keepaliveTimeoutMs: 250 });
    src.setParameters({ maxPostcopyBandwidth: 2 * MiB });
    const [a, b] = memoryChannelPair();
    let silentAt = 0;
    let n = 0;
    const dest = new ScriptedDestination(4 * MiB, {
      // answers the first keepalive PINGs, then black-holes: stops reading and answering
      onPage: (d, p) => {
        if (p.postcopy && ++n === 300) {
          silentAt = performance.now();
          return 'stop';
        }
      },
    });
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    expect(await served).toBe('stopped');
    expect(dest.pings.filter((v) => v === KEEPALIVE_PING_VALUE).length).toBeGreaterThan(0);
    await until(() => src.status === 'postcopy-paused', 3000);
    const took = performance.now() - silentAt;
    expect(took).toBeGreaterThanOrEqual(150); // some PONG came shortly before the silence
    expect(took).toBeLessThan(250 + 300);
    expect(paused[0]).toMatch(/return path silent for \d+ ms/);
    const [a2, b2] = memoryChannelPair();
    const s2 = dest.serve(b2, true);
    await src.resume(a2);
    expect(await run).toBe('completed');
    expect(await s2).toBe('eof');
    expect(dest.duplicates).toEqual([]);
    expect(dest.missing()).toEqual([]);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
  });

  it.each([
    ['no previous block', { kind: 'reqPages', start: 4096, length: 4096 }, /no previous block/],
    ['unknown block', { kind: 'reqPagesId', start: 4096, length: 4096, blockName: 'nope' }, /Unknown block name: nope/],
    ['overrun', { kind: 'reqPagesId', start: 4 * MiB, length: 4096, blockName: 'ram' }, /Request out of range/],
  ] as const)('a bad return-path message in postcopy (%s) does not pause: the migration fails at the end', async (_n, msg, desc) => {
    const { src, paused, g } = setup();
    const [a, b] = memoryChannelPair();
    const dest = new ScriptedDestination(4 * MiB, {
      onListen: (d) => d.send(msg),
    });
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    void dest.serve(b);
    expect(await run).toBe('failed');
    expect(paused).toEqual([]);
    expect(src.queryMigrate()['error-desc']).toMatch(desc);
    expect(g.resumed).toBe(0); // the guest belongs to the destination after RUN
  });
});
