/**
 * postcopy: QEMU's live-migration protocol in TypeScript.
 * This module is the public API; everything exported here is documented.
 */
export * from './errors.js';
export * as constants from './wire/constants.js';
/** WebAssembly hot path: XBZRLE (QEMU-exact), zero-page test, shared-memory layout. */
export { Hotpath, xbzrleEncode, xbzrleDecode, isZeroPage, type HotpathOptions } from './hotpath/index.js';
/** Decode a whole migration stream (what `postcopy inspect` prints). */
export * from './inspect/index.js';
/** QMP client for driving QEMU (or our own QMP server). */
export { QmpClient, type QmpEvent, type QmpGreeting, type QmpTarget, type QmpConnectOptions, type QmpExecuteOptions } from './control/qmp-client.js';
/** VMDESCRIPTION parsing and device-state splitting. */
export { parseVmdesc, splitDeviceState, findVmdescDevice, type Vmdesc, type VmdescDevice, type DecodedDevice, type DecodedField } from './wire/vmdesc.js';
/** Guest RAM blocks, dirty log and page bitmaps in the shared hot-path memory. */
export { GuestMemory, RamBlock, RamAddressError, PageBitmap, DirtyLog } from './memory/index.js';
export type { GuestMemoryDescriptor, RamBlockInfo, BitRun } from './memory/index.js';
/** Transparent huge pages for RAM of your own (GuestMemory and the default destination allocator already advise theirs). */
export { adviseHugePages, hugePagesAvailable, HUGE_PAGE_SIZE, type HugePageAdvice } from './memory/index.js';
/** The decoding drill proxy with fault injection (`postcopy proxy`). */
export { FaultProxy, type FaultProxyOptions, type FaultProxyEvents, type ProxyCut, type ProxyStats, type ConnState } from './proxy/proxy.js';
export { type ProxyItem, type ProxyDirection, type ProxyFieldValue } from './proxy/decoder.js';
export { type CutRule, type CutMode, type CutTrigger, parseCutOn, ITEM_KINDS } from './proxy/cut.js';
export { type ProxyRecord, readRecordFile, decodeRecords, formatRecords } from './proxy/record.js';
export { qemuRamTransferred } from './proxy/stats.js';
/** The precopy engine: outgoing and incoming migration state machines and their ports. */
export { MigrationSource, type MigrateOptions, type SourceOptions, type SwitchoverEvent } from './source/source.js';
export { DEFAULT_CAPABILITIES as SOURCE_DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS as SOURCE_DEFAULT_PARAMETERS, type SourceCapabilities, type SourceParameters, KEEPALIVE_INTERVAL_MS, KEEPALIVE_TIMEOUT_MS, RECOVERY_TIMEOUT_MS } from './source/options.js';
export { MigrationDestination, encodeGlobalState, parseGlobalState, type DestinationOptions } from './destination/destination.js';
export { type ReceivedSection } from './destination/device-split.js';
/** The destination's fault API (ensure/read/isReceived, faults()) and its records. */
export { type FaultRecord, type FaultMode } from './destination/faults.js';
export { DEST_KEEPALIVE_TIMEOUT_MS, type FaultLatencyInfo, type DestinationMigrationInfo } from './destination/options.js';
export { POSTCOPY_STATES, type PostcopyState } from './destination/postcopy.js';
export type { SourceGuest, EngineRamBlock, PageOps, DeviceSection, PageBits } from './engine/ports.js';
export { hotpathPageOps } from './engine/hotpath-ops.js';
export { jsPageOps } from './engine/page-ops-js.js';
export { sourceGuestFromMemory, engineBlocks, type GuestControl } from './engine/memory-guest.js';
/** Control plane: capabilities and parameters with QEMU's rules and texts, statuses, events, MigrationInfo, QMP server. */
export * from './control/index.js';
/** Transports: migration URIs, channels with shutdown, listeners, in-memory channel pair. */
export * from './transport/index.js';
/**
 * Wire codecs (pure: bytes in, typed records out, and back) as one namespace:
 * `wire.encodeSection`, `wire.decodeRpMessage`, `wire.StreamReader`, ... — for
 * conformance tests that build or check streams byte by byte.
 */
export * as wire from './wire/index.js';
