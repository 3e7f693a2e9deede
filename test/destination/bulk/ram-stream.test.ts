/**
 * RamStreamParser (src/destination/bulk/ram-stream.ts): the bulk worker's
 * push parser of postcopy RAM sections. However the stream is cut into
 * chunks, it places the same pages, takes the same bytes and stops before
 * the same item; it stops (taking nothing of it) at whatever the main
 * thread's loader must see — a command, another section, a record it would
 * reject — and tells when a page a fault waits for is placed.
 */
import { describe, expect, it } from 'vitest';
import { MAX_ITEM, RamStreamParser, type BulkBlock, type ParserStart } from '../../../src/destination/bulk/ram-stream.js';
import { RamRecordEncoder } from '../../../src/wire/ram.js';
import { ByteWriter } from '../../../src/wire/writer.js';
import { RamFlag, SectionType } from '../../../src/wire/constants.js';

const TP = 4096;
const RAM_ID = 2;

function block(idstr: string, pages: number, zeroed = true): BulkBlock {
  const words = (pages + 31) >>> 5;
  return {
    idstr,
    usedLength: pages * TP,
    bytes: new Uint8Array(new SharedArrayBuffer(pages * TP)),
    bits: new Uint32Array(new SharedArrayBuffer(words * 4)),
    wanted: new Uint32Array(new SharedArrayBuffer(words * 4)),
    zeroed,
  };
}

const pageOf = (seed: number): Uint8Array => {
  const p = new Uint8Array(TP);
  for (let i = 0; i < TP; i++) p[i] = (i * 13 + seed * 7 + 1) & 0xff;
  return p;
};

interface Sent {
  idstr: string;
  page: number;
  data: Uint8Array | undefined; // undefined: a ZERO record
}

/** Two ram sections (PART, END) of PAGE/ZERO records across two blocks, EOS and footers each; then `tail`. */
function stream(sent: Sent[], tail: Uint8Array = new Uint8Array(0)): Uint8Array {
  const w = new ByteWriter(1 << 20);
  const enc = new RamRecordEncoder();
  const half = sent.length >> 1;
  for (const [type, part] of [
    [SectionType.PART, sent.slice(0, half)],
    [SectionType.END, sent.slice(half)],
  ] as const) {
    w.u8(type);
    w.be32(RAM_ID);
    for (const s of part) {
      if (s.data) enc.page(w, s.idstr, s.page * TP, s.data);
      else enc.zero(w, s.idstr, s.page * TP);
    }
    enc.eos(w);
    w.u8(SectionType.FOOTER);
    w.be32(RAM_ID);
  }
  w.bytes(tail);
  return w.toBytes();
}

const START: ParserStart = { at: 'section', sectionId: -1, lastBlock: undefined };

function parse(blocks: BulkBlock[], bytes: Uint8Array, cuts: number[], start = START, onWanted: (i: string, p: number) => void = () => {}): RamStreamParser {
  const parser = new RamStreamParser(blocks, new Set([RAM_ID]), start, onWanted);
  let at = 0;
  // the chunk buffer is reused after each push, as a socket's onread buffer is
  const reused = new Uint8Array(bytes.length);
  for (const c of [...cuts.filter((x) => x < bytes.length), bytes.length]) {
    reused.set(bytes.subarray(at, c));
    parser.push(reused.subarray(0, c - at));
    reused.fill(0xee, 0, c - at);
    at = c;
  }
  return parser;
}

