/** PushParser (src/wire/push-parser.ts): carrying items across chunks, stopping, and the size bound. */
import { describe, expect, it } from 'vitest';
import { PushParser } from '../../src/wire/push-parser.js';

/** Items are a length byte then that many bytes; a length of 0xff is "not ours". */
class LengthPrefixed extends PushParser {
  readonly items: number[][] = [];
  protected item(b: Uint8Array, p: number, end: number): number {
    if (end - p < 1) return 0;
    const n = b[p]!;
    if (n === 0xff) return -1;
    if (end - p < 1 + n) return 0;
    this.items.push([...b.subarray(p + 1, p + 1 + n)]);
    return 1 + n;
  }
}

describe('PushParser', () => {
  const stream = Uint8Array.from([2, 1, 2, 0, 3, 7, 8, 9, 1, 5, 0xff, 4, 4]);

  it('byte by byte or whole: the same items, the same stop, the same rest', () => {
    for (const size of [1, 2, 3, 5, stream.length]) {
      const p = new LengthPrefixed(16);
      const reused = new Uint8Array(size);
      for (let i = 0; i < stream.length; i += size) {
        const n = Math.min(size, stream.length - i);
        reused.set(stream.subarray(i, i + n));
        p.push(reused.subarray(0, n));
        reused.fill(0xee);
      }
      expect(p.items).toEqual([[1, 2], [], [7, 8, 9], [5]]);
      expect(p.stopped).toBe(true);
      expect(p.consumed).toBe(10);
      expect([...p.rest()]).toEqual([0xff, 4, 4]);
    }
  });

  it('an incomplete item is the rest until more comes', () => {
    const p = new LengthPrefixed(16);
    p.push(Uint8Array.from([3, 1]));
    expect(p.stopped).toBe(false);
    expect([...p.rest()]).toEqual([3, 1]);
    p.push(Uint8Array.from([2, 3]));
    expect(p.items).toEqual([[1, 2, 3]]);
    expect(p.rest().length).toBe(0);
  });

  it('an item longer than the bound is an error, not a silent wait', () => {
    const p = new LengthPrefixed(4);
    p.push(Uint8Array.from([9, 1]));
    expect(() => p.push(Uint8Array.from([2, 3, 4, 5]))).toThrow('an item longer than 4 bytes');
  });
});
