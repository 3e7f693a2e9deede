import { describe, expect, it } from 'vitest';
import { type RamRecord, RamRecordDecoder, RamRecordEncoder, checkRamOffset, encodeRamRecord } from '../../src/wire/ram.js';
import { cur, enc, hex, protoErr } from './helpers.js';

function decodeAll(b: Uint8Array, dec = new RamRecordDecoder()): RamRecord[] {
  const c = cur(b);
  const out: RamRecord[] = [];
  while (c.remaining > 0) out.push(dec.decode(c));
  return out;
}

describe('RAM setup', () => {
  it('golden: -M none -m 64M setup [captured]', () => {
    const golden = hex('0000000004000004 03 "ram" 0000000004000000 0000000000000010');
    const e = new RamRecordEncoder();
    const b = enc((w) => {
      e.memSize(w, [{ idstr: 'ram', usedLength: 0x4000000 }]);
      e.eos(w);
    });
    expect(b).toEqual(golden);
    expect(decodeAll(golden)).toEqual([
      { kind: 'memSize', total: 0x4000000, blocks: [{ idstr: 'ram', usedLength: 0x4000000 }] },
      { kind: 'eos' },
    ]);
  });

  it('optional page size and GPA follow the decode options', () => {
    const blocks = [
      { idstr: 'pc.ram', usedLength: 0x8000000, pageSize: 0x200000, gpa: 0 },
      { idstr: 'pc.bios', usedLength: 0x40000, gpa: 0xfffc0000 },
    ];
    const b = enc((w) => new RamRecordEncoder().memSize(w, blocks));
    const dec = new RamRecordDecoder({ setup: { hasPageSize: (id) => id === 'pc.ram', hasGpa: true } });
    expect(decodeAll(b, dec)).toEqual([{ kind: 'memSize', total: 0x8040000, blocks }]);
    // Wrong options desynchronise: the decoder reads pageSize as the next idstr.
    expect(() => decodeAll(b, new RamRecordDecoder())).toThrow();
  });

  it('rejects a block longer than the remaining total', () => {
    const e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0000000000001004 01 "a" 0000000000002000'), 30)));
    expect(e.message).toContain("block 'a' used_length 0x2000 exceeds the remaining total 0x1000");
    expect(e.offset).toBe(38);
  });
});

