/**
 * Device sections (FULL) are not length-prefixed (SPEC.md §1.6). Inspect
 * buffers them (they are small) and splits them afterwards: with the
 * stream's own VMDESCRIPTION when there is one, field by field; otherwise by
 * finding a footer followed by something that parses as the next item.
 */

import { ProtocolError, TruncatedError } from '../errors.js';
import { MigCmd, SectionType } from '../wire/constants.js';
import { ByteCursor } from '../wire/cursor.js';
import { decodeSection } from '../wire/stream.js';
import { type Vmdesc, findVmdescDevice, parseVmdesc, splitDeviceState } from '../wire/vmdesc.js';
import { commandRecord } from './commands.js';
import type { InspectCommand, InspectDevice, InspectSection } from './types.js';

/** Where the VMDESCRIPTION sits at the end of a buffered tail. */
export interface TailVmdesc {
  /** Index of the 0x06 byte; the EOF byte is at index - 1. */
  at: number;
  json: string;
}

/**
 * Find `00 06 be32(L) {…L bytes…}` ending exactly at the end of `bytes`
 * (the EOF byte and the VMDESCRIPTION, which QEMU writes last).
 */
export function findTailVmdesc(bytes: Uint8Array): TailVmdesc | undefined {
  const n = bytes.length;
  for (let p = n - 6; p >= 1; p--) {
    if (bytes[p] !== SectionType.VMDESCRIPTION || bytes[p - 1] !== SectionType.EOF) continue;
    if (bytes[p + 5] !== 0x7b /* { */) continue;
    const len = ((bytes[p + 1]! << 24) | (bytes[p + 2]! << 16) | (bytes[p + 3]! << 8) | bytes[p + 4]!) >>> 0;
    if (p + 5 + len !== n) continue;
    return { at: p, json: Buffer.from(bytes.buffer, bytes.byteOffset + p + 5, len).toString('utf8') };
  }
  return undefined;
}

function isPrintable(b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (b[i]! < 0x20 || b[i]! > 0x7e) return false;
  return true;
}

/** Could an item start at `k`, given the items end at `end`? */
function plausibleNext(b: Uint8Array, k: number, end: number): boolean {
  if (k === end) return true;
  const t = b[k];
  if (t === SectionType.EOF) return true;
  if (t === SectionType.FULL || t === SectionType.START) {
    if (k + 6 > end) return false;
    const len = b[k + 5]!;
    return len > 0 && k + 6 + len + 8 <= end && isPrintable(b, k + 6, k + 6 + len);
  }
  if (t === SectionType.COMMAND) {
    if (k + 5 > end) return false;
    const cmd = (b[k + 1]! << 8) | b[k + 2]!;
    return cmd > MigCmd.INVALID && cmd < MigCmd.MAX;
  }
  return false;
}

/** The payload length of a section without description: up to the first plausible footer. */
function footerScan(b: Uint8Array, from: number, end: number, sectionId: number): number | undefined {
  const i0 = (sectionId >>> 24) & 0xff;
  const i1 = (sectionId >>> 16) & 0xff;
  const i2 = (sectionId >>> 8) & 0xff;
  const i3 = sectionId & 0xff;
  for (let j = from; j + 5 <= end; j++) {
    if (b[j] !== SectionType.FOOTER || b[j + 1] !== i0 || b[j + 2] !== i1 || b[j + 3] !== i2 || b[j + 4] !== i3) continue;
    if (plausibleNext(b, j + 5, end)) return j - from;
  }
  return undefined;
}

/** Items found in a buffered run of device sections. */
export interface DeviceItems {
  devices: InspectDevice[];
  sections: InspectSection[];
  commands: InspectCommand[];
  /** How the run ended. */
  ended: 'eof' | 'run' | 'end';
  /** Index just past the last item parsed. */
  pos: number;
  warnings: string[];
}

/** Options of {@link parseDeviceItems}. */
export interface DeviceItemsOptions {
  /** Stream offset of `bytes[0]`. */
  base: number;
  /** Items end here (index in `bytes`); default bytes.length. */
  end?: number;
  vmdesc?: Vmdesc | undefined;
  /** Items come from a PACKAGED blob: stop after POSTCOPY_RUN; mark items. */
  packaged?: boolean;
  /** Called for each command (e.g. to switch the RAM decoder to postcopy on LISTEN). */
  onCommand?: (cmd: InspectCommand) => void;
}

/**
 * Parse FULL sections and commands in `bytes[0..end)` until EOF, until
 * POSTCOPY_RUN (packaged), or until the end. Throws ProtocolError on bytes
 * that match neither the grammar nor the description.
 */
