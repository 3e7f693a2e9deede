/**
 * The postcopy-preempt channel format (SPEC §6.5): raw RAM records, the
 * CONTINUE rule per channel, ZERO for zero pages, one EOS at the end; the
 * receiver's postcopy rules and QEMU's error texts.
 */
import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { PreemptReceiver, PreemptSender, type PreemptTarget } from '../../src/preempt/channel.js';
import { ChannelReader } from '../../src/engine/bytes.js';
import { jsPageOps } from '../../src/engine/page-ops-js.js';
import type { EngineRamBlock, PageBits } from '../../src/engine/ports.js';
import { RamFlag } from '../../src/wire/constants.js';
import { ProtocolError, TruncatedError } from '../../src/errors.js';
import { fillRandom } from '../engine/helpers.js';

const TP = 4096;

function collector(): { out: Writable; bytes: () => Buffer; ended: () => boolean } {
  const chunks: Buffer[] = [];
  let ended = false;
  const out = new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(Buffer.from(c));
      cb();
    },
    final(cb) {
      ended = true;
      cb();
    },
  });
  return { out, bytes: () => Buffer.concat(chunks), ended: () => ended };
}

const block = (idstr: string, pages: number, seed = 1): EngineRamBlock => {
  const bytes = new Uint8Array(pages * TP);
  fillRandom(bytes, seed);
  return { idstr, usedLength: bytes.length, ramAddr: 0, bytes };
};

function target(blocks: EngineRamBlock[], accepting = true) {
  const bits = new Map<string, PageBits>(blocks.map((b) => [b.idstr, new Uint32Array(Math.ceil(b.usedLength / TP / 32))]));
  const placed: Array<[string, number]> = [];
  const t: PreemptTarget = {
    block: (idstr) => {
      const b = blocks.find((x) => x.idstr === idstr);
      return b && { block: b, bits: bits.get(idstr)! };
    },
    accepting: () => accepting,
    placed: (idstr, page) => placed.push([idstr, page]),
  };
  return { t, bits, placed };
}

async function receive(bytes: Uint8Array, t: PreemptTarget): Promise<PreemptReceiver> {
  const pt = new PassThrough();
  pt.end(bytes);
  const rx = new PreemptReceiver(t);
  await rx.run(new ChannelReader(pt));
  return rx;
}

/** Hand-made record header: be64 offset|flags (+ cstr8 idstr). */
function head(offset: number, flags: number, idstr?: string): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32BE(Math.floor(offset / 2 ** 32), 0);
  h.writeUInt32BE(((offset % 2 ** 32) | flags) >>> 0, 4);
  return idstr === undefined ? h : Buffer.concat([h, Buffer.from([idstr.length]), Buffer.from(idstr, 'latin1')]);
}
const EOS = head(0, RamFlag.EOS);

describe('PreemptSender', () => {
  it('writes one PAGE record per page at once, CONTINUE within a block, ZERO for zero pages, the idstr again after a block change, EOS and end', async () => {
    const a = block('pc.ram', 4);
    const b = block('vga.vram', 2, 7);
    a.bytes.fill(0, 2 * TP, 3 * TP);
    const c = collector();
    const s = new PreemptSender(c.out, jsPageOps);
    s.sendPage(a, 1 * TP);
    expect(c.bytes().length).toBe(8 + 1 + 6 + TP); // written before any await
    s.sendPage(a, 3 * TP);
    s.sendPage(a, 2 * TP);
    s.sendPage(b, 0);
    s.sendPage(a, 0);
    await s.end();
    expect(c.ended()).toBe(true);
    expect(s.usable).toBe(false);
    expect(s.pages).toBe(5);
    const expected = Buffer.concat([
      head(TP, RamFlag.PAGE, 'pc.ram'),
      a.bytes.subarray(TP, 2 * TP),
      head(3 * TP, RamFlag.PAGE | RamFlag.CONTINUE),
      a.bytes.subarray(3 * TP, 4 * TP),
      head(2 * TP, RamFlag.ZERO | RamFlag.CONTINUE),
      Buffer.from([0]),
      head(0, RamFlag.PAGE, 'vga.vram'),
      b.bytes.subarray(0, TP),
      head(0, RamFlag.PAGE, 'pc.ram'),
      a.bytes.subarray(0, TP),
      EOS,
    ]);
    expect(c.bytes().equals(expected)).toBe(true);
    expect(s.transferred).toBe(expected.length);
  });

  it('names the block again after resetLastBlock (a new channel)', () => {
    const a = block('ram', 2);
    const c = collector();
    const s = new PreemptSender(c.out, jsPageOps);
    s.sendPage(a, 0);
    s.resetLastBlock();
    s.sendPage(a, TP);
    const out = c.bytes();
    expect(out.subarray(8 + 4 + TP, 8 + 4 + TP + 8).equals(head(TP, RamFlag.PAGE))).toBe(true);
    expect(out[8 + 4 + TP + 8]).toBe(3); // cstr8 length of "ram"
  });
});

