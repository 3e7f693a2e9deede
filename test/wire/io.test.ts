import { createServer, connect, type Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ProtocolError, TruncatedError } from '../../src/errors.js';
import { ByteCursor } from '../../src/wire/cursor.js';
import { StreamReader } from '../../src/wire/reader.js';
import { ByteWriter, StreamWriter } from '../../src/wire/writer.js';

async function* chunksOf(data: Uint8Array, sizes: () => number): AsyncGenerator<Uint8Array> {
  let o = 0;
  while (o < data.length) {
    const n = Math.max(1, sizes());
    yield data.slice(o, o + n);
    o += n;
  }
}

describe('ByteCursor', () => {
  it('reads big-endian values and counted strings', () => {
    const c = new ByteCursor(Uint8Array.from([1, 0x02, 0x03, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 0x61, 0x62]), 0, 100);
    expect(c.u8()).toBe(1);
    expect(c.be16()).toBe(0x0203);
    expect(c.be32()).toBe(0x100);
    expect(c.offset).toBe(107);
    expect(c.be64()).toBe(1n);
    expect(c.cstr8()).toBe('');
    expect(() => c.cstr8()).toThrow(TruncatedError); // length 3, only 2 bytes left
    expect(c.remaining).toBe(3);
  });
  it('cstr8 does not consume on truncation and reports wanted', () => {
    const c = new ByteCursor(Uint8Array.from([5, 0x61, 0x62]), 0, 10);
    try {
      c.cstr8('idstr');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(TruncatedError);
      expect((e as TruncatedError).offset).toBe(10);
      expect((e as TruncatedError).what).toBe('idstr');
    }
    expect(c.pos).toBe(0);
    expect(c.wanted).toBe(6);
  });
  it('be64n accepts 2^53-1 and rejects larger with a ProtocolError at the field offset', () => {
    const ok = new ByteCursor(Uint8Array.from([0, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    expect(ok.be64n()).toBe(Number.MAX_SAFE_INTEGER);
    const bad = new ByteCursor(Uint8Array.from([9, 0, 0x20, 0, 0, 0, 0, 0, 0, 0]), 1, 50);
    const err = (() => {
      try {
        bad.be64n('addr');
      } catch (e) {
        return e as ProtocolError;
      }
    })();
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err!.offset).toBe(51);
    expect(err!.message).toContain('0x20000000000000 too large');
  });
  it('bytes() returns a view, not a copy', () => {
    const buf = Uint8Array.from([1, 2, 3, 4]);
    const v = new ByteCursor(buf, 1).bytes(2);
    buf[1] = 99;
    expect(Array.from(v)).toEqual([99, 3]);
  });
});

describe('ByteWriter', () => {
  it('writes values and grows; round trips through ByteCursor', () => {
    const w = new ByteWriter(16);
    for (let i = 0; i < 100; i++) {
      w.u8(i);
      w.be16(i * 257);
      w.be32(0xdead0000 + i);
      w.be64(i * 0x1_0000_0001);
      w.be64(0xffff_ffff_ffff_fff0n + BigInt(i % 16));
      w.cstr8('blk' + i);
    }
    const c = new ByteCursor(w.toBytes());
    for (let i = 0; i < 100; i++) {
      expect(c.u8()).toBe(i);
      expect(c.be16()).toBe(i * 257);
      expect(c.be32()).toBe(0xdead0000 + i);
      expect(c.be64n()).toBe(i * 0x1_0000_0001);
      expect(c.be64()).toBe(0xffff_ffff_ffff_fff0n + BigInt(i % 16));
      expect(c.cstr8()).toBe('blk' + i);
    }
    expect(c.remaining).toBe(0);
  });
  it('fixed buffers refuse to grow; long strings and bad be64 are refused', () => {
    const w = new ByteWriter(new Uint8Array(4), { fixed: true });
    w.be32(1);
    expect(() => w.u8(1)).toThrow(RangeError);
    expect(() => new ByteWriter().cstr8('x'.repeat(256))).toThrow(RangeError);
    expect(() => new ByteWriter().be64(-1)).toThrow(RangeError);
    expect(() => new ByteWriter().be64(2 ** 64 + 0.5)).toThrow(RangeError);
  });
});

/** A Writable that records each write and applies backpressure via highWaterMark. */
function recorder(hwm = 1 << 20): { out: Writable; writes: Uint8Array[] } {
  const writes: Uint8Array[] = [];
  const out = new Writable({
    highWaterMark: hwm,
    write(chunk: Buffer, _enc, cb) {
      writes.push(new Uint8Array(chunk));
      setImmediate(cb);
    },
  });
  return { out, writes };
}

describe('StreamWriter', () => {
  it('batches 1000 page records into few writes with identical bytes', async () => {
    const { out, writes } = recorder();
    const sw = new StreamWriter(out, { batchSize: 128 * 1024 });
    const ref = new ByteWriter(1 << 20);
    const page = new Uint8Array(4096);
    for (let i = 0; i < 1000; i++) {
      page.fill(i & 0xff);
      for (const w of [sw, ref]) {
        w.be64(i * 4096 + 8);
        w.bytes(page);
      }
      const p = sw.drain();
      if (p) await p;
    }
    await sw.end();
    const total = writes.reduce((a, b) => a + b.length, 0);
    expect(total).toBe(1000 * 4104);
    expect(sw.transferred).toBe(1000 * 4104);
    expect(sw.writeCalls).toBe(writes.length);
    expect(writes.length).toBeLessThanOrEqual(Math.ceil((1000 * 4104) / (128 * 1024)) + 1);
    expect(Buffer.concat(writes).equals(Buffer.from(ref.view()))).toBe(true);
  });
  it('check() passes on an open stream and throws "Channel closed" once it is destroyed', () => {
    const { out } = recorder();
    const sw = new StreamWriter(out);
    expect(() => sw.check()).not.toThrow();
    sw.u8(1);
    out.destroy();
    expect(() => sw.check()).toThrow(/Channel closed/);
  });
  it('waits for drain under backpressure and still delivers every byte', async () => {
    const { out, writes } = recorder(1024);
    const sw = new StreamWriter(out, { batchSize: 4096 });
    let waited = 0;
    for (let i = 0; i < 200; i++) {
      sw.bytes(new Uint8Array(3000).fill(i));
      const p = sw.drain();
      if (p) {
        waited++;
        await p;
      }
    }
    await sw.flush();
    await sw.end();
    expect(waited).toBeGreaterThan(0);
    const all = Buffer.concat(writes);
    expect(all.length).toBe(600000);
    expect(all[2999]).toBe(0);
    expect(all[3000]).toBe(1);
    expect(all[599999]).toBe(199);
  });
  it('rejects drain() when the stream fails', async () => {
    const out = new Writable({
      highWaterMark: 1,
      write(_c, _e, cb) {
        setImmediate(() => cb(new Error('boom')));
      },
    });
    const sw = new StreamWriter(out, { batchSize: 16 });
    sw.bytes(new Uint8Array(64));
    await expect(sw.flush()).rejects.toThrow('boom');
    expect(() => sw.u8(1)).toThrow('boom');
  });
});

describe('StreamReader', () => {
  const data = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) & 0xff);

  it('readIntoSync copies buffered bytes across chunks and refuses when too few are buffered', async () => {
    const r = new StreamReader(chunksOf(data, () => 7));
    await r.need(30);
    const have = r.buffered;
    const big = new Uint8Array(have + 1);
    expect(() => r.readIntoSync(big, 'page')).toThrow(TruncatedError);
    expect(r.offset).toBe(0);
    const dst = new Uint8Array(30);
    r.readIntoSync(dst.subarray(2, 25));
    expect(Array.from(dst.subarray(2, 25))).toEqual(Array.from(data.subarray(0, 23)));
    expect([dst[0], dst[1], dst[25]]).toEqual([0, 0, 0]);
    expect(r.offset).toBe(23);
    expect(r.buffered).toBe(have - 23);
  });

  it('tracks offsets and reads exact spans across chunks', async () => {
    const r = new StreamReader(chunksOf(data, () => 7), { base: 1000 });
    expect(r.need(3)).toBeInstanceOf(Promise);
    await r.need(3);
    expect(r.need(3)).toBeUndefined();
    const a = await r.read(20);
    expect(Array.from(a)).toEqual(Array.from(data.subarray(0, 20)));
    expect(r.offset).toBe(1020);
    const dst = new Uint8Array(100);
    await r.readInto(dst);
    expect(Array.from(dst)).toEqual(Array.from(data.subarray(20, 120)));
    await r.skip(80);
    const parts: number[] = [];
    for await (const v of r.take(300)) parts.push(...v);
    expect(parts).toEqual(Array.from(data.subarray(200, 500)));
    expect(r.offset).toBe(1500);
    await r.skip(4500);
    expect(await r.atEnd()).toBe(true);
    await expect(r.read(1)).rejects.toMatchObject({ offset: 6000, code: 'TRUNCATED' });
  });

  it('decode() retries a decoder until the item is complete, one byte at a time', async () => {
    const w = new ByteWriter();
    for (let i = 0; i < 50; i++) {
      w.cstr8('item' + i);
      w.be32(i);
    }
    const bytes = w.toBytes();
    for (const sizes of [() => 1, () => 1 + Math.floor(Math.random() * 13)]) {
      const r = new StreamReader(chunksOf(bytes, sizes));
      const got: [string, number][] = [];
      while (!(await r.atEnd())) got.push(await r.decode((c) => [c.cstr8(), c.be32()] as [string, number]));
      expect(got.length).toBe(50);
      expect(got[49]).toEqual(['item49', 49]);
    }
  });

  it('decode() at end of stream mid-item gives the decoder TruncatedError with offset', async () => {
    const r = new StreamReader(chunksOf(Uint8Array.from([0, 0, 0, 1, 2, 0x61]), () => 2), { base: 10 });
    expect(await r.decode((c) => c.be32())).toBe(1);
    await expect(r.decode((c) => c.cstr8('name'))).rejects.toMatchObject({ what: 'name', offset: 14 });
  });

  it('tryDecode is synchronous and consumes nothing when short', async () => {
    const pt = new PassThrough();
    const r = new StreamReader(pt);
    pt.write(Uint8Array.from([0, 0]));
    await r.need(1);
    expect(r.tryDecode((c) => c.be32())).toBeUndefined();
    expect(r.offset).toBe(0);
    pt.end(Uint8Array.from([0, 5]));
    expect(await r.decode((c) => c.be32())).toBe(5);
    expect(r.offset).toBe(4);
  });
});

