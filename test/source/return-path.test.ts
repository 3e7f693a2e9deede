import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChannelReader } from '../../src/engine/bytes.js';
import { SourceReturnPath, type PageRequest } from '../../src/source/return-path.js';
import { encodeRpMessage } from '../../src/wire/return-path.js';
import { ByteWriter } from '../../src/wire/writer.js';

function feed(build: (w: ByteWriter) => void): { rp: SourceReturnPath; reqs: PageRequest[]; pongs: number[] } {
  const pt = new PassThrough();
  const reqs: PageRequest[] = [];
  const pongs: number[] = [];
  const rp = new SourceReturnPath(new ChannelReader(pt), { onPageRequest: (r) => reqs.push(r), onPong: (v) => pongs.push(v) });
  const w = new ByteWriter(256);
  build(w);
  pt.end(w.toBytes());
  return { rp, reqs, pongs };
}

describe('SourceReturnPath (wire decodeRpMessage)', () => {
  it('dispatches PONG and page requests (REQ_PAGES reuses the last named block), stops at SHUT', async () => {
    const { rp, reqs, pongs } = feed((w) => {
      encodeRpMessage(w, { kind: 'pong', value: 3 });
      encodeRpMessage(w, { kind: 'reqPagesId', start: 0x2000, length: 0x1000, blockName: 'pc.ram' });
      encodeRpMessage(w, { kind: 'reqPages', start: 0x5000, length: 0x2000 });
      encodeRpMessage(w, { kind: 'shut', value: 0 });
      encodeRpMessage(w, { kind: 'pong', value: 9 }); // after SHUT: never read
    });
    await rp.done;
    expect(rp.error).toBeUndefined();
    expect(rp.shutValue).toBe(0);
    expect(pongs).toEqual([3]);
    expect(reqs).toEqual([
      { idstr: 'pc.ram', start: 0x2000, length: 0x1000 },
      { idstr: 'pc.ram', start: 0x5000, length: 0x2000 },
    ]);
  });

  it("fails with QEMU's text on an invalid message type", async () => {
    const { rp } = feed((w) => {
      w.be16(0x0009);
      w.be16(0);
    });
    await rp.done;
    expect(rp.error?.message).toMatch(/RP: Received invalid message 0x0009 length 0x0000/);
    expect(rp.shutValue).toBeUndefined();
  });

  it('refuses REQ_PAGES before any named block, and a misaligned request', async () => {
    const a = feed((w) => encodeRpMessage(w, { kind: 'reqPages', start: 0, length: 4096 }));
    await a.rp.done;
    expect(a.rp.error?.message).toMatch(/no previous block/);
    const b = feed((w) => encodeRpMessage(w, { kind: 'reqPagesId', start: 100, length: 4096, blockName: 'ram' }));
    await b.rp.done;
    expect(b.rp.error?.message).toMatch(/Misaligned page request/);
    expect(b.reqs).toEqual([]);
  });

  it('reports a return path that closes before SHUT', async () => {
    const { rp } = feed((w) => encodeRpMessage(w, { kind: 'pong', value: 1 }));
    await rp.done;
    expect(rp.error?.message).toBe('Return path closed before SHUT');
  });
});
