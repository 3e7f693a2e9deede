/**
 * VMDESCRIPTION (SPEC.md §1.6–1.7): the JSON QEMU writes after EOF that
 * describes every byte of every non-iterable (FULL) device section. With it a
 * reader that knows no device can split buffered device state into fields.
 *
 * Sizes in the JSON are the bytes QEMU wrote for a field (per element for an
 * `array_len` array). They include everything written inside a struct field,
 * nested subsection headers too; but a device's (or subsection's) own
 * subsection headers (0x05, cstr8 name, be32 version) are not described by
 * any field, so the splitter reads them from the bytes.
 */

import { ProtocolError } from '../errors.js';
import { SectionType } from './constants.js';
import { ByteCursor } from './cursor.js';

/** A field entry of the JSON. */
export interface VmdescField {
  name: string;
  type: string;
  /** Bytes per element (the whole field when there is no `array_len`). */
  size: number;
  /** Number of equal-sized elements (a "compressed" array). */
  array_len?: number;
  /** Element index of a non-compressible array (one entry per element). */
  index?: number;
  /** For `type: "struct"`: the element's description. */
  struct?: VmdescStruct;
  /** For `type: "tmp"` (VMSTATE_WITH_TMP): fields inline. */
  vmsd_name?: string;
  version?: number;
  fields?: VmdescField[];
  subsections?: VmdescStruct[];
}

/** A vmsd: a struct's description or a subsection. */
export interface VmdescStruct {
  vmsd_name: string;
  version: number;
  fields: VmdescField[];
  subsections?: VmdescStruct[];
}

/** A device entry of the JSON; old-style devices have `size` and one `data` buffer field. */
export interface VmdescDevice {
  name: string;
  instance_id: number;
  vmsd_name?: string;
  version?: number;
  /** Old-style (non-vmstate) devices only. */
  size?: number;
  fields: VmdescField[];
  subsections?: VmdescStruct[];
}

/** The whole VMDESCRIPTION. */
export interface Vmdesc {
  page_size: number;
  devices: VmdescDevice[];
}

/** A decoded scalar: integers as numbers (decimal strings beyond 2^53), bools, floats. */
export type VmScalar = number | string | boolean;

/** One decoded field. `offset` is the stream (or buffer) offset of its first byte. */
export interface DecodedField {
  name: string;
  type: string;
  offset: number;
  /** Total bytes of this field (all elements). */
  size: number;
  index?: number;
  /** Number of elements when the JSON gave `array_len`. */
  arrayLen?: number;
  /** A scalar field's value. */
  value?: VmScalar;
  /** A scalar array's values. */
  values?: VmScalar[];
  /** Raw bytes (buffers and unknown types) up to {@link MAX_HEX_BYTES}, as hex. */
  hex?: string;
  /** A buffer that holds NUL-padded printable ASCII (e.g. globalstate's runstate): the text. */
  text?: string;
  /** Struct / tmp: one entry per element (one for a non-array). */
  elements?: DecodedStruct[];
}

/** A decoded struct element or subsection. */
export interface DecodedStruct {
  /** vmsd name (set for subsections and structs). */
  name: string;
  version: number;
  /** Offset of the subsection header (subsections) or of the first field. */
  offset: number;
  fields: DecodedField[];
  subsections: DecodedStruct[];
}

/** The result of splitting one device section's payload. */
export interface DecodedDevice {
  fields: DecodedField[];
  subsections: DecodedStruct[];
  /** Payload bytes consumed (footer excluded). */
  consumed: number;
}

/** Buffers longer than this are reported by size only. */
export const MAX_HEX_BYTES = 64;

/** Buffers up to this size are checked for NUL-padded text. */
const MAX_TEXT_BYTES = 256;

/** The text of a NUL-padded printable ASCII buffer, else undefined. */
function asText(b: Uint8Array): string | undefined {
  let n = 0;
  while (n < b.length && b[n] !== 0) {
    if (b[n]! < 0x20 || b[n]! > 0x7e) return undefined;
    n++;
  }
  if (n === 0) return undefined;
  for (let i = n; i < b.length; i++) if (b[i] !== 0) return undefined;
  return Buffer.from(b.buffer, b.byteOffset, n).toString('latin1');
}