describe('StreamReader with a PACKAGED-sized length', () => {
  it('read(0xffffffff) on a short stream fails with TruncatedError without allocating 4 GiB', async () => {
    const r = new StreamReader(chunksOf(new Uint8Array(1000), () => 100), { base: 9 });
    await expect(r.read(0xffffffff, 'packaged blob')).rejects.toMatchObject({
      code: 'TRUNCATED',
      what: 'packaged blob',
      offset: 1009,
    });
  });

  it('subReader parses a blob with continuing offsets; discardRest skips the tail', async () => {
    const blob = Uint8Array.from([0, 0, 0, 7, 0xaa, 0xbb, 0xcc]);
    const outer = Uint8Array.from([1, 2, ...blob, 0x55]);
    const r = new StreamReader(chunksOf(outer, () => 3), { base: 100 });
    await r.skip(2);
    const sub = r.subReader(blob.length);
    expect(sub.offset).toBe(102);
    expect(await sub.decode((c) => c.be32())).toBe(7);
    expect(sub.offset).toBe(106);
    await sub.discardRest();
    expect(r.offset).toBe(109);
    expect(Array.from(await r.read(1))).toEqual([0x55]);
    expect(await r.atEnd()).toBe(true);
  });

  it('a blob cut short ends the sub-reader with TruncatedError at the cut', async () => {
    const r = new StreamReader(chunksOf(Uint8Array.from([0, 0, 0]), () => 2));
    const sub = r.subReader(10);
    await expect(sub.decode((c) => c.be32('word'))).rejects.toMatchObject({ code: 'TRUNCATED', offset: 3 });
  });
});

