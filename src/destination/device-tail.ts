/**
 * The end of an incoming stream that carries device state we keep opaque
 * (an adopting destination, SPEC §1.6–1.7): reading the VMDESCRIPTION after
 * EOF, and buffering everything from the first unknown FULL section to the
 * end of the vmdesc so that device-split.ts can cut it into sections.
 */
import { Readable } from 'node:stream';
import { ProtocolError } from '../errors.js';
import { GLOBALSTATE_IDSTR, GLOBALSTATE_RUNSTATE_LEN, SectionType } from '../wire/constants.js';
import { ChannelReader } from '../engine/bytes.js';
import { findTail, splitSections, type ReceivedSection } from './device-split.js';

/** What the stream's device-state tail held. */
export interface DeviceTail {
  /** The VMDESCRIPTION JSON text, when the stream had one. */
  vmdesc: string | undefined;
  /** QEMU's warnings for a missing or unexpected vmdesc. */
  warnings: string[];
}

/** Reads the VMDESCRIPTION that follows EOF, if any (QEMU only warns when it is missing). */
export async function readVmdesc(r: ChannelReader): Promise<DeviceTail> {
  if (r.available === 0 && !(await r.more())) return { vmdesc: undefined, warnings: ['Expected vmdescription section, but got 0'] };
  const t = r.u8();
  if (t !== SectionType.VMDESCRIPTION) return { vmdesc: undefined, warnings: [`Expected vmdescription section, but got ${t}`] };
  await r.need(4, 'vmdesc length');
  const len = r.be32();
  await r.need(len, 'vmdesc');
  return { vmdesc: Buffer.from(r.take(len)).toString('utf8'), warnings: [] };
}

/**
 * Buffers from `header` (the first unknown FULL section's header, already
 * read) to the end of the vmdesc. Returns the device-section region (up to,
 * not including, EOF) and the vmdesc; `at` is the header's stream offset.
 */
export async function readOpaqueTail(r: ChannelReader, header: Uint8Array, at: number): Promise<DeviceTail & { region: Uint8Array }> {
  const parts: Uint8Array[] = [header];
  let size = header.length;
  for (;;) {
    if (r.available > 0) {
      const c = r.drainBuffered();
      parts.push(c);
      size += c.length;
      const data = concat(parts, size);
      parts.length = 0;
      parts.push(data);
      const tail = findTail(data);
      if (tail) return { region: data.subarray(0, tail.eofAt), vmdesc: tail.vmdesc, warnings: [] };
    }
    if (!(await r.more())) break;
  }
  // Stream ended without a vmdesc: the last byte must be EOF.
  const data = concat(parts, size);
  if (data[data.length - 1] !== SectionType.EOF) throw new ProtocolError('device state', 'stream ended inside the device sections', at + data.length);
  return { region: data.subarray(0, data.length - 1), vmdesc: undefined, warnings: ['Expected vmdescription section, but got 0'] };
}

/** Device sections split from `region`, and the run state when globalstate is among them. */
export function splitDevices(
  region: Uint8Array,
  at: number,
  expected?: { name: string; instance_id: number }[],
): { devices: ReceivedSection[]; globalState: Uint8Array | undefined } {
  const devices: ReceivedSection[] = [];
  let globalState: Uint8Array | undefined;
  for (const s of splitSections(region, at, expected)) {
    if (s.idstr === GLOBALSTATE_IDSTR && s.instanceId === 0 && s.payload.length === 4 + GLOBALSTATE_RUNSTATE_LEN) globalState = s.payload;
    else devices.push(s);
  }
  return { devices, globalState };
}

/** A reader over bytes already in memory (a package blob). */
export function readerOf(bytes: Uint8Array): ChannelReader {
  return new ChannelReader(Readable.from([Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]));
}

/** `parts` as one array of `size` bytes (the part itself when there is one). */
export function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** The bytes of a FULL section header, rebuilt (the opaque region starts with it). */
export function sectionHeaderBytes(id: number, idstr: string, instanceId: number, versionId: number): Uint8Array {
  const name = Buffer.from(idstr, 'latin1');
  const b = new Uint8Array(14 + name.length);
  const dv = new DataView(b.buffer);
  b[0] = SectionType.FULL;
  dv.setUint32(1, id);
  b[5] = name.length;
  b.set(name, 6);
  dv.setUint32(6 + name.length, instanceId);
  dv.setUint32(10 + name.length, versionId);
  return b;
}
