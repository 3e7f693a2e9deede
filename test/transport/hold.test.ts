/**
 * Holding a socket's reading (src/transport/hold.ts) and ChannelReader's
 * hold()/release(): another reader takes the socket over on a duplicate
 * descriptor (native dup, as the destination's bulk worker does) and hands
 * it back; not a byte is lost or read twice, and data or an EOF that arrived
 * while held is seen after the release.
 */
import net from 'node:net';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { ChannelReader } from '../../src/engine/bytes.js';
import { nativeOs } from '../../src/native.js';
import { holdReading, socketFd } from '../../src/transport/hold.js';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanup.splice(0)) c();
});

async function pair(): Promise<{ a: net.Socket; b: net.Socket }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const accepted = once(server, 'connection');
  const a = net.connect(port, '127.0.0.1');
  await once(a, 'connect');
  const [b] = (await accepted) as [net.Socket];
  server.close();
  cleanup.push(() => {
    a.destroy();
    b.destroy();
  });
  return { a, b };
}

const bytes = (n: number, seed: number): Buffer => {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
};

/** Reads exactly `n` bytes from a duplicate of `fd` with a second socket object, then closes it. */
async function readOnDuplicate(fd: number, n: number): Promise<Buffer> {
  const copy = nativeOs()!.dup(fd);
  expect(copy).not.toBe(fd);
  const s = new net.Socket({ fd: copy, readable: true, writable: false, allowHalfOpen: true });
  const parts: Buffer[] = [];
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    s.on('error', reject);
    s.on('readable', () => {
      for (;;) {
        const want = n - got;
        if (want === 0) break;
        const c = (s.read(Math.min(want, s.readableLength)) as Buffer | null) ?? null;
        if (!c) break;
        parts.push(c);
        got += c.length;
      }
      if (got === n) resolve();
    });
  });
  s.pause();
  // what this socket read beyond n would be lost: the test writes exactly n before more
  s.destroy();
  return Buffer.concat(parts);
}

describe.skipIf(!nativeOs())('holding a socket for another reader', () => {
  it('dup gives a new descriptor of the same socket; a bad descriptor is an error', async () => {
    const { a, b } = await pair();
    const fd = socketFd(b)!;
    expect(fd).toBeGreaterThan(2);
    const held = holdReading(b)!;
    expect(held).toEqual([]);
    a.write(bytes(1000, 1));
    expect((await readOnDuplicate(fd, 1000)).equals(bytes(1000, 1))).toBe(true);
    expect(() => nativeOs()!.dup(-1)).toThrow('expected a file descriptor');
    expect(() => nativeOs()!.dup(1 << 20)).toThrow(/bad file descriptor/i);
  });

  it('ChannelReader: bytes before, during and after a hold arrive once and in order', async () => {
    const { a, b } = await pair();
    const r = new ChannelReader(b);
    const first = bytes(5000, 7);
    a.write(first);
    await r.need(100, 'test');
    expect(Buffer.from(r.take(100)).equals(first.subarray(0, 100))).toBe(true);
    // let the rest of `first` be read by Node before the hold
    await new Promise((res) => setTimeout(res, 50));
    const held = r.hold()!;
    expect(held.offset).toBe(100);
    expect(Buffer.from(held.bytes).equals(first.subarray(100))).toBe(true);
    // while held, the main socket reads nothing: the duplicate gets it all
    const during = bytes(300_000, 9);
    a.write(during);
    const got = await readOnDuplicate(socketFd(b)!, during.length);
    expect(got.equals(during)).toBe(true);
    // handed back: 10 bytes "not consumed" by the other reader, then the socket again
    const rest = during.subarray(during.length - 10);
    r.release(held.offset + first.length - 100 + during.length - 10, rest);
    const after = bytes(70_000, 3);
    a.write(after);
    await r.need(10 + after.length, 'test');
    expect(r.offset).toBe(first.length + during.length - 10);
    expect(Buffer.from(r.take(10)).equals(rest)).toBe(true);
    expect(Buffer.from(r.take(after.length)).equals(after)).toBe(true);
  });

  it('an EOF that the other reader saw while held ends the channel after the release', async () => {
    const { a, b } = await pair();
    const r = new ChannelReader(b);
    a.write(bytes(10, 1));
    await r.need(10, 'test');
    r.take(10);
    const held = r.hold()!;
    a.end(bytes(20, 2));
    const copy = nativeOs()!.dup(socketFd(b)!);
    const s = new net.Socket({ fd: copy, readable: true, writable: false, allowHalfOpen: true });
    const seen: Buffer[] = [];
    s.on('data', (c: Buffer) => seen.push(c));
    await once(s, 'end');
    s.destroy();
    expect(Buffer.concat(seen).equals(bytes(20, 2))).toBe(true);
    r.release(held.offset + 20, new Uint8Array(0));
    expect(await r.more()).toBe(false);
  }, 10_000);

  it('what is not a connected socket cannot be held: nothing changes', async () => {
    const p = new PassThrough();
    const r = new ChannelReader(p);
    p.write(Buffer.from([1, 2, 3]));
    expect(socketFd(p)).toBeUndefined();
    expect(r.hold()).toBeUndefined();
    await r.need(3, 'test');
    expect([...r.take(3)]).toEqual([1, 2, 3]);
  });
});
