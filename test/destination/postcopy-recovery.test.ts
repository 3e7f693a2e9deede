/**
 * Destination recovery against a scripted source: RECV_BITMAP replies (LE
 * bitmap of received pages + end marker), POSTCOPY_RESUME → RESUME_ACK(1) and
 * the outstanding requests re-sent (first with ID); a break inside the
 * handshake returns to postcopy-paused and a second recover works.
 */
import { describe, expect, it } from 'vitest';
import { encodeCommand } from '../../src/wire/command.js';
import { SectionType } from '../../src/wire/constants.js';
import { encodeSection } from '../../src/wire/stream.js';
import { Hotpath } from '../../src/hotpath/index.js';
import { PAGES, RAM, TP, channel, destination, precopyStart, sourceRam, switchover, until } from './postcopy-script.js';

const mem = sourceRam(21);

/** Pages whose bit is set in an LE RECV_BITMAP bitmap. */
function setPages(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  for (let p = 0; p < bitmap.length * 8; p++) if (bitmap[p >>> 3]! & (1 << (p & 7))) out.push(p);
  return out;
}

async function pausedDestination(hotpath?: Hotpath) {
  const dst = destination({ postcopyBlocktime: true, hotpath });
  const s = channel();
  const done = dst.load(s.b);
  precopyStart(s);
  s.part(mem, [0, 1, 2, 3, 4, 5]);
  switchover(s, [{ start: 4 * TP, length: TP }]);
  s.send();
  await until(() => dst.postcopyState === 'running');
  // one fault answered, one outstanding at the cut
  const f7 = dst.read('ram', 7 * TP, TP);
  expect(await s.nextNonPong()).toEqual({ kind: 'reqPagesId', start: 7 * TP, length: TP, blockName: 'ram' });
  s.part(mem, [7]);
  s.send();
  await f7;
  const f9 = dst.read('ram', 9 * TP, TP);
  expect(await s.nextNonPong()).toEqual({ kind: 'reqPages', start: 9 * TP, length: TP });
  // a partial record in flight, then the cut
  encodeSection(s.w, { kind: 'part', sectionId: 2 });
  s.ram.page(s.w, 'ram', 8 * TP, mem.subarray(8 * TP, 9 * TP));
  const partial = s.w.toBytes().subarray(0, 100);
  s.w.reset();
  s.a.write(partial);
  await new Promise((r) => setTimeout(r, 10));
  s.a.destroy();
  await until(() => dst.status === 'postcopy-paused');
  // a fault while paused: kept, not sent
  const f11 = dst.read('ram', 11 * TP, TP);
  return { dst, done, f9, f11 };
}