describe('PreemptReceiver', () => {
  it('places what the sender wrote, sets the bits, reports each page, stops at EOS', async () => {
    const src = [block('pc.ram', 40, 3), block('vga.vram', 3, 9)];
    src[0]!.bytes.fill(0, 5 * TP, 6 * TP);
    const c = collector();
    const s = new PreemptSender(c.out, jsPageOps);
    const order: Array<[number, number]> = [[0, 33], [0, 5], [1, 2], [0, 0], [0, 39]];
    for (const [bi, p] of order) s.sendPage(src[bi]!, p * TP);
    await s.end();
    const dst = [block('pc.ram', 40, 100), block('vga.vram', 3, 101)];
    const { t, bits, placed } = target(dst);
    const rx = await receive(Buffer.concat([c.bytes(), Buffer.from('trailing bytes are not read')]), t);
    expect(rx.pages).toBe(5);
    expect(placed).toEqual(order.map(([bi, p]) => [dst[bi]!.idstr, p]));
    for (const [bi, p] of order) {
      expect(Buffer.compare(dst[bi]!.bytes.subarray(p * TP, (p + 1) * TP), src[bi]!.bytes.subarray(p * TP, (p + 1) * TP))).toBe(0);
      expect((bits.get(dst[bi]!.idstr)![p >>> 5]! >>> (p & 31)) & 1).toBe(1);
    }
    // Untouched pages keep their bytes and stay missing.
    expect((bits.get('pc.ram')![0]! >>> 1) & 1).toBe(0);
    expect(Buffer.compare(dst[0]!.bytes.subarray(TP, 2 * TP), src[0]!.bytes.subarray(TP, 2 * TP))).not.toBe(0);
  });

  const fails = async (bytes: Buffer, re: RegExp, accepting = true, pre?: (bits: Map<string, PageBits>) => void): Promise<void> => {
    const { t, bits, placed } = target([block('ram', 4)], accepting);
    pre?.(bits);
    const err = await receive(bytes, t).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(re);
    expect(placed).toEqual([]);
  };
  const page = Buffer.alloc(TP, 0xab);

  it('rejects CONTINUE before any block with QEMU text', () => fails(Buffer.concat([head(0, RamFlag.PAGE | RamFlag.CONTINUE), page, EOS]), /Ack, bad migration stream!/));
  it('rejects an unknown block', () => fails(Buffer.concat([head(0, RamFlag.PAGE, 'nope'), page, EOS]), /Can't find block nope/));
  it('rejects an offset outside the block', () => fails(Buffer.concat([head(4 * TP, RamFlag.PAGE, 'ram'), page, EOS]), /Illegal RAM offset 4000/));
  it('rejects XBZRLE and other flags as QEMU does in postcopy', async () => {
    await fails(Buffer.concat([head(0, RamFlag.XBZRLE, 'ram'), EOS]), /Unknown combination of migration flags: 0x40 \(postcopy mode\)/);
    await fails(Buffer.concat([head(0, RamFlag.MEM_SIZE), EOS]), /Unknown combination of migration flags: 0x4/);
  });
  it('rejects a second copy of a page (EEXIST)', () =>
    fails(Buffer.concat([head(TP, RamFlag.PAGE, 'ram'), page, EOS]), /postcopy_place_page: File exists copy host: ram\+0x1000/, true, (bits) => {
      bits.get('ram')![0] = 2;
    }));
  it('rejects pages outside postcopy (before LISTEN)', () => fails(Buffer.concat([head(0, RamFlag.PAGE, 'ram'), page, EOS]), /outside postcopy/, false));
  it('a channel cut inside a record is a TruncatedError', async () => {
    const { t } = target([block('ram', 4)]);
    const err = await receive(Buffer.concat([head(0, RamFlag.PAGE, 'ram'), page.subarray(0, 100)]), t).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TruncatedError);
    const err2 = await receive(head(0, RamFlag.PAGE | RamFlag.CONTINUE), t).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(ProtocolError);
  });
});