describe('StreamWriter buffer reuse', () => {
  const pages = (n: number): Uint8Array[] =>
    Array.from({ length: n }, (_, i) => Uint8Array.from({ length: 4096 }, (_, j) => (i * 31 + j) & 0xff));

  it('does not reuse buffers on a PassThrough whose reader keeps the chunks', async () => {
    const pt = new PassThrough({ highWaterMark: 64 << 20 });
    const sw = new StreamWriter(pt, { batchSize: 16384 });
    const ps = pages(300);
    for (let i = 0; i < ps.length; i++) {
      sw.bytes(ps[i]!);
      // Let write callbacks run while the reader has not read anything yet.
      if (i % 10 === 0) await new Promise((r) => setImmediate(r));
    }
    await sw.end();
    const got: Buffer[] = [];
    for await (const c of pt) got.push(c as Buffer);
    expect(Buffer.concat(got).equals(Buffer.concat(ps))).toBe(true);
  });

  it('reuses buffers on a socket and delivers identical bytes with few writes', async () => {
    const received: Buffer[] = [];
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const server = createServer((s: Socket) => {
      s.on('data', (d: Buffer) => received.push(d));
      s.on('end', done);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const sock = connect(port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const sw = new StreamWriter(sock, { batchSize: 64 * 1024 });
    const ps = pages(2000);
    let waits = 0;
    for (const p of ps) {
      sw.be64(0x1008);
      sw.bytes(p);
      const d = sw.drain();
      if (d) {
        waits++;
        await d;
      }
    }
    await sw.end();
    await finished;
    server.close();
    const expected = Buffer.concat(ps.flatMap((p) => [Buffer.from([0, 0, 0, 0, 0, 0, 0x10, 0x08]), p]));
    expect(Buffer.concat(received).equals(expected)).toBe(true);
    expect(sw.writeCalls).toBeLessThanOrEqual(Math.ceil(expected.length / 65536) + 1);
    expect(sw.transferred).toBe(expected.length);
    expect(waits).toBeGreaterThan(0); // at most 4 batches in flight
  });
});
