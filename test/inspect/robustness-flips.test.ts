/**
 * Robustness, part 2 (part 1: robustness.test.ts): flipped bytes in a real
 * QEMU capture either decode or fail with a ProtocolError; synthetic precopy
 * and postcopy streams survive every truncation and many bit flips.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { ProtocolError } from '../../src/errors.js';
import { inspectStream } from '../../src/inspect/inspect.js';
import { postcopyStream, precopyStream } from './streams.js';

const fixture = new Uint8Array(fs.readFileSync(new URL('../fixtures/none-1m.bin', import.meta.url)));

/** One chunk (fast), or a few to cross chunk boundaries. */
async function* once(b: Uint8Array): AsyncGenerator<Uint8Array> {
  yield b;
}

/** Run inspect with a deadline; resolve to the error (or undefined on success). */
async function attempt(b: Uint8Array, ms = 2000): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`inspect hung (> ${ms} ms)`)), ms);
  });
  try {
    await Promise.race([inspectStream(once(b), { fields: true }), deadline]);
    return undefined;
  } catch (e) {
    return e;
  } finally {
    clearTimeout(timer);
  }
}

function checkError(e: unknown, len: number, what: string): void {
  if (!(e instanceof ProtocolError)) {
    throw new Error(`${what}: expected a ProtocolError, got ${e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e)}`);
  }
  if (!Number.isSafeInteger(e.offset) || e.offset < 0 || e.offset > len) {
    throw new Error(`${what}: offset ${e.offset} outside 0..${len} (${e.message})`);
  }
}

describe('inspect robustness: flips and synthetic streams', () => {
  it('flipped bytes decode or fail with a ProtocolError; never another exception', async () => {
    // Every byte of the non-page-data parts, and a sample of the page data, with 3 masks.
    const positions: number[] = [];
    for (let i = 0; i < fixture.length; i++) {
      const inHeaderOrTail = i < 0x60 || i > fixture.length - 1200;
      if (inHeaderOrTail ? i % 3 === 0 : i % 61 === 0) positions.push(i);
    }
    let ok = 0;
    let failed = 0;
    for (const i of positions) {
      for (const mask of i % 4 === 0 ? [0x01, 0xff] : [0x80]) {
        const b = fixture.slice();
        b[i]! ^= mask;
        const e = await attempt(b);
        if (e === undefined) ok++;
        else {
          checkError(e, b.length, `byte ${i} ^ 0x${mask.toString(16)}`);
          failed++;
        }
      }
    }
    // Both outcomes must occur: flips inside page data decode, flips in framing fail.
    expect(ok).toBeGreaterThan(0);
    expect(failed).toBeGreaterThan(0);
  }, 60_000);

  it('synthetic precopy and postcopy streams: every truncation and every single-bit flip', async () => {
    for (const s of [precopyStream().bytes, postcopyStream().bytes]) {
      const full = await inspectStream(once(s));
      for (let n = 0; n < s.length; n += n < 200 || n > s.length - 200 ? 1 : 29) {
        const e = await attempt(s.subarray(0, n));
        if (n === full.deviceRegion!.end + 1 && e === undefined) continue; // ends at EOF, no vmdesc
        checkError(e, n, `truncated at ${n}`);
      }
      for (let i = 0; i < s.length; i += i < 200 || i > s.length - 400 ? 2 : 17) {
        const b = s.slice();
        b[i]! ^= 0x10;
        const e = await attempt(b);
        if (e !== undefined) checkError(e, b.length, `byte ${i}`);
      }
    }
  }, 60_000);
});
