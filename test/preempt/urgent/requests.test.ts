/**
 * RequestParser (src/preempt/urgent/requests.ts): the urgent worker's push
 * parser of return-path page requests. However the bytes are cut, it serves
 * the same requests and stops before the same message; it takes only
 * requests the main thread's reader would accept, and leaves everything else
 * (other messages, and every request QEMU's rules refuse) to that reader.
 */
import { describe, expect, it } from 'vitest';
import { RequestParser } from '../../../src/preempt/urgent/requests.js';
import { encodeRpMessage as encodeInto, type RpMessage } from '../../../src/wire/return-path.js';
import { encodeToBytes } from '../../../src/wire/writer.js';

const encodeRpMessage = (m: RpMessage): Uint8Array => encodeToBytes((w) => encodeInto(w, m)).slice();

const TP = 4096;
const blocks = [
  { idstr: 'pc.ram', usedLength: 64 * TP },
  { idstr: 'vga.vram', usedLength: 8 * TP },
];
type Served = [number, number, number];

function parse(bytes: Uint8Array, cuts: number[], last?: string): { p: RequestParser; served: Served[] } {
  const served: Served[] = [];
  const p = new RequestParser(blocks, last, (b, s, l) => served.push([b, s, l]));
  let at = 0;
  const reused = new Uint8Array(bytes.length);
  for (const c of [...cuts.filter((x) => x > 0 && x < bytes.length), bytes.length]) {
    reused.set(bytes.subarray(at, c));
    p.push(reused.subarray(0, c - at));
    reused.fill(0xee, 0, c - at);
    at = c;
  }
  return { p, served };
}

const cat = (...parts: Uint8Array[]): Uint8Array => Uint8Array.from(parts.flatMap((x) => [...x]));

describe('RequestParser', () => {
  const reqs = [
    encodeRpMessage({ kind: 'reqPagesId', start: 3 * TP, length: TP, blockName: 'pc.ram' }),
    encodeRpMessage({ kind: 'reqPages', start: 7 * TP, length: 2 * TP }),
    encodeRpMessage({ kind: 'reqPagesId', start: 0, length: 8 * TP, blockName: 'vga.vram' }),
    encodeRpMessage({ kind: 'reqPages', start: TP, length: TP }),
  ];
  const expected: Served[] = [
    [0, 3 * TP, TP],
    [0, 7 * TP, 2 * TP],
    [1, 0, 8 * TP],
    [1, TP, TP],
  ];
  const pong = encodeRpMessage({ kind: 'pong', value: 7 });
  const stream = cat(...reqs, pong, reqs[1]!);

  it('serves the requests in order under any cutting, stops before the PONG and keeps it and what follows', () => {
    const cutsList: number[][] = [[], Array.from({ length: stream.length }, (_, i) => i)];
    let x = 99;
    for (let k = 0; k < 40; k++) {
      const cuts: number[] = [];
      for (let i = 0; i < 4; i++) cuts.push((x = (x * 1103515245 + 12345) >>> 0) % stream.length);
      cutsList.push(cuts.sort((a, b) => a - b));
    }
    for (const cuts of cutsList) {
      const { p, served } = parse(stream, cuts);
      expect(served).toEqual(expected);
      expect(p.stopped).toBe(true);
      const taken = reqs.reduce((a, r) => a + r.length, 0);
      expect(p.consumed).toBe(taken);
      expect([...p.rest()]).toEqual([...stream.subarray(taken)]);
      expect(p.lastReqBlock).toBe('vga.vram');
      expect(p.requests).toBe(4);
    }
  });

  it('an incomplete request is kept, not served', () => {
    const { p, served } = parse(reqs[0]!.subarray(0, 10), [3]);
    expect(served).toEqual([]);
    expect(p.stopped).toBe(false);
    expect(p.consumed).toBe(0);
    expect([...p.rest()]).toEqual([...reqs[0]!.subarray(0, 10)]);
  });

  it('REQ_PAGES continues the block given at the start (the last REQ_PAGES_ID of an earlier run)', () => {
    expect(parse(reqs[3]!, [], 'vga.vram').served).toEqual([[1, TP, TP]]);
    expect(parse(reqs[3]!, [], 'pc.ram').served).toEqual([[0, TP, TP]]);
  });

  it('leaves to the main reader every request it must judge: no previous block, misaligned, out of range, unknown block, empty, bad lengths', () => {
    const raw = (type: number, body: number[]): Uint8Array => Uint8Array.from([type >> 8, type & 0xff, body.length >> 8, body.length & 0xff, ...body]);
    const be64 = (v: number): number[] => [0, 0, 0, 0, (v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
    const be32 = (v: number): number[] => [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
    const refused: [string, Uint8Array, string | undefined][] = [
      ['no previous block', reqs[1]!, undefined],
      ['misaligned start', encodeRpMessage({ kind: 'reqPagesId', start: 100, length: TP, blockName: 'pc.ram' }), undefined],
      ['misaligned length', encodeRpMessage({ kind: 'reqPages', start: 0, length: 100 }), 'pc.ram'],
      ['out of range', encodeRpMessage({ kind: 'reqPages', start: 63 * TP, length: 2 * TP }), 'pc.ram'],
      ['unknown block', encodeRpMessage({ kind: 'reqPagesId', start: 0, length: TP, blockName: 'nope' }), undefined],
      ['empty', encodeRpMessage({ kind: 'reqPages', start: 0, length: 0 }), 'pc.ram'],
      ['REQ_PAGES of the wrong length', raw(4, [...be64(0), ...be32(TP), 0]), 'pc.ram'],
      ['REQ_PAGES_ID whose name length disagrees', raw(3, [...be64(0), ...be32(TP), 7, ...Buffer.from('pc.ram')]), undefined],
      ['SHUT', encodeRpMessage({ kind: 'shut', value: 0 }), 'pc.ram'],
      ['RESUME_ACK', encodeRpMessage({ kind: 'resumeAck', value: 1 }), 'pc.ram'],
      ['an unknown type', raw(9, [1, 2]), 'pc.ram'],
    ];
    for (const [what, msg, last] of refused) {
      const bytes = cat(reqs[0]!, msg);
      // after a request naming pc.ram, REQ_PAGES has a previous block: that case is checked alone only
      for (const cuts of what === 'no previous block' ? [] : [[], [reqs[0]!.length + 1], [reqs[0]!.length - 2, reqs[0]!.length + 5]]) {
        const { p, served } = parse(bytes, cuts, last);
        expect(served, what).toEqual([[0, 3 * TP, TP]]);
        expect(p.stopped, what).toBe(true);
        expect(p.consumed, what).toBe(reqs[0]!.length);
        expect([...p.rest()], what).toEqual([...msg]);
      }
      // alone, with the block given: nothing taken
      const alone = parse(msg, [], last);
      expect(alone.served, what).toEqual([]);
      expect(alone.p.consumed, what).toBe(0);
    }
  });
});
