/**
 * PageOps in plain TypeScript: the engines' adapter over hot path's
 * reference implementation (src/hotpath/reference.ts, the oracle the WASM
 * module is tested against). Used when no Hotpath is given.
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { isZeroPageRef, xbzrleDecodeRef, xbzrleEncodeRef } from '../hotpath/reference.js';
import type { PageOps } from './ports.js';

const TP = TARGET_PAGE_SIZE;

/** PageOps over the reference code, allocating ordinary ArrayBuffers. */
export const jsPageOps: PageOps = {
  isZeroPage: (page, off) => isZeroPageRef(page.subarray(off, off + TP)),
  xbzrleEncode: (old, oldOff, cur, curOff, out) =>
    xbzrleEncodeRef(old.subarray(oldOff, oldOff + TP), cur.subarray(curOff, curOff + TP), out, Math.min(out.length, TP)),
  xbzrleDecode: (src, dst, dstOff) => {
    const r = xbzrleDecodeRef(src, dst.subarray(dstOff, dstOff + TP)).result;
    return r < 0 ? -1 : r;
  },
  alloc: (bytes: number) => new Uint8Array(bytes),
};
