/** The WebAssembly hot path: Hotpath (layout + typed calls) and the convenience API. */
export { Hotpath, XBZRLE_DECODE_ERRORS, type HotpathOptions } from './hotpath.js';
export { xbzrleEncode, xbzrleDecode, isZeroPage } from './api.js';
export type { HotpathExports } from './wasm.js';