export function parseDeviceItems(bytes: Uint8Array, opts: DeviceItemsOptions): DeviceItems {
  const end = opts.end ?? bytes.length;
  const c = new ByteCursor(bytes, 0, opts.base, end);
  const out: DeviceItems = { devices: [], sections: [], commands: [], ended: 'end', pos: 0, warnings: [] };
  const packaged = opts.packaged ? { packaged: true as const } : {};
  while (c.remaining > 0) {
    const at = c.pos;
    const type = c.peekU8('section type');
    if (type === SectionType.VMDESCRIPTION) {
      throw c.error('section', `Unknown savevm section type ${type}`, at);
    }
    const s = decodeSection(c);
    if (s.kind === 'eof') {
      out.sections.push({ offset: c.base + at, length: 1, kind: 'eof', ...packaged });
      out.ended = 'eof';
      break;
    }
    if (s.kind === 'command') {
      const cmd = { ...commandRecord(s.command, c.base + at), ...packaged };
      out.commands.push(cmd);
      out.sections.push({ offset: c.base + at, length: c.pos - at, kind: 'command', command: cmd.name, ...packaged });
      opts.onCommand?.(cmd);
      if (s.command.kind === 'packaged') {
        throw c.error('command', 'nested PACKAGED command', at);
      }
      if (s.command.kind === 'postcopyRun' && opts.packaged) {
        out.ended = 'run';
        break;
      }
      continue;
    }
    if (s.kind !== 'full') {
      const what = s.kind === 'vmdesc' ? 'VMDESCRIPTION' : `section ${s.kind.toUpperCase()} ${s.sectionId}`;
      throw c.error('section', `${what} after device sections (only FULL sections and commands expected here)`, at);
    }
    const payload = c.pos;
    const dev = opts.vmdesc ? findVmdescDevice(opts.vmdesc, s.idstr, s.instanceId) : undefined;
    const d: InspectDevice = {
      idstr: s.idstr,
      instanceId: s.instanceId,
      versionId: s.versionId,
      sectionId: s.sectionId,
      offset: c.base + at,
      size: 0,
      split: dev ? 'vmdesc' : 'footer-scan',
      ...packaged,
    };
    if (dev) {
      if (dev.version !== undefined && dev.version !== s.versionId) {
        throw c.error('vmdesc', `${s.idstr}: section version ${s.versionId}, described as ${dev.version}`, at);
      }
      const r = splitDeviceState(dev, bytes.subarray(payload, end), {
        base: c.base + payload,
        footerSectionId: s.sectionId,
        idstr: s.idstr,
      });
      d.size = r.consumed;
      if (dev.vmsd_name !== undefined) d.vmsdName = dev.vmsd_name;
      d.fields = r.fields;
      d.subsections = r.subsections;
    } else {
      if (opts.vmdesc) out.warnings.push(`device ${s.idstr} (${s.instanceId}) is not in the VMDESCRIPTION`);
      const len = footerScan(bytes, payload, end, s.sectionId);
      if (len === undefined) {
        throw new TruncatedError(`device section ${s.idstr}: no section footer found`, 1, c.base + end);
      }
      d.size = len;
    }
    c.pos = payload + d.size + 5;
    out.devices.push(d);
    out.sections.push({
      offset: d.offset,
      length: c.pos - at,
      kind: 'full',
      sectionId: s.sectionId,
      idstr: s.idstr,
      instanceId: s.instanceId,
      versionId: s.versionId,
      ...packaged,
    });
  }
  out.pos = c.pos;
  return out;
}

/**
 * Split the buffered tail of a precopy stream (from its first FULL section
 * to the end of the stream): devices, EOF, and the VMDESCRIPTION.
 */
export function parseDeviceTail(
  bytes: Uint8Array,
  base: number,
  onCommand?: (cmd: InspectCommand) => void,
  fallback?: Vmdesc,
): DeviceItems & { vmdesc: { offset: number; length: number; desc: Vmdesc } | null; eofOffset: number | null } {
  const tail = findTailVmdesc(bytes);
  let desc: Vmdesc | undefined;
  if (tail) desc = parseVmdesc(tail.json, base + tail.at + 5);
  const end = tail ? tail.at : bytes.length;
  const items = parseDeviceItems(bytes, { base, end, vmdesc: desc ?? fallback, onCommand });
  let eofOffset: number | null = null;
  if (items.ended === 'eof') {
    eofOffset = base + items.pos - 1;
    if (tail && items.pos !== tail.at) {
      throw new ProtocolError('section', `${tail.at - items.pos} unexpected byte(s) between EOF and the VMDESCRIPTION`, base + items.pos);
    }
  } else if (tail) {
    throw new ProtocolError('section', 'device sections run into the VMDESCRIPTION without an EOF', base + items.pos);
  }
  const vmdesc = tail && desc ? { offset: base + tail.at, length: bytes.length - tail.at, desc } : null;
  if (vmdesc) {
    items.sections.push({ offset: vmdesc.offset, length: vmdesc.length, kind: 'vmdesc' });
  } else if (items.ended === 'eof') {
    // Whatever follows EOF: nothing (QEMU only warns), or a broken VMDESCRIPTION.
    const rest = bytes.length - items.pos;
    if (rest === 0) {
      items.warnings.push('Expected vmdescription section, but got 0 (no VMDESCRIPTION after EOF)');
    } else {
      const c = new ByteCursor(bytes, items.pos, base);
      const t = c.peekU8();
      if (t !== SectionType.VMDESCRIPTION) {
        items.warnings.push(`Expected vmdescription section, but got ${t}; ${rest} byte(s) after EOF ignored`);
      } else {
        const s = decodeSection(c); // throws TruncatedError if it is cut short
        if (s.kind === 'vmdesc') parseVmdesc(s.json, base + items.pos + 5);
        throw c.error('vmdesc', `${bytes.length - c.pos} unexpected byte(s) after the VMDESCRIPTION`);
      }
    }
  } else {
    throw new TruncatedError('stream: EOF', 1, base + bytes.length);
  }
  return { ...items, vmdesc, eofOffset };
}

/**
 * The VMDESCRIPTION of a precopy capture (to split a postcopy stream of the
 * same machine): `bytes` is the capture's tail (or all of it), or the JSON.
 */
export function vmdescFromCapture(bytes: Uint8Array): Vmdesc {
  if (bytes[0] === 0x7b /* { */) return parseVmdesc(Buffer.from(bytes).toString('utf8'));
  const tail = findTailVmdesc(bytes);
  if (!tail) throw new ProtocolError('vmdesc', 'no VMDESCRIPTION at the end of the capture', bytes.length);
  return parseVmdesc(tail.json, tail.at + 5);
}
