import { describe, expect, it } from 'vitest';
import { TruncatedError } from '../../src/errors.js';
import {
  type RpMessage,
  decodeRecvBitmapData,
  decodeRpMessage,
  encodeRecvBitmapData,
  encodeRpMessage,
  recvBitmapSize,
  validatePageRequest,
} from '../../src/wire/return-path.js';
import { cur, enc, hex, protoErr } from './helpers.js';

describe('return-path messages', () => {
  const all: RpMessage[] = [
    { kind: 'shut', value: 0 },
    { kind: 'shut', value: 1 },
    { kind: 'pong', value: 3 },
    { kind: 'reqPagesId', start: 0x5178000, length: 0x1000, blockName: 'pc.ram' },
    { kind: 'reqPages', start: 2 ** 40, length: 0x200000 },
    { kind: 'recvBitmap', blockName: '/rom@etc/acpi/tables' },
    { kind: 'resumeAck', value: 1 },
  ];
  it('round trip', () => {
    for (const m of all) {
      const c = cur(enc((w) => encodeRpMessage(w, m)));
      expect(decodeRpMessage(c)).toEqual(m);
      expect(c.remaining).toBe(0);
    }
  });
  it('golden bytes', () => {
    expect(enc((w) => encodeRpMessage(w, all[0]!))).toEqual(hex('0001 0004 00000000'));
    expect(enc((w) => encodeRpMessage(w, all[3]!))).toEqual(hex('0003 0013 0000000005178000 00001000 06 "pc.ram"'));
    expect(enc((w) => encodeRpMessage(w, { kind: 'reqPages', start: 0x1000, length: 0x1000 }))).toEqual(
      hex('0004 000c 0000000000001000 00001000'),
    );
    expect(enc((w) => encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'pc.ram' }))).toEqual(hex('0005 0007 06 "pc.ram"'));
    expect(enc((w) => encodeRpMessage(w, all[6]!))).toEqual(hex('0006 0004 00000001'));
  });
  it('rejects type 0, >= 7 and len > 512 with QEMU texts', () => {
    for (const [b, msg] of [
      ['0000 0000', 'RP: Received invalid message 0x0000 length 0x0000'],
      ['0007 0004 00000000', 'RP: Received invalid message 0x0007 length 0x0004'],
    ] as const) {
      const e = protoErr(() => decodeRpMessage(cur(hex(b), 20)));
      expect(e.message).toContain(msg);
      expect(e.offset).toBe(20);
    }
    // len > 512 (the source's buffer): QEMU reports it as an incorrect length.
    const e = protoErr(() => decodeRpMessage(cur(hex('0003 0201'), 20)));
    expect(e.message).toContain(
      "RP: Received 'REQ_PAGES_ID' message (0x0003) withincorrect length 513 expecting 18446744073709551615",
    );
    expect(e.offset).toBe(22);
    // 512 itself is allowed (REQ_PAGES_ID can then fail its own rule).
    expect(protoErr(() => decodeRpMessage(cur(Uint8Array.from([0, 3, 2, 0, ...new Uint8Array(512)])))).message).toContain(
      'Req_Page_id with length 512 expecting 13',
    );
  });
  it('enforces fixed lengths and the REQ_PAGES_ID length rule', () => {
    let e = protoErr(() => decodeRpMessage(cur(hex('0004 000d 0000000000001000 00001000 00'))));
    expect(e.message).toContain("RP: Received 'REQ_PAGES' message (0x0004) withincorrect length 13 expecting 12");
    expect(e.offset).toBe(2);
    e = protoErr(() => decodeRpMessage(cur(hex('0006 0000'))));
    expect(e.message).toContain("'RESUME_ACK' message (0x0006) withincorrect length 0 expecting 4");
    e = protoErr(() => decodeRpMessage(cur(hex('0003 0013 0000000005178000 00001000 05 "pc.ram"'))));
    expect(e.message).toContain('RP: Req_Page_id with length 19 expecting 18');
    e = protoErr(() => decodeRpMessage(cur(hex('0003 000c 0000000005178000 00001000'))));
    expect(e.message).toContain('RP: Req_Page_id with length 12 expecting 13');
  });
  it('RECV_BITMAP: len >= 1, name taken from payload[0]', () => {
    let e = protoErr(() => decodeRpMessage(cur(hex('0005 0000'), 9)));
    expect(e.message).toContain('RECV_BITMAP with empty payload');
    expect(e.offset).toBe(11);
    // Like QEMU: a name shorter than len is accepted (not cross-checked).
    expect(decodeRpMessage(cur(hex('0005 0004 02 "ab" 00')))).toEqual({ kind: 'recvBitmap', blockName: 'ab' });
    e = protoErr(() => decodeRpMessage(cur(hex('0005 0002 05 61'))));
    expect(e.message).toContain('name length 5 exceeds payload length 2');
  });
  it('a short payload is a TruncatedError', () => {
    expect(() => decodeRpMessage(cur(hex('0002 0004 0000')))).toThrow(TruncatedError);
  });
});

