import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChannelReader } from '../../src/engine/bytes.js';
import { TruncatedError } from '../../src/errors.js';
import { StreamWriter } from '../../src/wire/writer.js';

describe('ChannelReader (accessors over wire StreamReader)', () => {
  it('round-trips big-endian values, cstr8 and large byte runs across chunk boundaries', async () => {
    const pt = new PassThrough();
    const w = new StreamWriter(pt, { batchSize: 64 });
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
    w.bytes(big);
    expect(w.transferred).toBe(1 + 2 + 4 + 8 + 8 + 7 + 1000 + 3 + 1000);
    await w.flush();
    await r.need(23, 'test');
    expect([r.u8(), r.be16(), r.be32(), r.be64()]).toEqual([0xab, 0xbeef, 0xdeadbeef, 2 ** 40 + 5]);
    expect(r.be32()).toBe(0x01234567);
    expect(r.be32()).toBe(0x89abcdef);
    expect(await r.cstr8()).toBe('pc.ram');
    await r.need(1003);
    expect(Buffer.compare(r.take(1000), big)).toBe(0);
    expect([...r.take(3)]).toEqual([7, 8, 9]);
    const dst = new Uint8Array(1002);
    await r.readInto(dst.subarray(1, 1001));
    expect(Buffer.compare(dst.subarray(1, 1001), big)).toBe(0);
    expect([dst[0], dst[1001]]).toEqual([0, 0]);
    expect(r.offset).toBe(w.transferred);
  });

  it('reports a short stream as TruncatedError with what and offset; more() is false at the end', async () => {
    const pt = new PassThrough();
    const r = new ChannelReader(pt);
    pt.end(Uint8Array.of(1, 2, 3));
    await r.need(1);
    expect(r.u8()).toBe(1);
    const e = await r.need(8, 'ram record').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TruncatedError);
    expect((e as TruncatedError).message).toMatch(/^ram record: stream ended, 6 more byte\(s\) needed/);
    expect([...r.drainBuffered()]).toEqual([2, 3]);
    expect(await r.more()).toBe(false);
  });

  it('more() waits for the next chunk', async () => {
    const pt = new PassThrough();
    const r = new ChannelReader(pt);
    setTimeout(() => pt.write(Uint8Array.of(9)), 10);
    expect(await r.more()).toBe(true);
    expect(r.available).toBe(1);
    expect(r.u8()).toBe(9);
  });
});
