/**
 * Pure postcopy helpers: received-bit clearing across words, the RECV_BITMAP
 * LE layout and size (SPEC §5.6) checked against wire/'s decoder, the end of
 * the device region of an adopted package, FaultAccounting percentiles.
 */
import { describe, expect, it } from 'vitest';
import { clearBits, packageDeviceEnd, recvBitmapBytes } from '../../src/destination/postcopy.js';
import { FaultAccounting } from '../../src/destination/blocktime.js';
import { ByteCursor } from '../../src/wire/cursor.js';
import { decodeRecvBitmapData, encodeRecvBitmapData, recvBitmapSize } from '../../src/wire/return-path.js';
import { encodeCommand } from '../../src/wire/command.js';
import { ByteWriter } from '../../src/wire/writer.js';

const TP = 4096;

describe('postcopy helpers', () => {
  it('clearBits clears exactly [first, first+count) across word boundaries', () => {
    for (const [first, count] of [[0, 1], [5, 27], [31, 2], [30, 66], [0, 96], [64, 32], [63, 1]] as const) {
      const bits = new Uint32Array(3).fill(0xffffffff);
      clearBits(bits, first, count);
      for (let p = 0; p < 96; p++) {
        const set = (bits[p >>> 5]! >>> (p & 31)) & 1;
        expect(set, `page ${p} after clearing ${first}+${count}`).toBe(p >= first && p < first + count ? 0 : 1);
      }
    }
  });

  it('recvBitmapBytes: LE, page p = byte p/8 bit p%8, size rounded to 64-bit words, padding clear; decodes with wire/', () => {
    const pages = 100; // not a multiple of 32 or 64
    const bits = new Uint32Array(4).fill(0xffffffff); // garbage past page 99 must not leak
    clearBits(bits, 3, 1);
    clearBits(bits, 40, 9);
    const out = recvBitmapBytes(bits, pages * TP);
    expect(out.length).toBe(recvBitmapSize(pages * TP));
    expect(out.length).toBe(16);
    for (let p = 0; p < 128; p++) {
      const set = (out[p >>> 3]! >>> (p & 7)) & 1;
      expect(set, `page ${p}`).toBe(p < pages && p !== 3 && !(p >= 40 && p < 49) ? 1 : 0);
    }
    const w = new ByteWriter();
    encodeRecvBitmapData(w, out);
    expect(decodeRecvBitmapData(new ByteCursor(w.toBytes()), 'ram', recvBitmapSize(pages * TP))).toEqual(out);
  });

  it('packageDeviceEnd: the device region stops before PING + RUN, before RUN alone, or before EOF', () => {
    const dev = new Uint8Array([4, 0, 0, 0, 1, 5, 116, 105, 109, 101, 114, 0x7e, 0, 0, 0, 1]);
    const tail = (f: (w: ByteWriter) => void): Uint8Array => {
      const w = new ByteWriter();
      w.bytes(dev);
      f(w);
      return w.toBytes();
    };
    expect(packageDeviceEnd(tail((w) => (encodeCommand(w, { kind: 'ping', value: 3 }), encodeCommand(w, { kind: 'postcopyRun' }))))).toBe(dev.length);
    expect(packageDeviceEnd(tail((w) => encodeCommand(w, { kind: 'postcopyRun' })))).toBe(dev.length);
    expect(packageDeviceEnd(tail((w) => w.u8(0)))).toBe(dev.length);
  });

  it('FaultAccounting: nearest-rank p50/p99/max, blocked time only while faults are outstanding', () => {
    const a = new FaultAccounting();
    for (let i = 1; i <= 200; i++) a.sample(i * 10);
    a.requests = 200;
    expect(a.stats()).toEqual({ requests: 200, p50Us: 1000, p99Us: 1980, maxUs: 2000, count: 200 });
    a.outstanding(1, 100);
    a.outstanding(2, 110);
    a.outstanding(0, 150);
    a.outstanding(0, 170);
    a.outstanding(1, 200);
    a.outstanding(0, 230);
    expect(a.blocktimeMs(1000)).toBe(80);
    expect(new FaultAccounting().stats()).toEqual({ requests: 0, p50Us: 0, p99Us: 0, maxUs: 0, count: 0 });
  });
});
