/**
 * Locating, compiling and typing the AssemblyScript module (build/hotpath.wasm).
 * Internal to src/hotpath/.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The raw exports of build/hotpath.wasm (offsets are byte offsets in memory). */
export interface HotpathExports {
  version(): number;
  heapBase(): number;
  xbzrleEncodeSimd(oldPtr: number, newPtr: number, slen: number, dst: number, dlen: number): number;
  xbzrleEncodeScalar(oldPtr: number, newPtr: number, slen: number, dst: number, dlen: number): number;
  xbzrleDecode(src: number, slen: number, dst: number, dlen: number): number;
  decodeErrorPos(): number;
  ulebEncodeSmall(dst: number, v: number): number;
  ulebDecodeSmall(src: number, out: number): number;
  isZeroSimd(ptr: number, len: number): number;
  isZeroScalar(ptr: number, len: number): number;
  bitmapSyncClear(log: number, bm: number, nwords: number): number;
  bitmapFindNext(bm: number, nbits: number, from: number): number;
  bitmapFindNextZero(bm: number, nbits: number, from: number): number;
  bitmapCollect(bm: number, nbits: number, from: number, out: number, max: number): number;
  bitmapCollectScalar(bm: number, nbits: number, from: number, out: number, max: number): number;
  bitmapCount(bm: number, start: number, end: number): number;
  bitmapFillRange(bm: number, start: number, end: number, value: number): void;
  bitmapComplementRange(src: number, dst: number, start: number, end: number): void;
  bitmapCopyMasked(src: number, dst: number, nbits: number): void;
}

/** ABI version the TypeScript side was written for (assembly/index.ts version()). */
export const HOTPATH_ABI_VERSION = 2;

/** 64 KiB: the WebAssembly page size. */
export const WASM_PAGE = 65536;
/** The module declares a maximum of 65536 pages (4 GiB, wasm32). */
export const WASM_MAX_PAGES = 65536;

/** Walks up from this file to the directory whose package.json is named "postcopy". */
export function findPackageRoot(start: string = dirname(fileURLToPath(import.meta.url))): string {
  let dir = start;
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        const name = (JSON.parse(readFileSync(pj, 'utf8')) as { name?: unknown }).name;
        if (name === 'postcopy') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`postcopy package root not found above ${start}`);
    dir = parent;
  }
}

let cachedModule: WebAssembly.Module | undefined;

/** The compiled hot-path module (compiled once per thread, synchronously). */
export function hotpathModule(): WebAssembly.Module {
  if (!cachedModule) {
    const file = join(findPackageRoot(), 'build', 'hotpath.wasm');
    if (!existsSync(file)) throw new Error(`${file} is missing: run "npm run build:wasm"`);
    cachedModule = new WebAssembly.Module(readFileSync(file));
  }
  return cachedModule;
}

/** Instantiates the module on `memory` (which must be shared, max ≤ 65536 pages). */
export function instantiate(memory: WebAssembly.Memory): HotpathExports {
  const instance = new WebAssembly.Instance(hotpathModule(), { env: { memory } });
  const ex = instance.exports as unknown as HotpathExports;
  if (ex.version() !== HOTPATH_ABI_VERSION) {
    throw new Error(`build/hotpath.wasm ABI ${ex.version()} != ${HOTPATH_ABI_VERSION}: rebuild with "npm run build:wasm"`);
  }
  return ex;
}
