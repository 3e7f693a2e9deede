/** Decoding whole migration streams for humans and tools (`postcopy inspect`). */
export { inspectStream, type InspectOptions } from './inspect.js';
export { formatInspect, type FormatOptions } from './format.js';
export { RamImage } from './ram-image.js';
export { vmdescFromCapture } from './devices.js';
export type * from './types.js';