describe('validatePageRequest', () => {
  const blocks = new Map([['pc.ram', 0x9600000]]);
  const ctx = (lastBlock?: string) => ({ lastBlock, usedLength: (n: string) => blocks.get(n) });
  it('accepts aligned in-range requests and resolves the last block', () => {
    expect(validatePageRequest({ start: 0x5178000, length: 0x1000, blockName: 'pc.ram' }, ctx())).toEqual({
      ok: true,
      block: 'pc.ram',
      usedLength: 0x9600000,
    });
    expect(validatePageRequest({ start: 0x95ff000, length: 0x1000 }, ctx('pc.ram'))).toMatchObject({ ok: true, block: 'pc.ram' });
  });
  it('gives QEMU error texts', () => {
    const err = (r: ReturnType<typeof validatePageRequest>) => (r.ok ? '' : r.error);
    expect(err(validatePageRequest({ start: 0x800, length: 0x1000, blockName: 'pc.ram' }, ctx()))).toContain(
      'Misaligned page request, start: 800 len: 4096',
    );
    expect(err(validatePageRequest({ start: 0, length: 0x800, blockName: 'pc.ram' }, ctx()))).toContain('Misaligned page request');
    expect(err(validatePageRequest({ start: 0, length: 0x1000 }, ctx()))).toBe('ram_save_queue_pages no previous block');
    expect(err(validatePageRequest({ start: 0, length: 0x1000, blockName: 'nope' }, ctx('pc.ram')))).toBe(
      "ram_save_queue_pages no block 'nope'",
    );
    expect(err(validatePageRequest({ start: 0x9600000, length: 0x1000 }, ctx('pc.ram')))).toBe(
      'ram_save_queue_pages request overrun start=9600000 len=1000 blocklen=9600000',
    );
    expect(err(validatePageRequest({ start: 0x95ff000, length: 0x2000 }, ctx('pc.ram')))).toContain('request overrun');
  });
});

describe('RECV_BITMAP data', () => {
  it('golden: 32-page block -> S=8, ff ff ff ff 00 00 00 00 [captured]', () => {
    expect(recvBitmapSize(0x20000)).toBe(8);
    expect(recvBitmapSize(0x9600000)).toBe(4800);
    expect(recvBitmapSize(0x1000)).toBe(8);
    expect(recvBitmapSize(65 * 0x1000)).toBe(16);
    const bm = hex('ff ff ff ff 00 00 00 00');
    const b = enc((w) => encodeRecvBitmapData(w, bm));
    expect(b).toEqual(hex('0000000000000008 ffffffff00000000 0123456789abcdef'));
    expect(decodeRecvBitmapData(cur(b), '/rom@etc/acpi/tables', 8)).toEqual(bm);
  });
  it('size mismatch and bad end mark', () => {
    const b = enc((w) => encodeRecvBitmapData(w, new Uint8Array(16)));
    let e = protoErr(() => decodeRecvBitmapData(cur(b, 100), 'pc.ram', 8));
    expect(e.message).toContain("ramblock 'pc.ram' bitmap size mismatch (0x10 != 0x8)");
    expect(e.offset).toBe(100);
    b[b.length - 1] = 0xee;
    e = protoErr(() => decodeRecvBitmapData(cur(b, 100), 'pc.ram', 16));
    expect(e.message).toContain("ramblock 'pc.ram' end mark incorrect: 0x123456789abcdee");
    expect(e.offset).toBe(124);
  });
  it('a huge advertised S fails on the size check before any allocation', () => {
    const e = protoErr(() => decodeRecvBitmapData(cur(hex('ffffffffffffffff')), 'x', 8));
    expect(e.message).toContain('bitmap size mismatch (0xffffffffffffffff != 0x8)');
  });
});