/** A deterministic pseudo-random generator (the chunkings are reproducible). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

const isSet = (bits: Uint32Array, p: number): boolean => (bits[p >>> 5]! & (1 << (p & 31))) !== 0;

function workload(): Sent[] {
  const sent: Sent[] = [];
  for (let i = 0; i < 60; i++) {
    const idstr = i % 7 < 4 ? 'pc.ram' : 'vga.vram';
    const page = idstr === 'pc.ram' ? (i * 37) % 256 : (i * 5) % 16;
    if (sent.some((s) => s.idstr === idstr && s.page === page)) continue;
    sent.push({ idstr, page, data: i % 5 === 0 ? undefined : pageOf(i) });
  }
  return sent;
}

describe('RamStreamParser', () => {
  const sent = workload();
  const command = Uint8Array.from([SectionType.COMMAND, 0x00, 0x01, 0x00, 0x04, 0, 0, 0, 7]);
  const bytes = stream(sent, command);

  function check(blocks: BulkBlock[], p: RamStreamParser, cutsLabel: string): void {
    const byName = new Map(blocks.map((b) => [b.idstr, b]));
    for (const s of sent) {
      const b = byName.get(s.idstr)!;
      expect(isSet(b.bits, s.page), `${cutsLabel}: ${s.idstr} page ${s.page} marked`).toBe(true);
      const got = b.bytes.subarray(s.page * TP, (s.page + 1) * TP);
      expect(Buffer.from(got).equals(Buffer.from(s.data ?? new Uint8Array(TP))), `${cutsLabel}: ${s.idstr} page ${s.page}`).toBe(true);
    }
    const marked = blocks.reduce((a, b) => a + b.bits.reduce((x, w) => x + popcount(w), 0), 0);
    expect(marked).toBe(sent.length);
    expect(p.counters).toEqual({ normal: sent.filter((s) => s.data).length, zero: sent.filter((s) => !s.data).length });
    expect(p.stopped).toBe(true);
    expect(p.at).toBe('section');
    expect(p.consumed).toBe(bytes.length - command.length);
    expect([...p.rest()]).toEqual([...command]);
  }

  it('one chunk: every page placed and marked, stops before the command and keeps it', () => {
    const blocks = [block('pc.ram', 256), block('vga.vram', 16)];
    check(blocks, parse(blocks, bytes, []), 'one chunk');
  });

  it('any chunking gives the same result (byte by byte near items, random cuts, cuts at every item edge)', () => {
    const r = rng(42);
    const chunkings: number[][] = [];
    for (let k = 0; k < 30; k++) {
      const cuts = new Set<number>();
      const n = 1 + Math.floor(r() * 200);
      for (let i = 0; i < n; i++) cuts.add(1 + Math.floor(r() * (bytes.length - 1)));
      chunkings.push([...cuts].sort((a, b) => a - b));
    }
    // small chunks (carry across many pushes) over the first sections
    chunkings.push(Array.from({ length: 3000 }, (_, i) => i + 1));
    chunkings.push(Array.from({ length: Math.floor(bytes.length / 4095) }, (_, i) => (i + 1) * 4095));
    for (const cuts of chunkings) {
      const blocks = [block('pc.ram', 256), block('vga.vram', 16)];
      check(blocks, parse(blocks, bytes, cuts), `cuts ${cuts.slice(0, 5).join(',')}…`);
    }
  });

  it('an incomplete item at the end is kept, not taken', () => {
    const blocks = [block('pc.ram', 256), block('vga.vram', 16)];
    // the section header, a ZERO record naming "pc.ram", a PAGE record that CONTINUEs, 100 bytes of the next
    expect([sent[0]!.data, sent[0]!.idstr, sent[1]!.idstr]).toEqual([undefined, 'pc.ram', 'pc.ram']);
    expect(sent[1]!.data).toBeDefined();
    const whole = 5 + (8 + 1 + 6 + 1) + (8 + TP);
    const upTo = whole + 100;
    const p = parse(blocks, bytes.subarray(0, upTo), [7, 50]);
    expect(p.stopped).toBe(false);
    expect(p.at).toBe('record');
    expect(p.sectionId).toBe(RAM_ID);
    expect(p.consumed).toBe(whole);
    expect(Buffer.from(p.rest()).equals(Buffer.from(bytes.subarray(p.consumed, upTo)))).toBe(true);
    expect(p.lastBlock?.idstr).toBe(sent[0]!.idstr);
  });

  it('starts inside a section (record, footer) with the CONTINUE block it was given', () => {
    const blocks = [block('pc.ram', 8)];
    const w = new ByteWriter();
    const enc = new RamRecordEncoder();
    enc.page(w, 'pc.ram', 0, pageOf(1)); // names the block: a fresh encoder
    const lead = w.length;
    enc.page(w, 'pc.ram', 2 * TP, pageOf(2)); // CONTINUE
    enc.eos(w);
    w.u8(SectionType.FOOTER);
    w.be32(RAM_ID);
    const tail = w.toBytes().subarray(lead);
    const p = parse(blocks, tail, [3], { at: 'record', sectionId: RAM_ID, lastBlock: 'pc.ram' });
    expect(p.consumed).toBe(tail.length);
    expect(p.at).toBe('section');
    expect(isSet(blocks[0]!.bits, 2)).toBe(true);
    expect(Buffer.from(blocks[0]!.bytes.subarray(2 * TP, 3 * TP)).equals(Buffer.from(pageOf(2)))).toBe(true);
    // the same CONTINUE record with no block known: not taken
    const q = parse([block('pc.ram', 8)], tail, [], { at: 'record', sectionId: RAM_ID, lastBlock: undefined });
    expect(q.stopped).toBe(true);
    expect(q.consumed).toBe(0);
    expect(Buffer.from(q.rest()).equals(Buffer.from(tail))).toBe(true);
  });

  /** A PART section with one good page then `bad`: the parser takes the page and stops at `bad`. */
  function stopsAt(bad: Uint8Array, blocks = [block('pc.ram', 8)], sectionId = RAM_ID): void {
    const w = new ByteWriter();
    w.u8(SectionType.PART);
    w.be32(sectionId);
    const enc = new RamRecordEncoder();
    enc.page(w, 'pc.ram', TP, pageOf(3));
    const good = w.length;
    w.bytes(bad);
    const all = w.toBytes();
    for (const cuts of [[], [good - 1], [good + 1], [good + 3, good + 9]]) {
      const bs = blocks.map((b) => block(b.idstr, b.usedLength / TP));
      const p = parse(bs, all, cuts);
      const label = `cuts ${cuts.join(',')}`;
      if (sectionId !== RAM_ID) {
        expect(p.consumed, label).toBe(0);
        continue;
      }
      expect(p.stopped, label).toBe(true);
      expect(p.consumed, label).toBe(good);
      expect(Buffer.from(p.rest()).equals(Buffer.from(bad)), label).toBe(true);
      expect(p.at, label).toBe('record');
      expect(p.counters.normal, label).toBe(1);
    }
  }

  const rec = (offset: number, flags: number, idstr?: string, body: number[] = []): Uint8Array => {
    const w = new ByteWriter();
    w.be32(Math.floor(offset / 2 ** 32));
    w.be32((offset % 2 ** 32) | flags);
    if (idstr !== undefined) w.cstr8(idstr);
    w.bytes(Uint8Array.from(body));
    return w.toBytes();
  };

  it('stops before a record the loader must judge: unknown block, out of range, already placed, other flags', () => {
    stopsAt(rec(0, RamFlag.PAGE, 'nope', new Array(TP).fill(1)));
    stopsAt(rec(8 * TP, RamFlag.ZERO | RamFlag.CONTINUE, undefined, [0]));
    stopsAt(rec(TP, RamFlag.ZERO | RamFlag.CONTINUE, undefined, [0])); // page 1 placed just before: EEXIST for the loader
    stopsAt(rec(2 * TP, RamFlag.XBZRLE | RamFlag.CONTINUE, undefined, [1, 0, 2, 0, 0]));
    stopsAt(rec(0, RamFlag.MEM_SIZE));
    stopsAt(rec(0, RamFlag.PAGE | RamFlag.COMPRESS_PAGE | RamFlag.CONTINUE, undefined, new Array(TP).fill(2)));
  });

  it('stops at a command, EOF, a section of another id or a bad footer; takes nothing of another id', () => {
    const blocks = [block('pc.ram', 8)];
    for (const tail of [Uint8Array.from([SectionType.COMMAND, 0, 4, 0, 0]), Uint8Array.from([SectionType.EOF]), Uint8Array.from([SectionType.PART, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0x10])]) {
      const w = new ByteWriter();
      w.u8(SectionType.END);
      w.be32(RAM_ID);
      new RamRecordEncoder().eos(w);
      w.u8(SectionType.FOOTER);
      w.be32(RAM_ID);
      const n = w.length;
      w.bytes(tail);
      const p = parse(blocks, w.toBytes(), [2]);
      expect(p.stopped).toBe(true);
      expect(p.consumed).toBe(n);
      expect([...p.rest()]).toEqual([...tail]);
    }
    stopsAt(new Uint8Array(0), blocks, 9);
    // a footer naming another section
    const w = new ByteWriter();
    w.u8(SectionType.PART);
    w.be32(RAM_ID);
    new RamRecordEncoder().eos(w);
    w.u8(SectionType.FOOTER);
    w.be32(RAM_ID + 1);
    const p = parse(blocks, w.toBytes(), []);
    expect(p.at).toBe('footer');
    expect(p.consumed).toBe(5 + 8);
    expect(p.rest().length).toBe(5);
  });

  it('tells when it places a page a fault waits for, once, and clears the wish', () => {
    const blocks = [block('pc.ram', 256), block('vga.vram', 16)];
    const want = [sent[3]!, sent[10]!, sent[sent.length - 1]!];
    for (const s of want) {
      const b = blocks.find((x) => x.idstr === s.idstr)!;
      b.wanted[s.page >>> 5]! |= 1 << (s.page & 31);
    }
    const seen: string[] = [];
    const p = parse(blocks, bytes, [100, 20_000], START, (i, pg) => {
      // the page is in place and marked when the wish is reported
      const b = blocks.find((x) => x.idstr === i)!;
      expect(isSet(b.bits, pg)).toBe(true);
      seen.push(`${i}:${pg}`);
    });
    expect(p.stopped).toBe(true);
    expect(seen.sort()).toEqual(want.map((s) => `${s.idstr}:${s.page}`).sort());
    for (const b of blocks) expect(b.wanted.every((w) => w === 0)).toBe(true);
  });

  it('a zero page on memory that is not fresh is written; on fresh memory it is only marked', () => {
    const stale = block('pc.ram', 4, false);
    stale.bytes.fill(0x55);
    const w = new ByteWriter();
    w.u8(SectionType.PART);
    w.be32(RAM_ID);
    const enc = new RamRecordEncoder();
    enc.zero(w, 'pc.ram', TP);
    enc.zero(w, 'pc.ram', 2 * TP, 0x77);
    const p = parse([stale], w.toBytes(), []);
    expect(p.counters.zero).toBe(2);
    expect(stale.bytes.subarray(TP, 2 * TP).every((x) => x === 0)).toBe(true);
    expect(stale.bytes.subarray(2 * TP, 3 * TP).every((x) => x === 0x77)).toBe(true);
    expect(stale.bytes.subarray(0, TP).every((x) => x === 0x55)).toBe(true);
    expect(MAX_ITEM).toBe(8 + 1 + 255 + TP);
  });
});

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}