describe('page records', () => {
  it('golden XBZRLE+CONTINUE record [captured]', () => {
    const golden = hex('00 00 00 00 00 10 00 60 | 01 | 00 03 | 00 01 81');
    const dec = new RamRecordDecoder();
    dec.lastBlock = 'pc.ram';
    const r = dec.decode(cur(golden));
    expect(r).toEqual({ kind: 'xbzrle', block: 'pc.ram', offset: 0x100000, continued: true, data: hex('00 01 81') });
    const e = new RamRecordEncoder();
    const b = enc((w) => {
      e.zero(w, 'pc.ram', 0);
      e.xbzrle(w, 'pc.ram', 0x100000, hex('00 01 81'));
    });
    expect(b.subarray(b.length - golden.length)).toEqual(golden);
  });

  it('golden ZERO records of -M none: first with idstr, then CONTINUE', () => {
    const e = new RamRecordEncoder();
    const b = enc((w) => {
      e.zero(w, 'ram', 0);
      e.zero(w, 'ram', 0x1000);
    });
    expect(b).toEqual(hex('0000000000000002 03 "ram" 00  0000000000001022 00'));
  });

  it('round trips all kinds; CONTINUE persists until reset', () => {
    const page = Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff);
    const recs: RamRecord[] = [
      { kind: 'zero', block: 'a', offset: 0, continued: false, fill: 0xab },
      { kind: 'page', block: 'a', offset: 0x1000, continued: true, data: page },
      { kind: 'xbzrle', block: 'b', offset: 0x2000, continued: false, data: hex('05 00 03 010203') },
      { kind: 'compressed', block: 'b', offset: 2 ** 40, continued: true, data: new Uint8Array(4110).fill(7) },
      { kind: 'eos' },
      { kind: 'page', block: 'b', offset: 0, continued: true, data: page },
    ];
    const e = new RamRecordEncoder();
    const b = enc((w) => recs.forEach((r) => encodeRamRecord(w, e, r)));
    expect(decodeAll(b)).toEqual(recs);
    e.reset();
    const again = enc((w) => e.zero(w, 'b', 0));
    expect(again).toEqual(hex('0000000000000002 01 "b" 00'));
  });

  it('PAGE data is a view into the input (no copy)', () => {
    const b = enc((w) => new RamRecordEncoder().page(w, 'a', 0, new Uint8Array(4096).fill(1)));
    const r = new RamRecordDecoder().decode(cur(b));
    expect(r.kind).toBe('page');
    if (r.kind !== 'page') return;
    expect(r.data.buffer).toBe(b.buffer);
    expect(r.data.byteOffset).toBe(10);
  });

  it('rejects every flag combination that is not exactly one page type', () => {
    const okPre = new Set([0x02, 0x04, 0x08, 0x10, 0x40, 0x100]);
    const okPost = new Set([0x02, 0x08, 0x10, 0x100]);
    for (const postcopy of [false, true]) {
      for (let f = 0; f < 0x1000; f++) {
        const type = f & ~0x20;
        const ok = (postcopy ? okPost : okPre).has(type);
        const w = hex(f.toString(16).padStart(16, '0'));
        if (ok) continue;
        const e = protoErr(() => new RamRecordDecoder({ postcopy }).decode(cur(w, 8)));
        expect(e.message).toContain(
          `Unknown combination of migration flags: 0x${f.toString(16)}${postcopy ? ' (postcopy mode)' : ''}`,
        );
        expect(e.offset).toBe(8);
      }
    }
  });

  it('QEMU-tested flag 0x0a fails; CONTINUE without a block fails with "Ack, bad migration stream!"', () => {
    expect(protoErr(() => new RamRecordDecoder().decode(cur(hex('000000000000000a')))).message).toContain(
      'Unknown combination of migration flags: 0xa',
    );
    const e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0000000000001022 00'), 64)));
    expect(e.message).toContain('Ack, bad migration stream!');
    expect(e.offset).toBe(64);
  });

  it('XBZRLE and compressed length checks', () => {
    let e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0000000000000040 01 "a" 02 0001 00'))));
    expect(e.message).toContain('Failed to load XBZRLE page - wrong compression!');
    expect(e.offset).toBe(10);
    e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0000000000000040 01 "a" 01 1001'))));
    expect(e.message).toContain('Failed to load XBZRLE page - len overflow!');
    expect(e.offset).toBe(11);
    const max = enc((w) => new RamRecordEncoder().xbzrle(w, 'a', 0, new Uint8Array(4096)));
    expect(new RamRecordDecoder().decode(cur(max)).kind).toBe('xbzrle');
    e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0000000000000100 01 "a" 0000100f'))));
    expect(e.message).toContain('Invalid compressed data length: 4111');
    expect(e.offset).toBe(10);
    e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0000000000000100 01 "a" ffffffff'))));
    expect(e.message).toContain('Invalid compressed data length: -1');
  });

  it('offsets above 2^53 are refused; checkRamOffset gives QEMU text', () => {
    const e = protoErr(() => new RamRecordDecoder().decode(cur(hex('0020000000000008'))));
    expect(e.message).toContain('Illegal RAM offset');
    expect(checkRamOffset(0x3fff000, 0x4000000)).toBeNull();
    expect(checkRamOffset(0x4000000, 0x4000000)).toBe('Illegal RAM offset 4000000');
  });

  it('encoder refuses misaligned offsets and wrong sizes', () => {
    const e = new RamRecordEncoder();
    expect(() => enc((w) => e.zero(w, 'a', 0x800))).toThrow(RangeError);
    expect(() => enc((w) => e.page(w, 'a', 0, new Uint8Array(100)))).toThrow(RangeError);
    expect(() => enc((w) => e.xbzrle(w, 'a', 0, new Uint8Array(4097)))).toThrow(RangeError);
  });
});
