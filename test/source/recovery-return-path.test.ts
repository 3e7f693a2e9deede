/**
 * SourceReturnPath in recovery mode and its I/O-vs-protocol distinction:
 * RECV_BITMAP replies are read with their out-of-band bitmap only while
 * recovering; an end of input, a cut mid-message or a channel error is I/O
 * (postcopy pauses); a bad message or a refused request is not (the path is
 * bad, the migration fails at the end).
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ChannelReader } from '../../src/engine/bytes.js';
import { PostcopyError } from '../../src/errors.js';
import { SourceReturnPath, type ReturnPathHandlers } from '../../src/source/return-path.js';
import { encodeRecvBitmapData, encodeRpMessage } from '../../src/wire/return-path.js';
import { ByteWriter } from '../../src/wire/writer.js';

function feed(build: (w: ByteWriter) => void, opts: { recovering?: boolean; end?: boolean; lastReqBlock?: string } = {}, h: ReturnPathHandlers = {}) {
  const pt = new PassThrough();
  const bitmaps: [string, Uint8Array][] = [];
  const messages: number[] = [];
  const rp = new SourceReturnPath(
    new ChannelReader(pt),
    { recvBitmapSize: (id) => (id === 'ram' ? 16 : undefined), onRecvBitmap: (id, b) => bitmaps.push([id, b]), onMessage: () => messages.push(1), ...h },
    { recovering: opts.recovering ?? false, lastReqBlock: opts.lastReqBlock },
  );
  const w = new ByteWriter(256);
  build(w);
  if (opts.end ?? true) pt.end(w.toBytes());
  else pt.write(w.toBytes());
  return { rp, bitmaps, messages, pt };
}

const bitmap = Uint8Array.from({ length: 16 }, (_, i) => i * 17);

describe('SourceReturnPath: recovery mode and I/O vs protocol endings', () => {
  it('recovering: RECV_BITMAP + bitmap per block, then RESUME_ACK; a copy of the bitmap is handed over', async () => {
    const acks: number[] = [];
    const { rp, bitmaps, messages } = feed(
      (w) => {
        encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'ram' });
        encodeRecvBitmapData(w, bitmap);
        encodeRpMessage(w, { kind: 'resumeAck', value: 1 });
        encodeRpMessage(w, { kind: 'shut', value: 0 });
      },
      { recovering: true },
      { onResumeAck: (v) => acks.push(v) },
    );
    await rp.done;
    expect(rp.error).toBeUndefined();
    expect(bitmaps).toEqual([['ram', bitmap]]);
    expect(acks).toEqual([1]);
    expect(messages).toHaveLength(3);
  });

  it('RECV_BITMAP outside recovery, an unknown block or a wrong size make the path bad (not I/O)', async () => {
    const outside = feed((w) => {
      encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'ram' });
      encodeRecvBitmapData(w, bitmap);
    });
    await outside.rp.done;
    expect(outside.rp.error?.message).toMatch(/unexpected RECV_BITMAP outside recovery/);
    expect(outside.rp.ioError).toBe(false);
    const unknown = feed((w) => encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'pc.ram' }), { recovering: true });
    await unknown.rp.done;
    expect(unknown.rp.error?.message).toMatch(/unknown ramblock 'pc.ram'/);
    expect(unknown.rp.ioError).toBe(false);
    const size = feed((w) => {
      encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'ram' });
      encodeRecvBitmapData(w, new Uint8Array(8));
    }, { recovering: true });
    await size.rp.done;
    expect(size.rp.error?.message).toMatch(/ramblock 'ram' bitmap size mismatch \(0x8 != 0x10\)/);
    expect(size.bitmaps).toEqual([]);
  });

  it('a refused page request (handler throws RETURN_PATH) is bad, not I/O', async () => {
    const { rp } = feed((w) => encodeRpMessage(w, { kind: 'reqPagesId', start: 0, length: 4096, blockName: 'x' }), {}, {
      onPageRequest: () => {
        throw new PostcopyError('RETURN_PATH', 'Unknown block name: x');
      },
    });
    await rp.done;
    expect(rp.error?.message).toBe('Unknown block name: x');
    expect(rp.ioError).toBe(false);
  });

  it('end of input before SHUT, a message cut in half, a channel error: I/O', async () => {
    const eof = feed((w) => encodeRpMessage(w, { kind: 'pong', value: 1 }));
    await eof.rp.done;
    expect(eof.rp.ioError).toBe(true);
    expect(eof.rp.error?.message).toBe('Return path closed before SHUT');
    const cut = feed((w) => {
      encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'ram' });
      w.be64(16); // S = 16, but only 8 bitmap bytes follow before the end of input
      w.bytes(bitmap.subarray(0, 8));
    }, { recovering: true, end: false });
    cut.pt.end();
    await cut.rp.done;
    expect(cut.bitmaps).toEqual([]);
    expect(cut.rp.ioError).toBe(true);
    const half = new PassThrough();
    const rp = new SourceReturnPath(new ChannelReader(half), {}, {});
    half.end(Uint8Array.of(0, 2, 0, 4, 0)); // PONG header + 1 of 4 payload bytes
    await rp.done;
    expect(rp.ioError).toBe(true);
    const err = new PassThrough();
    const rp2 = new SourceReturnPath(new ChannelReader(err), {}, {});
    err.destroy(new Error('read ECONNRESET'));
    await rp2.done;
    expect(rp2.ioError).toBe(true);
    expect(rp2.error?.message).toBe('read ECONNRESET');
  });

  it('the last named block carries over to the next channel (REQ_PAGES right after a resume)', async () => {
    const reqs: unknown[] = [];
    const { rp } = feed((w) => encodeRpMessage(w, { kind: 'reqPages', start: 0x3000, length: 0x1000 }), { lastReqBlock: 'pc.ram' }, { onPageRequest: (r) => reqs.push(r) });
    await rp.done;
    expect(reqs).toEqual([{ idstr: 'pc.ram', start: 0x3000, length: 0x1000 }]);
    expect(rp.lastBlock).toBe('pc.ram');
  });
});
