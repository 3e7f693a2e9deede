import { describe, expect, it } from 'vitest';
import { type Command, decodeCommand, encodeCommand, encodeDiscards } from '../../src/wire/command.js';
import { ByteCursor } from '../../src/wire/cursor.js';
import { cur, enc, hex, protoErr } from './helpers.js';

const all: Command[] = [
  { kind: 'openReturnPath' },
  { kind: 'ping', value: 0xdeadbeef },
  { kind: 'postcopyAdvise', ram: { pageSizeSummary: 0x1000 | 0x200000, targetPageSize: 0x1000 } },
  { kind: 'postcopyAdvise', ram: null },
  { kind: 'postcopyListen' },
  { kind: 'postcopyRun' },
  { kind: 'postcopyRamDiscard', blockName: 'pc.ram', ranges: [{ start: 0x100000, length: 0x6300000 }] },
  { kind: 'packaged', length: 0xffffffff },
  { kind: 'enableColo' },
  { kind: 'postcopyResume' },
  { kind: 'recvBitmap', blockName: '/rom@etc/acpi/tables' },
];

describe('commands', () => {
  it('round trip every command', () => {
    for (const cmd of all) {
      const c = cur(enc((w) => encodeCommand(w, cmd)));
      expect(decodeCommand(c)).toEqual(cmd);
      expect(c.remaining).toBe(0);
    }
  });

  it('golden bytes', () => {
    expect(enc((w) => encodeCommand(w, { kind: 'openReturnPath' }))).toEqual(hex('08 0001 0000'));
    expect(enc((w) => encodeCommand(w, { kind: 'ping', value: 1 }))).toEqual(hex('08 0002 0004 00000001'));
    expect(enc((w) => encodeCommand(w, all[2]!))).toEqual(hex('08 0003 0010 0000000000201000 0000000000001000'));
    expect(enc((w) => encodeCommand(w, { kind: 'packaged', length: 15452 }))).toEqual(hex('08 0007 0004 00003c5c'));
    expect(enc((w) => encodeCommand(w, { kind: 'recvBitmap', blockName: 'pc.ram' }))).toEqual(hex('08 000a 0007 06 "pc.ram"'));
    // [captured] ver=0 block='pc.ram' [0x100000+0x6300000]
    expect(enc((w) => encodeCommand(w, all[6]!))).toEqual(
      hex('08 0006 0019 00 06 "pc.ram" 00 0000000000100000 0000000006300000'),
    );
  });

  it('rejects MIG_CMD 0 and >= 11 with QEMU text, at the command id', () => {
    for (const id of [0, 11, 0xffff]) {
      const e = protoErr(() => decodeCommand(new ByteCursor(hex(`08 ${id.toString(16).padStart(4, '0')} 0002 0000`), 0, 50)));
      expect(e.message).toContain(`MIG_CMD 0x${id.toString(16)} unknown (len 0x2)`);
      expect(e.offset).toBe(51);
    }
  });

  it('enforces fixed lengths (OPEN_RETURN_PATH len 3 killed QEMU)', () => {
    const cases: [string, string][] = [
      ['08 0001 0003 000000', 'OPEN_RETURN_PATH received with bad length - expecting 0, got 3'],
      ['08 0002 0003 000000', 'PING received with bad length - expecting 4, got 3'],
      ['08 0004 0001 00', 'POSTCOPY_LISTEN received with bad length - expecting 0, got 1'],
      ['08 0005 0001 00', 'POSTCOPY_RUN received with bad length - expecting 0, got 1'],
      ['08 0007 0008 0000000000000000', 'PACKAGED received with bad length - expecting 4, got 8'],
      ['08 0008 0001 00', 'ENABLE_COLO received with bad length - expecting 0, got 1'],
      ['08 0009 0004 00000000', 'POSTCOPY_RESUME received with bad length - expecting 0, got 4'],
    ];
    for (const [bytes, msg] of cases) {
      const e = protoErr(() => decodeCommand(cur(hex(bytes), 1000)));
      expect(e.message).toContain(msg);
      expect(e.offset).toBe(1003);
    }
    const e = protoErr(() => decodeCommand(cur(hex('08 0003 0008 0000000000001000'))));
    expect(e.message).toContain('CMD_POSTCOPY_ADVISE invalid length (8)');
    expect(e.offset).toBe(3);
  });

  it('validates discard payloads', () => {
    const body = (s: string): Uint8Array => {
      const p = hex(s);
      return Uint8Array.from([0x08, 0, 6, p.length >> 8, p.length & 0xff, ...p]);
    };
    const R = '0000000000001000 0000000000001000';
    const cases: [string, string, number][] = [
      [`00 01 "a" 00 00000000 00000000 00000000 0000`, 'CMD_POSTCOPY_RAM_DISCARD invalid length (18)', 3],
      [`01 01 "a" 00 ${R}`, 'CMD_POSTCOPY_RAM_DISCARD invalid version (1)', 5],
      [`00 00 00 ${R} 00`, 'CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID', 6],
      [`00 ff "a" 00 ${R}`, 'CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID', 6],
      [`00 01 "a" 07 ${R}`, 'CMD_POSTCOPY_RAM_DISCARD missing nil (7)', 8],
      [`00 01 "a" 00 ${R} 00`, 'CMD_POSTCOPY_RAM_DISCARD invalid length (17)', 9],
    ];
    for (const [s, msg, off] of cases) {
      const e = protoErr(() => decodeCommand(cur(body(s))));
      expect(e.message).toContain(msg);
      expect(e.offset).toBe(off);
    }
    // Minimum valid: name of 1 byte and one range (len 20).
    const ok = decodeCommand(cur(body(`00 01 "a" 00 ${R}`)));
    expect(ok).toEqual({ kind: 'postcopyRamDiscard', blockName: 'a', ranges: [{ start: 4096, length: 4096 }] });
  });

  it('encodeDiscards splits into commands of at most 12 ranges', () => {
    const ranges = Array.from({ length: 30 }, (_, i) => ({ start: i * 0x2000, length: 0x1000 }));
    let n = 0;
    const b = enc((w) => {
      n = encodeDiscards(w, 'pc.ram', ranges);
    });
    expect(n).toBe(3);
    const c = cur(b);
    const got: Command[] = [];
    while (c.remaining > 0) got.push(decodeCommand(c));
    expect(got.map((g) => (g.kind === 'postcopyRamDiscard' ? g.ranges.length : -1))).toEqual([12, 12, 6]);
    expect(got.flatMap((g) => (g.kind === 'postcopyRamDiscard' ? g.ranges : []))).toEqual(ranges);
    // 12 ranges + 255-byte name = 450-byte payload, the maximum.
    const big = enc((w) => encodeDiscards(w, 'x'.repeat(255), ranges.slice(0, 12)));
    expect(big.length).toBe(5 + 450);
    expect(() => enc((w) => encodeCommand(w, { kind: 'postcopyRamDiscard', blockName: 'a', ranges: [] }))).toThrow(RangeError);
  });

  it('validates RECV_BITMAP length and name', () => {
    let e = protoErr(() => decodeCommand(cur(hex('08 000a 0004 06 "pc."'))));
    expect(e.message).toContain('invalid payload length (4)');
    expect(e.offset).toBe(3);
    e = protoErr(() => decodeCommand(cur(hex('08 000a 0000'))));
    expect(e.message).toContain('invalid payload length (0)');
    e = protoErr(() => decodeCommand(cur(hex('08 000a 0001 00'))));
    expect(e.message).toContain('RAM block name is empty');
    expect(e.offset).toBe(5);
  });

  it('PACKAGED length above UINT32_MAX is refused by the encoder', () => {
    expect(() => enc((w) => encodeCommand(w, { kind: 'packaged', length: 2 ** 32 }))).toThrow('Unreasonably large packaged state');
  });
});
