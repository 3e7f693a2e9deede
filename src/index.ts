/**
 * postcopy: QEMU's live-migration protocol in TypeScript.
 * This module is the public API; everything exported here is documented.
 */
export * from './errors.js';
export * as constants from './wire/constants.js';
/** WebAssembly hot path: XBZRLE (QEMU-exact), zero-page test, shared-memory layout. */
export { Hotpath, xbzrleEncode, xbzrleDecode, isZeroPage, type HotpathOptions } from './hotpath/index.js';
