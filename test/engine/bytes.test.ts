import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChannelReader, ChannelWriter } from '../../src/engine/bytes.js';
import { TruncatedError } from '../../src/errors.js';

describe('ChannelWriter / ChannelReader', () => {
  it('round-trips big-endian values, cstr8 and large byte runs across chunk boundaries', async () => {
    const pt = new PassThrough();
    const w = new ChannelWriter(pt, 64);
    const r = new ChannelReader(pt);
    const big = new Uint8Array(1000).map((_, i) => i & 0xff);
    w.u8(0xab);
    w.be16(0xbeef);
    w.be32(0xdeadbeef);
    w.be64(2 ** 40 + 5);
    w.be64(0x0123456789abcdefn);
    w.cstr8('pc.ram');
    w.bytes(big);
    w.reserve(3).set([7, 8, 9]);
    expect(w.bytesWritten).toBe(1 + 2 + 4 + 8 + 8 + 7 + 1000 + 3);
    await w.drain();
    await r.need(23, 'test');
    expect([r.u8(), r.be16(), r.be32(), r.be64()]).toEqual([0xab, 0xbeef, 0xdeadbeef, 2 ** 40 + 5]);
    expect(r.be32()).toBe(0x01234567);
    expect(r.be32()).toBe(0x89abcdef);
    expect(await r.cstr8()).toBe('pc.ram');
    await r.need(1003);
    expect(Buffer.compare(r.take(1000), big)).toBe(0);
    expect([...r.take(3)]).toEqual([7, 8, 9]);
    expect(r.offset).toBe(w.bytesWritten);
  });

  it('reports a short stream as TruncatedError with what and offset', async () => {
    const pt = new PassThrough();
    const r = new ChannelReader(pt);
    pt.end(Uint8Array.of(1, 2, 3));
    await r.need(1);
    r.u8();
    const e = await r.need(8, 'ram record').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TruncatedError);
    expect((e as TruncatedError).message).toBe('ram record: stream ended, 6 more byte(s) needed (at offset 1)');
  });

  it('drain() waits for back-pressure and fails once the stream is destroyed', async () => {
    let release: (() => void) | undefined;
    const slow = new Writable({
      highWaterMark: 16,
      write(_c, _e, cb) {
        release = cb;
      },
    });
    const w = new ChannelWriter(slow, 32);
    w.bytes(new Uint8Array(32));
    let drained = false;
    const p = w.drain().then(() => (drained = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(drained).toBe(false);
    release!();
    await p;
    expect(drained).toBe(true);
    slow.destroy(new Error('Broken pipe'));
    await new Promise((r) => setImmediate(r));
    expect(() => w.check()).toThrow('Broken pipe');
  });
});
