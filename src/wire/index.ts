/** The pure wire codecs of QEMU 7.2's migration protocol (SPEC.md §1–§5). */

export * from './constants.js';
export { ByteCursor, bytesToString } from './cursor.js';
export {
  ByteWriter,
  StreamWriter,
  type StreamWriterOptions,
  type WireSink,
  be64Parts,
  encodeToBytes,
  stringToBytes,
} from './writer.js';
export { StreamReader, type StreamReaderOptions } from './reader.js';
export {
  type Configuration,
  type Section,
  type SectionStartHeader,
  checkMachineName,
  decodeConfigurationBody,
  decodeFooter,
  decodeHeader,
  decodeSection,
  decodeStreamStart,
  encodeConfiguration,
  encodeFooter,
  encodeHeader,
  encodeSection,
} from './stream.js';
export {
  type Command,
  type DiscardRange,
  type PostcopyAdviseRam,
  commandId,
  decodeCommand,
  decodeCommandBody,
  encodeCommand,
  encodeDiscards,
} from './command.js';
export {
  type RamBlockInfo,
  type RamDecoderOptions,
  type RamRecord,
  type RamSetupOptions,
  RamRecordDecoder,
  RamRecordEncoder,
  checkRamOffset,
  encodeRamRecord,
} from './ram.js';
export {
  type PageRequestCheck,
  type PageRequestContext,
  type RpMessage,
  decodeRecvBitmapData,
  decodeRpMessage,
  encodeRecvBitmapData,
  encodeRpMessage,
  recvBitmapSize,
  validatePageRequest,
} from './return-path.js';
export { decodeGlobalState, encodeGlobalState } from './globalstate.js';