/** Deepest struct/subsection nesting we follow (QEMU's real maximum is far lower). */
const MAX_DEPTH = 32;

function bad(message: string, offset: number): ProtocolError {
  return new ProtocolError('vmdesc', message, offset);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function checkFields(v: unknown, where: string, offset: number, depth: number): VmdescField[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw bad(`${where}: "fields" is not an array`, offset);
  if (depth > MAX_DEPTH) throw bad(`${where}: nested too deeply`, offset);
  for (const f of v) {
    if (!isObj(f) || typeof f['name'] !== 'string' || typeof f['type'] !== 'string' || !isCount(f['size'])) {
      throw bad(`${where}: field without name/type/size: ${JSON.stringify(f).slice(0, 120)}`, offset);
    }
    const name = `${where}.${f['name']}`;
    if (f['array_len'] !== undefined && !isCount(f['array_len'])) throw bad(`${name}: bad array_len`, offset);
    if (f['struct'] !== undefined) f['struct'] = checkStruct(f['struct'], name, offset, depth + 1);
    if (f['fields'] !== undefined) checkFields(f['fields'], name, offset, depth + 1);
    if (f['subsections'] !== undefined) checkSubsections(f['subsections'], name, offset, depth + 1);
  }
  return v as VmdescField[];
}

function checkStruct(v: unknown, where: string, offset: number, depth: number): VmdescStruct {
  if (!isObj(v) || typeof v['vmsd_name'] !== 'string') throw bad(`${where}: struct without vmsd_name`, offset);
  if (!isCount(v['version'])) throw bad(`${where}: struct without version`, offset);
  v['fields'] = checkFields(v['fields'], where, offset, depth);
  if (v['subsections'] !== undefined) checkSubsections(v['subsections'], where, offset, depth + 1);
  return v as unknown as VmdescStruct;
}

function checkSubsections(v: unknown, where: string, offset: number, depth: number): void {
  if (!Array.isArray(v)) throw bad(`${where}: "subsections" is not an array`, offset);
  if (depth > MAX_DEPTH) throw bad(`${where}: nested too deeply`, offset);
  for (const s of v) checkStruct(s, where, offset, depth);
}

/**
 * Parse and shape-check the VMDESCRIPTION JSON. `offset` (the stream offset
 * of the JSON text) is used in error messages.
 */
export function parseVmdesc(json: string, offset = 0): Vmdesc {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (err) {
    throw bad(`invalid JSON: ${(err as Error).message}`, offset);
  }
  if (!isObj(v) || !Array.isArray(v['devices'])) throw bad('no "devices" array', offset);
  if (!isCount(v['page_size'])) throw bad('no "page_size"', offset);
  for (const d of v['devices']) {
    if (!isObj(d) || typeof d['name'] !== 'string' || !isCount(d['instance_id'])) {
      throw bad(`device without name/instance_id: ${JSON.stringify(d).slice(0, 120)}`, offset);
    }
    const where = `${d['name']}(${d['instance_id']})`;
    if (d['size'] !== undefined && !isCount(d['size'])) throw bad(`${where}: bad size`, offset);
    d['fields'] = checkFields(d['fields'], where, offset, 0);
    if (d['subsections'] !== undefined) checkSubsections(d['subsections'], where, offset, 1);
  }
  return v as unknown as Vmdesc;
}

/** Find a device's entry by (idstr, instance id). */
export function findVmdescDevice(desc: Vmdesc, idstr: string, instanceId: number): VmdescDevice | undefined {
  return desc.devices.find((d) => d.name === idstr && d.instance_id === instanceId);
}

/** Total payload bytes the JSON promises for a device (its subsection headers excluded). */
export function vmdescDescribedSize(dev: VmdescDevice): number {
  const sumFields = (fs: readonly VmdescField[]): number =>
    fs.reduce((n, f) => n + f.size * (f.array_len ?? 1), 0);
  const sumSubs = (ss: readonly VmdescStruct[] | undefined): number =>
    (ss ?? []).reduce((n, s) => n + sumFields(s.fields) + sumSubs(s.subsections), 0);
  return sumFields(dev.fields) + sumSubs(dev.subsections);
}

const SCALAR = /^(u?int|bool|timer|float)(8|16|32|64)?\b/;

function decodeScalar(c: ByteCursor, type: string, size: number): VmScalar | undefined {
  const m = SCALAR.exec(type);
  if (!m) return undefined;
  const kind = m[1]!;
  if (kind === 'bool') {
    if (size !== 1) return undefined;
    return c.u8(type) !== 0;
  }
  const bits = kind === 'timer' ? 64 : Number(m[2] ?? 0);
  if (bits / 8 !== size) return undefined;
  if (kind === 'float') {
    if (bits !== 64) return undefined;
    const v = c.bytes(8, type);
    return new DataView(v.buffer, v.byteOffset, 8).getFloat64(0);
  }
  const signed = kind === 'int' || kind === 'timer';
  switch (bits) {
    case 8: {
      const v = c.u8(type);
      return signed ? (v << 24) >> 24 : v;
    }
    case 16: {
      const v = c.be16(type);
      return signed ? (v << 16) >> 16 : v;
    }
    case 32: {
      const v = c.be32(type);
      return signed ? v | 0 : v;
    }
    case 64: {
      let v = c.be64(type);
      if (signed && v >= 1n << 63n) v -= 1n << 64n;
      return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
    }
    default:
      return undefined;
  }
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}

/** Decode one element of `f` occupying exactly `size` bytes. */
function decodeElement(c: ByteCursor, f: VmdescField, size: number, depth: number): { value?: VmScalar; hex?: string; struct?: DecodedStruct } {
  const start = c.pos;
  c.need(size, f.name);
  let out: { value?: VmScalar; hex?: string; struct?: DecodedStruct };
  if (f.type === 'struct' && f.struct) {
    const sub = new ByteCursor(c.buf, c.pos, c.base, c.pos + size);
    const s = decodeVmsd(sub, f.struct.vmsd_name, f.struct.version, f.struct.fields, f.struct.subsections, depth + 1);
    checkEnd(sub, f.name, size, start);
    out = { struct: s };
  } else if (f.fields) {
    const sub = new ByteCursor(c.buf, c.pos, c.base, c.pos + size);
    const s = decodeVmsd(sub, f.vmsd_name ?? f.name, f.version ?? 0, f.fields, f.subsections, depth + 1);
    checkEnd(sub, f.name, size, start);
    out = { struct: s };
  } else {
    const sub = new ByteCursor(c.buf, c.pos, c.base, c.pos + size);
    const value = decodeScalar(sub, f.type, size);
    out = value !== undefined ? { value } : size <= MAX_HEX_BYTES ? { hex: toHex(c.buf.subarray(start, start + size)) } : {};
  }
  c.pos = start + size;
  return out;
}

function checkEnd(sub: ByteCursor, name: string, size: number, start: number): void {
  if (sub.pos !== sub.end) {
    throw sub.error('vmdesc', `field '${name}': described as ${size} bytes but its parts take ${sub.pos - start}`, sub.pos);
  }
}

function decodeField(c: ByteCursor, f: VmdescField, depth: number): DecodedField {
  const offset = c.offset;
  const n = f.array_len ?? 1;
  const total = f.size * n;
  c.need(total, f.name);
  const d: DecodedField = { name: f.name, type: f.type, offset, size: total };
  if (f.index !== undefined) d.index = f.index;
  if (f.array_len !== undefined) d.arrayLen = n;
  const isStruct = (f.type === 'struct' && f.struct !== undefined) || f.fields !== undefined;
  if (isStruct) {
    d.elements = [];
    for (let i = 0; i < n; i++) d.elements.push(decodeElement(c, f, f.size, depth).struct!);
  } else if (f.array_len === undefined) {
    const at = c.pos;
    const e = decodeElement(c, f, f.size, depth);
    if (e.value !== undefined) d.value = e.value;
    if (e.hex !== undefined) d.hex = e.hex;
    if (e.value === undefined && f.size <= MAX_TEXT_BYTES) {
      const text = asText(c.buf.subarray(at, at + f.size));
      if (text !== undefined) d.text = text;
    }
  } else {
    const first = c.pos;
    const values: VmScalar[] = [];
    for (let i = 0; i < n; i++) {
      const e = decodeElement(c, f, f.size, depth);
      if (e.value === undefined) break;
      values.push(e.value);
    }
    if (values.length === n) d.values = values;
    else if (total <= MAX_HEX_BYTES) d.hex = toHex(c.buf.subarray(first, first + total));
    c.pos = first + total;
  }
  return d;
}

function decodeVmsd(
  c: ByteCursor,
  name: string,
  version: number,
  fields: readonly VmdescField[],
  subsections: readonly VmdescStruct[] | undefined,
  depth: number,
  headerOffset = c.offset,
): DecodedStruct {
  if (depth > MAX_DEPTH) throw c.error('vmdesc', `${name}: nested too deeply`);
  const out: DecodedStruct = { name, version, offset: headerOffset, fields: [], subsections: [] };
  for (const f of fields) out.fields.push(decodeField(c, f, depth));
  for (const s of subsections ?? []) {
    const at = c.pos;
    const type = c.u8('subsection');
    if (type !== SectionType.SUBSECTION) {
      throw c.error('vmdesc', `expected subsection '${s.vmsd_name}' (0x05), got 0x${type.toString(16).padStart(2, '0')}`, at);
    }
    const nAt = c.pos;
    const got = c.cstr8('subsection name');
    if (got !== s.vmsd_name) throw c.error('vmdesc', `subsection '${got}' where the description has '${s.vmsd_name}'`, nAt);
    const vAt = c.pos;
    const v = c.be32('subsection version');
    if (v !== s.version) throw c.error('vmdesc', `subsection '${got}' version ${v}, described as ${s.version}`, vAt);
    out.subsections.push(decodeVmsd(c, s.vmsd_name, s.version, s.fields, s.subsections, depth + 1, c.base + at));
  }
  return out;
}

/** Options of {@link splitDeviceState}. */
export interface SplitOptions {
  /** Stream offset of `bytes[0]` (default 0), for error offsets and field offsets. */
  base?: number;
  /**
   * If set, the payload must be followed by a footer (0x7E + be32) carrying
   * this section id; otherwise the payload must end exactly at the end of `bytes`.
   */
  footerSectionId?: number;
  /** Name of the section for messages (default: the device's name). */
  idstr?: string;
}

/**
 * Split one device section's payload (bytes after the FULL section header)
 * into fields, following the device's vmdesc entry. Throws ProtocolError
 * (with the stream offset) when the bytes and the description disagree:
 * a missing or misnamed subsection header, a struct whose parts do not add
 * up, bytes left over, or a missing/mismatched footer.
 */
export function splitDeviceState(dev: VmdescDevice, bytes: Uint8Array, opts: SplitOptions = {}): DecodedDevice {
  const base = opts.base ?? 0;
  const idstr = opts.idstr ?? dev.name;
  const c = new ByteCursor(bytes, 0, base);
  let fields: DecodedField[];
  let subsections: DecodedStruct[];
  try {
    if (dev.size !== undefined && dev.vmsd_name === undefined) {
      // Old-style handler: opaque bytes, described by one buffer field.
      const described = dev.fields.reduce((n, f) => n + f.size * (f.array_len ?? 1), 0);
      if (described !== dev.size) throw c.error('vmdesc', `${idstr}: size ${dev.size} but fields add up to ${described}`);
    }
    const s = decodeVmsd(c, dev.vmsd_name ?? dev.name, dev.version ?? 0, dev.fields, dev.subsections, 0);
    fields = s.fields;
    subsections = s.subsections;
  } catch (err) {
    if (err instanceof ProtocolError && err.what !== 'vmdesc') {
      // Ran out of bytes inside the description: say so in vmdesc terms.
      throw new ProtocolError('vmdesc', `${idstr}: section payload shorter than its description (${err.message})`, err.offset);
    }
    throw err;
  }
  const consumed = c.pos;
  if (opts.footerSectionId !== undefined) {
    const at = c.pos;
    if (c.remaining < 5 || c.u8() !== SectionType.FOOTER) {
      throw c.error('vmdesc', `${idstr}: no section footer after the ${consumed} described bytes`, at);
    }
    const id = c.be32();
    if (id !== opts.footerSectionId) {
      throw c.error('vmdesc', `${idstr}: footer after the described bytes carries section id ${id}, expected ${opts.footerSectionId}`, at);
    }
  } else if (c.remaining !== 0) {
    throw c.error('vmdesc', `${idstr}: ${c.remaining} byte(s) left over after the described fields`);
  }
  return { fields, subsections, consumed };
}
