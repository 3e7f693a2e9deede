// postcopy hot path: XBZRLE, zero-page test, dirty bitmaps. The memory is
// imported and shared; the TypeScript side (src/hotpath/) owns its layout and
// passes byte offsets. No allocation happens in this module.

export {
  xbzrleEncodeSimd,
  xbzrleEncodeScalar,
  xbzrleDecode,
  decodeErrorPos,
  ulebEncodeSmall,
  ulebDecodeSmall,
} from './xbzrle';
export { isZeroSimd, isZeroScalar } from './zero';
export {
  bitmapSyncClear,
  bitmapFindNext,
  bitmapFindNextZero,
  bitmapCollect,
  bitmapCollectScalar,
  bitmapCount,
  bitmapFillRange,
  bitmapComplementRange,
  bitmapCopyMasked,
} from './bitmap';

/** ABI version of this module; bump when an export changes. */
export function version(): i32 {
  return 2;
}

/** First byte above the module's static data: the TS allocator starts here. */
export function heapBase(): usize {
  return __heap_base;
}
