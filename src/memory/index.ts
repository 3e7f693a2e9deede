/** Guest RAM blocks, dirty log and page bitmaps in the hot path's shared memory. */
export { GuestMemory, type GuestMemoryDescriptor } from './guest-memory.js';
export { RamBlock, RamAddressError, type RamBlockInfo } from './ram-block.js';
export { PageBitmap, type BitRun } from './page-bitmap.js';
export { DirtyLog } from './dirty-log.js';
export { adviseHugePages, hugePagesAvailable, HUGE_PAGE_SIZE, type HugePageAdvice } from './huge-pages.js';
