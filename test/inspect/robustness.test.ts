/**
 * Malformed input never crashes, hangs or allocates without bound, part 1:
 * every truncation of a real QEMU capture fails with a TruncatedError/
 * ProtocolError at a plausible offset (part 2, byte flips and synthetic
 * streams: robustness-flips.test.ts).
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { ProtocolError } from '../../src/errors.js';
import { inspectStream } from '../../src/inspect/inspect.js';

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

describe('inspect robustness', () => {
  it('fails on every truncation of the capture with an offset inside the bytes it had', async () => {
    const memBefore = process.memoryUsage().arrayBuffers;
    const full = await inspectStream(once(fixture));
    // Cut right after EOF: a stream without VMDESCRIPTION, which QEMU accepts too.
    const afterEof = full.deviceRegion!.end + 1;
    let truncated = 0;
    for (let n = 0; n < fixture.length; n++) {
      const e = await attempt(fixture.subarray(0, n));
      if (n === afterEof) {
        expect(e).toBeUndefined();
        truncated++;
        continue;
      }
      checkError(e, n, `truncated at ${n}`);
      if ((e as ProtocolError).code === 'TRUNCATED') truncated++;
    }
    // Nearly all cuts are reported as truncation (a cut inside device bytes may look malformed first).
    expect(truncated).toBeGreaterThan(fixture.length * 0.95);
    expect(process.memoryUsage().arrayBuffers - memBefore).toBeLessThan(256 << 20);
  }, 60_000);

});
