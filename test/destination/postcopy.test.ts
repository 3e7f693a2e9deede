/**
 * Destination postcopy against a scripted in-process source (wire encoders):
 * the switchover, discards, the package, page requests (REQ_PAGES_ID then
 * REQ_PAGES, one per page), completion, blocktime and fault latency.
 */
import { describe, expect, it } from 'vitest';
import { SectionType } from '../../src/wire/constants.js';
import { encodeFooter } from '../../src/wire/stream.js';
import type { FaultRecord } from '../../src/destination/faults.js';
import { writeSectionStart } from './stream-helpers.js';
import { PAGES, RAM, TP, channel, destination, packageBlob, precopyStart, sourceRam, switchover, until } from './postcopy-script.js';

describe('destination postcopy (scripted source)', () => {
  it('switchover, discards, faults with one request per page, completion with RAM equal to the source', async () => {
    const mem = sourceRam();
    const dst = destination({ postcopyBlocktime: true });
    const s = channel();
    const events: string[] = [];
    dst.on('postcopyListen', () => events.push(`listen:${dst.status}`));
    dst.on('postcopyRun', () => events.push(`run:${dst.postcopyState}`));
    const placed: { offset: number; latencyUs: number }[] = [];
    dst.on('pagePlaced', (p: { offset: number; latencyUs: number }) => placed.push(p));
    const done = dst.load(s.b);
    expect(dst.postcopyState).toBe('none');

    // Precopy: pages 0..7; pages 2 and 3 are re-dirtied and discarded at the switch.
    precopyStart(s);
    s.part(mem, [0, 1, 2, 3, 4, 5, 6, 7]);
    s.send();
    expect(await s.next()).toEqual({ kind: 'pong', value: 1 });
    // A fault before LISTEN waits without a request.
    const early = dst.ensure('ram', 9 * TP);
    await until(() => dst.isReceived('ram', 7 * TP));
    expect(dst.postcopyState).toBe('advise');
    expect(dst.status).toBe('active');

    const faultIter = dst.faults()[Symbol.asyncIterator]();
    switchover(s, [{ start: 2 * TP, length: 2 * TP }]);
    s.send();
    const msgs = [await s.next(), await s.next(), await s.next(), await s.next()];
    // PONG 2, then the early fault, requested at LISTEN and naming the block, then PONG 3 and 4.
    expect(msgs).toEqual([
      { kind: 'pong', value: 2 },
      { kind: 'reqPagesId', start: 9 * TP, length: TP, blockName: 'ram' },
      { kind: 'pong', value: 3 },
      { kind: 'pong', value: 4 },
    ]);
    expect(events).toEqual(['listen:postcopy-active', 'run:running']);
    expect(dst.runState).toBe('running');
    expect(dst.status).toBe('postcopy-active');
    // Discarded pages read as zero and are no longer received.
    expect(dst.isReceived('ram', 2 * TP, 2 * TP)).toBe(false);
    expect(dst.isReceived('ram', 0, 2 * TP)).toBe(true);
    expect(dst.blocks[0]!.bytes.subarray(2 * TP, 4 * TP).every((b) => b === 0)).toBe(true);

    // Three concurrent faults on page 12 share one request; page 3 then gets its own (no ID).
    const f12 = [dst.ensure('ram', 12 * TP + 100, 8), dst.read('ram', 12 * TP, TP), dst.ensure('ram', 12 * TP)];
    const f3 = dst.read('ram', 3 * TP, TP);
    expect(await s.next()).toEqual({ kind: 'reqPages', start: 12 * TP, length: TP });
    expect(await s.next()).toEqual({ kind: 'reqPages', start: 3 * TP, length: TP });
    expect(dst.outstandingFaults).toBe(3);
    const recs: FaultRecord[] = [];
    for (let i = 0; i < 3; i++) recs.push((await faultIter.next()).value as FaultRecord);
    expect(recs.map((r) => [r.offset / TP, r.withId])).toEqual([[9, true], [12, false], [3, false]]);

    // Serve page 12, then everything else once (the source's order), END, EOF.
    s.part(mem, [12]);
    s.send();
    const [, v12] = await Promise.all([f12[0], f12[1], f12[2]]);
    expect(Buffer.from(v12!).equals(Buffer.from(mem.subarray(12 * TP, 13 * TP)))).toBe(true);
    expect(dst.isReceived('ram', 3 * TP)).toBe(false);
    const rest = [3, 9, 2, 8, 10, 11, 13, 14, 15];
    s.part(mem, rest.slice(0, 4));
    s.part(mem, rest.slice(4), true);
    s.w.u8(SectionType.EOF);
    s.send();
    expect(Buffer.from(await f3).equals(Buffer.from(mem.subarray(3 * TP, 4 * TP)))).toBe(true);
    await early;
    expect(await done).toBe('completed');
    expect(await s.nextNonPong()).toEqual({ kind: 'shut', value: 0 });
    expect(dst.postcopyState).toBe('end');
    expect(Buffer.from(dst.blocks[0]!.bytes).equals(Buffer.from(mem))).toBe(true);
    expect((await faultIter.next()).done).toBe(true);

    const st = dst.faultStats();
    expect(st.requests).toBe(3);
    expect(st.count).toBe(3);
    expect(placed.map((p) => p.offset / TP).sort((x, y) => x - y)).toEqual([3, 9, 12]);
    expect(st.maxUs).toBe(Math.round(Math.max(...placed.map((p) => p.latencyUs))));
    expect(st.p50Us).toBeGreaterThan(0);
    expect(st.p50Us).toBeLessThanOrEqual(st.p99Us);
    const q = dst.queryMigrate();
    expect(q.status).toBe('completed');
    expect(q['x-postcopy-fault-latency']).toEqual({ count: 3, 'p50-us': st.p50Us, 'p99-us': st.p99Us, 'max-us': st.maxUs });
    expect(q['postcopy-vcpu-blocktime']).toEqual([q['postcopy-blocktime']]);
    // blocked from LISTEN (page 9 outstanding) until the last fault resolved: at least the longest latency
    expect(q['postcopy-blocktime']!).toBeGreaterThanOrEqual(Math.floor(st.maxUs / 1000));
    expect(dst.isReceived('ram', 0, RAM)).toBe(true);
    await dst.ensure('ram', 0, RAM);
  });

  it('a precopy-converged migration with ADVISE ends normally (state advise, vmdesc read, no blocktime)', async () => {
    const mem = sourceRam(3);
    const dst = destination({ postcopyBlocktime: true });
    const s = channel();
    const done = dst.load(s.b);
    precopyStart(s);
    s.part(mem, Array.from({ length: PAGES }, (_, i) => i), true);
    s.w.u8(SectionType.EOF);
    s.send();
    s.a.end();
    expect(await done).toBe('completed');
    expect(dst.postcopyState).toBe('advise');
    expect(dst.queryMigrate()).toEqual({ status: 'completed' });
    expect(Buffer.from(dst.blocks[0]!.bytes).equals(Buffer.from(mem))).toBe(true);
  });

  it('adopting destination: unknown device sections inside the package are kept opaque, globalstate parsed', async () => {
    const mem = sourceRam(5);
    const dst = destination({ adopt: true, blocks: [], autostart: false });
    const s = channel();
    const done = dst.load(s.b);
    const timer = new Uint8Array(24).fill(0xab);
    const blob = packageBlob((w) => {
      writeSectionStart(w, SectionType.FULL, 0, 'timer', 0, 2);
      w.bytes(timer);
      encodeFooter(w, 0);
    }, 'paused');
    precopyStart(s);
    s.part(mem, [0]);
    switchover(s, [], blob);
    s.part(mem, Array.from({ length: PAGES - 1 }, (_, i) => i + 1), true);
    s.w.u8(SectionType.EOF);
    s.send();
    expect(await done).toBe('completed');
    expect(dst.devices.map((d) => [d.idstr, d.versionId, Buffer.from(d.payload).equals(Buffer.from(timer))])).toEqual([['timer', 2, true]]);
    expect(dst.globalState).toBe('paused');
    expect(dst.runState).toBe('paused');
    expect(dst.pings.slice().sort()).toEqual([1, 2, 3, 4]);
    expect(Buffer.from(dst.blocks[0]!.bytes).equals(Buffer.from(mem))).toBe(true);
  });
});
