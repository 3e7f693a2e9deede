/**
 * Convenience API over plain Uint8Arrays (exported from the package root).
 * Inputs are copied into a module-private scratch area of a private Hotpath;
 * this is for tests, tools and conformance code, not the fast path.
 */
import { ProtocolError } from '../errors.js';
import { XBZRLE_ULEB_MAX } from '../wire/constants.js';
import { Hotpath, XBZRLE_DECODE_ERRORS } from './hotpath.js';

let hp: Hotpath | undefined;
let scratchOff = 0;
let scratchSize = 0;

/** Scratch region of at least `size` bytes in the private hot path. */
function scratch(size: number): { hp: Hotpath; off: number } {
  if (!hp) hp = Hotpath.create({ initialBytes: 1 << 20, maximumBytes: 1 << 30 });
  if (size > scratchSize) {
    scratchSize = Math.max(size, 4 * 16384);
    scratchOff = hp.alloc(scratchSize, 64);
  }
  return { hp, off: scratchOff };
}

function checkPageLength(n: number): void {
  if (n <= 0 || n > XBZRLE_ULEB_MAX + 1) {
    throw new RangeError(`XBZRLE page length ${n} is outside 1..${XBZRLE_ULEB_MAX + 1}`);
  }
}

/**
 * XBZRLE-encodes `newPage` against `oldPage` (same length, normally 4096)
 * exactly as QEMU 7.2 does. Returns the encoding (empty if the pages are
 * equal) or null if it would not fit in one page (QEMU's overflow, -1).
 */
export function xbzrleEncode(oldPage: Uint8Array, newPage: Uint8Array): Uint8Array | null {
  const n = newPage.length;
  checkPageLength(n);
  if (oldPage.length !== n) throw new RangeError(`XBZRLE pages differ in length (${oldPage.length} vs ${n})`);
  const { hp, off } = scratch(3 * n);
  const mem = hp.bytes();
  mem.set(oldPage, off);
  mem.set(newPage, off + n);
  const len = hp.xbzrleEncodeAt(off, off + n, off + 2 * n, n, n);
  if (len < 0) return null;
  return mem.slice(off + 2 * n, off + 2 * n + len);
}

/**
 * Applies an XBZRLE encoding to `page` in place (QEMU's decoder rules, SPEC
 * §4.2). Returns the end of the last changed run. Throws ProtocolError on
 * malformed input (offset = position in `encoded`); `page` may then be
 * partially updated but is never written past its end.
 */
export function xbzrleDecode(encoded: Uint8Array, page: Uint8Array): number {
  const n = page.length;
  checkPageLength(n);
  const { hp, off } = scratch(n + encoded.length);
  const mem = hp.bytes();
  mem.set(page, off);
  mem.set(encoded, off + n);
  const r = hp.xbzrleDecodeAt(off + n, encoded.length, off, n);
  page.set(mem.subarray(off, off + n));
  if (r < 0) {
    throw new ProtocolError(
      'XBZRLE',
      `Failed to load XBZRLE page - decode error! (${XBZRLE_DECODE_ERRORS[r] ?? `code ${r}`})`,
      hp.lastDecodeErrorPos(),
    );
  }
  return r;
}

/** True if every byte of `page` is zero (any length). */
export function isZeroPage(page: Uint8Array): boolean {
  const { hp, off } = scratch(page.length);
  hp.bytes().set(page, off);
  return hp.isZeroPageAt(off, page.length);
}
