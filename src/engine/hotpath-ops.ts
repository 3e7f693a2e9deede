/**
 * PageOps over the WebAssembly hot path (src/hotpath). Pages that already
 * live in the hot path's shared memory are processed in place; pages in
 * other memory are staged through scratch pages first (correct, slower).
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import type { Hotpath } from '../hotpath/index.js';
import { isZeroPageRef } from '../hotpath/reference.js';
import type { PageOps } from './ports.js';

const TP = TARGET_PAGE_SIZE;

/** PageOps backed by `hp`; `alloc` hands out views of its shared memory. */
export function hotpathPageOps(hp: Hotpath): PageOps {
  const known = new Set<ArrayBufferLike>([hp.memory.buffer]);
  const stage = hp.alloc(4 * TP);
  const stageOld = stage;
  const stageCur = stage + TP;
  const stageOut = stage + 2 * TP;
  const stageSrc = stage + 3 * TP;
  const inWasm = (u: Uint8Array): boolean => known.has(u.buffer) || (u.buffer === hp.memory.buffer && (known.add(u.buffer), true));
  const mem = (): Uint8Array => hp.bytes();
  const place = (u: Uint8Array, off: number, at: number, n: number): number => {
    if (inWasm(u)) return u.byteOffset + off;
    mem().set(u.subarray(off, off + n), at);
    return at;
  };
  return {
    isZeroPage(page, off) {
      if (inWasm(page)) return hp.isZeroPageAt(page.byteOffset + off);
      return isZeroPageRef(page.subarray(off, off + TP));
    },
    xbzrleEncode(old, oldOff, cur, curOff, out) {
      const o = place(old, oldOff, stageOld, TP);
      const c = place(cur, curOff, stageCur, TP);
      const direct = inWasm(out);
      const dlen = Math.min(out.length, TP);
      const len = hp.xbzrleEncodeAt(o, c, direct ? out.byteOffset : stageOut, TP, dlen);
      if (!direct && len > 0) out.set(mem().subarray(stageOut, stageOut + len));
      return len;
    },
    xbzrleDecode(src, dst, dstOff) {
      const s = place(src, 0, stageSrc, src.length);
      if (inWasm(dst)) {
        const r = hp.xbzrleDecodeAt(s, src.length, dst.byteOffset + dstOff, TP);
        return r < 0 ? -1 : r;
      }
      const m = mem();
      m.set(dst.subarray(dstOff, dstOff + TP), stageCur);
      const r = hp.xbzrleDecodeAt(s, src.length, stageCur, TP);
      if (r < 0) return -1;
      dst.set(hp.bytes().subarray(stageCur, stageCur + TP), dstOff);
      return r;
    },
    alloc(bytes) {
      const off = hp.alloc(bytes);
      const buf = hp.memory.buffer;
      known.add(buf);
      return new Uint8Array(buf, off, bytes);
    },
  };
}
