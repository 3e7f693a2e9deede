/**
 * Plain TypeScript page operations: the reference used when the WASM hot
 * path is not available and by tests as an independent oracle. Encoding
 * follows SPEC §4.1 exactly (maximal alternating runs, 14-bit ULEB128,
 * QEMU's overflow rule).
 */
import { TARGET_PAGE_SIZE, XBZRLE_ULEB_MAX } from '../wire/constants.js';
import type { PageOps } from './ports.js';

const TP = TARGET_PAGE_SIZE;

function putUleb(out: Uint8Array, d: number, v: number): number {
  if (v < 0x80) {
    out[d] = v;
    return d + 1;
  }
  out[d] = (v & 0x7f) | 0x80;
  out[d + 1] = v >>> 7;
  return d + 2;
}

const ZERO_PAGE = Buffer.alloc(TP);

/** isZeroPage in plain JS: memcmp against a zero page (Buffer.compare). */
export function isZeroPageJs(page: Uint8Array, off: number): boolean {
  return Buffer.compare(ZERO_PAGE, page.subarray(off, off + TP)) === 0;
}

/** XBZRLE encode (SPEC §4.1), output limited to `out.length` (normally 4096). */
export function xbzrleEncodeJs(
  old: Uint8Array,
  oldOff: number,
  cur: Uint8Array,
  curOff: number,
  out: Uint8Array,
): number {
  const dlen = Math.min(out.length, TP);
  let i = 0;
  let d = 0;
  while (i < TP) {
    if (d + 2 > dlen) return -1;
    let z = 0;
    while (i < TP && old[oldOff + i] === cur[curOff + i]) {
      i++;
      z++;
    }
    if (i === TP) return d; // trailing equal run not encoded
    d = putUleb(out, d, z);
    if (d + 2 > dlen) return -1;
    const s = i;
    while (i < TP && old[oldOff + i] !== cur[curOff + i]) i++;
    const nz = i - s;
    d = putUleb(out, d, nz);
    if (d + nz > dlen) return -1;
    out.set(cur.subarray(curOff + s, curOff + i), d);
    d += nz;
  }
  return d;
}

/** XBZRLE decode in place (SPEC §4.2); -1 on any error. */
export function xbzrleDecodeJs(src: Uint8Array, dst: Uint8Array, dstOff: number): number {
  const slen = src.length;
  let i = 0;
  let d = 0;
  while (i < slen) {
    if (slen - i < 2) return -1;
    const tupleStart = i;
    let z = src[i++]!;
    if (z & 0x80) {
      const b = src[i++]!;
      if (b & 0x80) return -1;
      z = (z & 0x7f) | (b << 7);
    }
    if (z === 0 && tupleStart > 0) return -1;
    d += z;
    if (d > TP) return -1;
    if (slen - i < 2) return -1;
    let nz = src[i++]!;
    if (nz & 0x80) {
      const b = src[i++]!;
      if (b & 0x80) return -1;
      nz = (nz & 0x7f) | (b << 7);
    }
    if (nz === 0 || nz > XBZRLE_ULEB_MAX) return -1;
    if (d + nz > TP || i + nz > slen) return -1;
    dst.set(src.subarray(i, i + nz), dstOff + d);
    i += nz;
    d += nz;
  }
  return d;
}

/** PageOps in plain JS, allocating with ordinary ArrayBuffers. */
export const jsPageOps: PageOps = {
  isZeroPage: isZeroPageJs,
  xbzrleEncode: xbzrleEncodeJs,
  xbzrleDecode: xbzrleDecodeJs,
  alloc: (bytes: number) => new Uint8Array(bytes),
};