describe('destination recovery (scripted source)', () => {
  it('RECV_BITMAP reply = received pages; RESUME → RESUME_ACK(1), re-sent requests (first with ID), completes', async () => {
    const { dst, done, f9, f11 } = await pausedDestination();
    expect(dst.isReceived('ram', 8 * TP)).toBe(false); // the partial page was dropped
    const r = channel();
    const recovered = dst.recover(r.b);
    expect(dst.status).toBe('postcopy-recover');
    encodeCommand(r.w, { kind: 'recvBitmap', blockName: 'ram' });
    r.send();
    expect(await r.next()).toEqual({ kind: 'recvBitmap', blockName: 'ram' });
    const bm = await r.bitmap('ram');
    expect(bm.length).toBe(8); // 16 pages → one 64-bit word
    expect(setPages(bm)).toEqual([0, 1, 2, 3, 5, 7]);
    expect(dst.status).toBe('postcopy-recover');
    encodeCommand(r.w, { kind: 'postcopyResume' });
    r.send();
    expect(await r.next()).toEqual({ kind: 'resumeAck', value: 1 });
    await recovered;
    expect(dst.status).toBe('postcopy-active');
    const again = [await r.next(), await r.next()];
    expect(again).toEqual([
      { kind: 'reqPagesId', start: 9 * TP, length: TP, blockName: 'ram' },
      { kind: 'reqPages', start: 11 * TP, length: TP },
    ]);
    // the source sends what the bitmap said is missing, the first record naming its block
    const missing = Array.from({ length: PAGES }, (_, i) => i).filter((p) => !setPages(bm).includes(p));
    expect(missing.slice(0, 3)).toEqual([4, 6, 8]);
    r.part(mem, [9, 11]);
    r.send();
    expect(Buffer.from(await f9).equals(Buffer.from(mem.subarray(9 * TP, 10 * TP)))).toBe(true);
    expect(Buffer.from(await f11).equals(Buffer.from(mem.subarray(11 * TP, 12 * TP)))).toBe(true);
    r.part(mem, missing.filter((p) => p !== 9 && p !== 11), true);
    r.w.u8(SectionType.EOF);
    r.send();
    expect(await done).toBe('completed');
    expect(await r.nextNonPong()).toEqual({ kind: 'shut', value: 0 });
    expect(Buffer.from(dst.blocks[0]!.bytes).equals(Buffer.from(mem))).toBe(true);
    const q = dst.queryMigrate();
    expect(q.status).toBe('completed');
    expect(q['x-postcopy-fault-latency']!.count).toBe(3);
    expect(dst.faultStats().requests).toBe(4); // 7, 9, then 9 and 11 after the resume
    expect(q['postcopy-blocktime']!).toBeGreaterThanOrEqual(10); // blocked across the pause
  });

  it('a break inside the handshake → postcopy-paused, recover() rejects; a second recover completes', async () => {
    const { dst, done, f9 } = await pausedDestination();
    const r1 = channel();
    const first = dst.recover(r1.b);
    encodeCommand(r1.w, { kind: 'recvBitmap', blockName: 'ram' });
    r1.send();
    expect(await r1.next()).toEqual({ kind: 'recvBitmap', blockName: 'ram' });
    await r1.bitmap('ram');
    r1.a.destroy(); // before POSTCOPY_RESUME
    await expect(first).rejects.toThrow();
    expect(dst.status).toBe('postcopy-paused');

    const r2 = channel();
    const second = dst.recover(r2.b);
    encodeCommand(r2.w, { kind: 'recvBitmap', blockName: 'ram' });
    encodeCommand(r2.w, { kind: 'postcopyResume' });
    r2.send();
    expect(await r2.next()).toEqual({ kind: 'recvBitmap', blockName: 'ram' });
    expect(setPages(await r2.bitmap('ram'))).toEqual([0, 1, 2, 3, 5, 7]);
    expect(await r2.next()).toEqual({ kind: 'resumeAck', value: 1 });
    await second;
    expect((await r2.next()).kind).toBe('reqPagesId');
    r2.part(mem, Array.from({ length: PAGES }, (_, i) => i).filter((p) => ![0, 1, 2, 3, 5, 7].includes(p)), true);
    r2.w.u8(SectionType.EOF);
    r2.send();
    await f9;
    expect(await done).toBe('completed');
    expect(Buffer.from(dst.blocks[0]!.bytes).equals(Buffer.from(mem))).toBe(true);
    expect(dst.recvBitmaps).toEqual(['ram', 'ram']);
    expect(RAM).toBe(PAGES * TP);
  });

  it('hotpath received bitmaps (shared PageBitmap words): RECV_BITMAP equals PageBitmap.toLeBytes()', async () => {
    const hp = Hotpath.create({ initialBytes: 1 << 20 });
    const { dst } = await pausedDestination(hp);
    const pb = dst.receivedBitmaps.get('ram')!;
    expect(dst.received.get('ram')!.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(pb.test(7) && !pb.test(9) && !pb.test(4)).toBe(true);
    const r = channel();
    void dst.recover(r.b);
    encodeCommand(r.w, { kind: 'recvBitmap', blockName: 'ram' });
    r.send();
    await r.next();
    const bm = await r.bitmap('ram');
    expect(setPages(bm)).toEqual([0, 1, 2, 3, 5, 7]);
    expect(Buffer.from(bm).equals(Buffer.from(pb.toLeBytes()))).toBe(true);
  });

  it('a malformed recovery channel (bad command) also returns to postcopy-paused', async () => {
    const { dst } = await pausedDestination();
    const r = channel();
    const rec = dst.recover(r.b);
    r.w.u8(0x42);
    r.send();
    await expect(rec).rejects.toThrow('Unknown savevm section type 66');
    expect(dst.status).toBe('postcopy-paused');
    expect(r.b.destroyed).toBe(true);
  });
});
