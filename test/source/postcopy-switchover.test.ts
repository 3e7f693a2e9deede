/**
 * Switchover pieces: discard ranges are the maximal runs of dirty pages
 * (checked against a naive scan), ≤ 12 per POSTCOPY_RAM_DISCARD, decodable
 * by the wire decoder; a block with nothing dirty gets no command; the
 * "nothing dirty at all" fallback; the package layout.
 */
import { describe, expect, it } from 'vitest';
import { ByteCursor, ByteWriter, decodeCommand, decodeSection } from '../../src/wire/index.js';
import { RamSaver } from '../../src/source/ram-saver.js';
import { dirtyRuns, encodePackage, sendDiscards } from '../../src/source/switchover.js';
import { installNotReceived } from '../../src/source/recovery.js';
import { jsPageOps } from '../../src/engine/page-ops-js.js';

function naiveRuns(bits: Uint32Array, n: number): { start: number; length: number }[] {
  const out: { start: number; length: number }[] = [];
  for (let p = 0; p < n; ) {
    if (!(bits[p >>> 5]! & (1 << (p & 31)))) {
      p++;
      continue;
    }
    let e = p;
    while (e < n && bits[e >>> 5]! & (1 << (e & 31))) e++;
    out.push({ start: p * 4096, length: (e - p) * 4096 });
    p = e;
  }
  return out;
}

function saver(sizes: number[]): RamSaver {
  const blocks = sizes.map((s, i) => ({ idstr: `b${i}`, usedLength: s, ramAddr: 0, bytes: new Uint8Array(s) }));
  return new RamSaver(blocks, jsPageOps, false, 1 << 20);
}

describe('postcopy switchover pieces', () => {
  it('dirtyRuns = maximal runs (random bitmaps, word-sized runs, a partial last word)', () => {
    let x = 12345;
    for (let t = 0; t < 200; t++) {
      const n = 1 + (t * 37) % 700;
      const bits = new Uint32Array((n + 31) >>> 5);
      for (let p = 0; p < n; p++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        const dense = t % 3 === 0;
        if ((x >>> 16) % 100 < (dense ? 90 : 30)) bits[p >>> 5]! |= 1 << (p & 31);
      }
      expect(dirtyRuns(bits, n)).toEqual(naiveRuns(bits, n));
    }
    const full = new Uint32Array(4).fill(0xffffffff);
    expect(dirtyRuns(full, 100)).toEqual([{ start: 0, length: 100 * 4096 }]);
  });

  it('sendDiscards: ≤ 12 ranges per command, per block, none for a clean block; forced page when nothing is dirty', () => {
    const s = saver([256 * 4096, 64 * 4096, 32 * 4096]);
    for (let p = 0; p < 256; p += 2) s.bitmaps[0]![p >>> 5]! |= 1 << (p & 31); // 128 runs
    s.bitmaps[2]![0] = 0b1110;
    s.recount();
    const w = new ByteWriter();
    const sum = sendDiscards(w, s);
    expect(sum).toEqual({ commands: 11 + 1, ranges: 129, pages: 131, forced: false });
    const c = new ByteCursor(w.toBytes());
    const cmds = [];
    while (c.remaining > 0) cmds.push(decodeCommand(c));
    expect(cmds).toHaveLength(12);
    for (const cmd of cmds) {
      if (cmd.kind !== 'postcopyRamDiscard') throw new Error(cmd.kind);
      expect(cmd.ranges.length).toBeLessThanOrEqual(12);
    }
    expect(cmds.at(-1)).toEqual({ kind: 'postcopyRamDiscard', blockName: 'b2', ranges: [{ start: 4096, length: 3 * 4096 }] });

    const clean = saver([8 * 4096]);
    const w2 = new ByteWriter();
    expect(sendDiscards(w2, clean)).toEqual({ commands: 1, ranges: 1, pages: 1, forced: true });
    expect(clean.dirtyPages).toBe(1); // page 0 will be sent again after LISTEN
    expect(decodeCommand(new ByteCursor(w2.toBytes()))).toEqual({ kind: 'postcopyRamDiscard', blockName: 'b0', ranges: [{ start: 0, length: 4096 }] });
  });

  it('package: LISTEN, FULL devices numbered after ram, PING 3, RUN; no EOF', () => {
    const blob = encodePackage([{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: new Uint8Array(3) }]);
    const c = new ByteCursor(blob);
    expect(decodeSection(c)).toEqual({ kind: 'command', command: { kind: 'postcopyListen' } });
    expect(decodeSection(c)).toMatchObject({ kind: 'full', sectionId: 3, idstr: 'globalstate', instanceId: 0, versionId: 1 });
    c.pos += 3 + 5; // payload, footer
    expect(decodeSection(c)).toEqual({ kind: 'command', command: { kind: 'ping', value: 3 } });
    expect(decodeSection(c)).toEqual({ kind: 'command', command: { kind: 'postcopyRun' } });
    expect(c.remaining).toBe(0);
  });

  it('installNotReceived: LE 64-bit words, complement, padding bits clear', () => {
    const n = 70; // 3 words of ours, S = 16 bytes
    const received = new Uint8Array(16);
    received[0] = 0b00000101; // pages 0, 2
    received[4] = 0x80; // page 39
    received[8] = 0xff; // pages 64..71 (66..71 beyond n)
    const dirty = new Uint32Array(3);
    expect(installNotReceived(received, dirty, n)).toBe(70 - 2 - 1 - 6);
    expect(dirty[0]).toBe(0xfffffffa);
    expect(dirty[1]).toBe(0xffffff7f);
    expect(dirty[2]).toBe(0);
  });
});
