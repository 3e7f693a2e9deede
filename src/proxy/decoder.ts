/**
 * Live decoders for the two directions of a migration connection (SPEC.md
 * §1–§5, §7.2): the main stream (source → destination) and the return path
 * (destination → source). They turn bytes into {@link ProxyItem}s — item
 * kind, stream offsets and small fields, never page payloads.
 */

import { ProtocolError, TruncatedError } from '../errors.js';
import { parseDeviceTail, findTailVmdesc } from '../inspect/devices.js';
import { splitPackage } from './package.js';
import type { InspectSection } from '../inspect/types.js';
import { type Command } from '../wire/command.js';
import {
  MIG_CMD_NAMES,
  QEMU_VM_FILE_MAGIC,
  RAM_SECTION_IDSTR,
  RECV_BITMAP_ENDING,
  RP_MSG_NAMES,
  RpMsg,
  SectionType,
} from '../wire/constants.js';
import type { ByteCursor } from '../wire/cursor.js';
import { commandId } from '../wire/command.js';
import { type RamRecord, RamRecordDecoder } from '../wire/ram.js';
import { StreamReader } from '../wire/reader.js';
import { decodeRpMessage, type RpMessage } from '../wire/return-path.js';
import { decodeConfigurationBody, decodeFooter, decodeSection, decodeStreamStart } from '../wire/stream.js';

/** Which channel direction an item was seen on. */
export type ProxyDirection = 'main' | 'rp';

/** Plain, msgpack-friendly field values of an item. */
export type ProxyFieldValue = string | number | boolean | null | ProxyFieldValue[] | { [k: string]: ProxyFieldValue };

/**
 * One decoded item. `kind` is QEMU's name: main stream `HEADER`,
 * `CONFIGURATION`, `START`/`PART`/`END`/`FULL` (sections), `EOF`,
 * `VMDESCRIPTION`, MIG_CMD names (`OPEN_RETURN_PATH`, `PING`,
 * `POSTCOPY_ADVISE`, `POSTCOPY_RAM_DISCARD`, `PACKAGED`, `POSTCOPY_LISTEN`,
 * `POSTCOPY_RUN`, `POSTCOPY_RESUME`, `RECV_BITMAP`, `ENABLE_COLO`), RAM records
 * (`MEM_SIZE`, `ZERO`, `PAGE`, `XBZRLE`, `COMPRESS_PAGE`, `EOS`; on a
 * postcopy-preempt connection `PAGE`, `ZERO`, `EOS` with `preempt: true`); return path
 * `SHUT`, `PONG`, `REQ_PAGES_ID`, `REQ_PAGES`, `RECV_BITMAP`,
 * `RECV_BITMAP_DATA` (the out-of-band bitmap), `RESUME_ACK`.
 */
export interface ProxyItem {
  dir: ProxyDirection;
  kind: string;
  /** Stream offset (in this connection's direction) of the item's first byte. */
  at: number;
  /** Stream offset one past the item (for a section: past its header). */
  end: number;
  /** Decoded fields (no page payloads). `packaged: true` inside a PACKAGED blob. */
  fields: Record<string, ProxyFieldValue>;
}

/** State that survives from one connection to the next (the recovery channel continues the stream). */
export class ProxySession {
  /** RAM record decoder: its postcopy mode and last block carry over. */
  readonly ram = new RamRecordDecoder();
  /** Live sections by section id. */
  readonly sections = new Map<number, string>();
  /** RAM block sizes from the setup record (for RECV_BITMAP sizes). */
  readonly blocks = new Map<string, number>();

  /** Back to the state of a fresh migration. */
  reset(): void {
    this.ram.reset();
    this.ram.postcopy = false;
    this.ram.setup = {};
    this.sections.clear();
    this.blocks.clear();
  }
}

/** Callback receiving each decoded item. */
export type ItemSink = (item: ProxyItem) => void;

const MAGIC_FIRST_BYTE = QEMU_VM_FILE_MAGIC >>> 24;
/** Device state in precopy is buffered until its VMDESCRIPTION; refuse more than this. */
const MAX_DEVICE_TAIL = 64 << 20;
/** Largest PACKAGED blob the decoder buffers. */
const MAX_PACKAGED = 256 << 20;
/** Largest RECV_BITMAP bitmap accepted (bytes; 4 TiB of RAM). */
const MAX_BITMAP = 128 << 20;

function ramItem(r: RamRecord): { kind: string; fields: Record<string, ProxyFieldValue> } {
  switch (r.kind) {
    case 'memSize':
      return {
        kind: 'MEM_SIZE',
        fields: { total: r.total, blocks: r.blocks.map((b) => ({ idstr: b.idstr, usedLength: b.usedLength })) },
      };
    case 'eos':
      return { kind: 'EOS', fields: {} };
    case 'zero':
      return { kind: 'ZERO', fields: { block: r.block, offset: r.offset, continued: r.continued, fill: r.fill } };
    case 'page':
      return { kind: 'PAGE', fields: { block: r.block, offset: r.offset, continued: r.continued } };
    case 'xbzrle':
      return { kind: 'XBZRLE', fields: { block: r.block, offset: r.offset, continued: r.continued, len: r.data.length } };
    case 'compressed':
      return { kind: 'COMPRESS_PAGE', fields: { block: r.block, offset: r.offset, continued: r.continued, len: r.data.length } };
  }
}

/** A command's fields as plain values. */
function commandFields(cmd: Command): Record<string, ProxyFieldValue> {
  const { kind: _k, ...rest } = cmd;
  return JSON.parse(JSON.stringify(rest)) as Record<string, ProxyFieldValue>;
}

function sectionItem(s: InspectSection, packaged: boolean): ProxyItem {
  const kind = s.kind === 'command' ? s.command! : s.kind === 'vmdesc' ? 'VMDESCRIPTION' : s.kind.toUpperCase();
  const fields: Record<string, ProxyFieldValue> = {};
  if (s.kind === 'full') {
    fields['sectionId'] = s.sectionId!;
    fields['idstr'] = s.idstr!;
    fields['instanceId'] = s.instanceId!;
    fields['versionId'] = s.versionId!;
  }
  if (packaged) fields['packaged'] = true;
  return { dir: 'main', kind, at: s.offset, end: s.offset + s.length, fields };
}

/**
 * Decode the main stream of one connection. A connection that does not start
 * with the "QEVM" magic is a 7.2 recovery channel (no header, no
 * configuration). Resolves when the stream ends; rejects with a
 * ProtocolError on bytes it cannot decode (the caller logs it and stops).
 */
export async function decodeMainStream(
  source: AsyncIterable<Uint8Array>,
  session: ProxySession,
  emit: ItemSink,
  /** Called with the stream offset up to which every byte has been decoded (after section footers). */
  progress?: (offset: number) => void,
): Promise<void> {
  const reader = new StreamReader(source);
  const ram = session.ram;
  const decode = <T>(fn: (c: ByteCursor) => T): T | Promise<T> => {
    const v = reader.tryDecode(fn);
    return v !== undefined ? v : reader.decode(fn);
  };
  const first = await reader.peekU8();
  if (first === undefined) return;
  // A main stream starts with the magic, a recovery channel with a command; a first byte of 0 is
  // the top of a RAM record's offset word: a postcopy-preempt channel (SPEC §6.5).
  if (first === 0) return decodePreemptChannel(reader, emit, progress);
  if (first === MAGIC_FIRST_BYTE) {
    // A stream with a header is a new migration: forget what earlier connections set up.
    session.reset();
    const start = await reader.decode((c) => decodeStreamStart(c, { expectConfiguration: false }));
    emit({ dir: 'main', kind: 'HEADER', at: 0, end: reader.offset, fields: { version: start.version } });
    if ((await reader.peekU8()) === SectionType.CONFIGURATION) {
      const at = reader.offset;
      const cfg = await reader.decode((c) => {
        c.u8();
        return decodeConfigurationBody(c);
      });
      const fields: Record<string, ProxyFieldValue> = { machineName: cfg.machineName };
      if (cfg.capabilities) fields['capabilities'] = cfg.capabilities;
      emit({ dir: 'main', kind: 'CONFIGURATION', at, end: reader.offset, fields });
      ram.setup = { hasGpa: cfg.capabilities?.includes('x-ignore-shared') ?? false };
    }
  }

  const ramDecode = (c: ByteCursor): RamRecord => ram.decode(c);
  const onCommand = (cmd: Command): void => {
    if (cmd.kind === 'postcopyListen') ram.postcopy = true;
    if (cmd.kind === 'postcopyResume') ram.reset();
  };

  for (;;) {
    const at = reader.offset;
    const type = await reader.peekU8();
    if (type === undefined) return;
    if (type === SectionType.FULL) {
      await deviceTail(reader, emit);
      return;
    }
    const s = await decode(decodeSection);
    if (s.kind === 'eof') {
      emit({ dir: 'main', kind: 'EOF', at, end: reader.offset, fields: {} });
      continue;
    }
    if (s.kind === 'vmdesc') {
      emit({ dir: 'main', kind: 'VMDESCRIPTION', at, end: reader.offset, fields: { length: s.json.length } });
      continue;
    }
    if (s.kind === 'command') {
      const name = MIG_CMD_NAMES[commandId(s.command)] ?? s.command.kind;
      emit({ dir: 'main', kind: name, at, end: reader.offset, fields: commandFields(s.command) });
      onCommand(s.command);
      if (s.command.kind === 'packaged') {
        const len = s.command.length;
        if (len > MAX_PACKAGED) throw new ProtocolError('MIG_CMD PACKAGED', `package of ${len} bytes exceeds the proxy's limit`, at);
        const blobAt = reader.offset;
        const blob = await reader.read(len, 'PACKAGED blob');
        const items = splitPackage(blob, blobAt);
        for (const it of items) {
          if (it.kind === 'POSTCOPY_LISTEN') ram.postcopy = true;
          emit(it);
        }
      }
      continue;
    }
    if (s.kind === 'start') {
      if (s.idstr !== RAM_SECTION_IDSTR) {
        throw new ProtocolError('section', `cannot decode live section '${s.idstr}' (the proxy knows only "ram")`, at);
      }
      session.sections.set(s.sectionId, s.idstr);
    }
    const idstr = session.sections.get(s.sectionId);
    if (idstr === undefined) throw new ProtocolError('section', `Unknown savevm section ${s.sectionId}`, at);
    const fields: Record<string, ProxyFieldValue> = { sectionId: s.sectionId, idstr };
    if (s.kind === 'start') Object.assign(fields, { instanceId: s.instanceId, versionId: s.versionId });
    emit({ dir: 'main', kind: s.kind.toUpperCase(), at, end: reader.offset, fields });
    for (;;) {
      const rAt = reader.offset;
      // Buffered records decode synchronously: no await (and no microtask) per record.
      let rec = reader.tryDecode(ramDecode);
      if (rec === undefined) rec = await reader.decode(ramDecode);
      const { kind, fields: f } = ramItem(rec);
      emit({ dir: 'main', kind, at: rAt, end: reader.offset, fields: f });
      if (rec.kind === 'memSize') for (const b of rec.blocks) session.blocks.set(b.idstr, b.usedLength);
      if (rec.kind === 'eos') break;
    }
    await decode((c) => (decodeFooter(c, s.sectionId, idstr), true));
    progress?.(reader.offset);
  }
}

/**
 * A postcopy-preempt channel: raw PAGE/ZERO records (the CONTINUE rule of
 * this channel alone) until one EOS. Items carry `preempt: true`.
 */
async function decodePreemptChannel(reader: StreamReader, emit: ItemSink, progress?: (offset: number) => void): Promise<void> {
  const ram = new RamRecordDecoder({ postcopy: true });
  const ramDecode = (c: ByteCursor): RamRecord => ram.decode(c);
  for (;;) {
    if (await reader.atEnd()) return;
    const at = reader.offset;
    let rec = reader.tryDecode(ramDecode);
    if (rec === undefined) rec = await reader.decode(ramDecode);
    if (rec.kind !== 'page' && rec.kind !== 'zero' && rec.kind !== 'eos') {
      throw new ProtocolError('preempt channel', `a ${rec.kind} record on the preempt channel`, at);
    }
    const { kind, fields } = ramItem(rec);
    emit({ dir: 'main', kind, at, end: reader.offset, fields: { ...fields, preempt: true } });
    progress?.(reader.offset);
    if (rec.kind === 'eos') return;
  }
}

/** Precopy device sections: buffer to the VMDESCRIPTION (or the end) and split them. */
async function deviceTail(reader: StreamReader, emit: ItemSink): Promise<void> {
  const base = reader.offset;
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const ended = await reader.atEnd();
    if (!ended) {
      const n = reader.buffered;
      parts.push(reader.readSync(n));
      total += n;
      if (total > MAX_DEVICE_TAIL) throw new ProtocolError('device state', `more than ${MAX_DEVICE_TAIL} bytes of device sections`, base);
      const last = parts[parts.length - 1]!;
      if (last[last.length - 1] !== 0x7d /* } */) continue;
    }
    const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts, total);
    if (!ended && !findTailVmdesc(bytes)) continue;
    const r = parseDeviceTail(bytes, base);
    for (const sec of r.sections) emit(sectionItem(sec, false));
    // Anything after the VMDESCRIPTION is not part of the protocol: drain it.
    if (!ended) await reader.discardRest();
    return;
  }
}

/** Decode the out-of-band bitmap after an RP RECV_BITMAP: be64 S, S bytes, be64 end mark. */
function decodeBitmapData(c: ByteCursor, blockName: string): { size: number; setBits: number } {
  const at = c.pos;
  const size = c.be64n('bitmap size');
  if (size > MAX_BITMAP) throw c.error('RECV_BITMAP', `ramblock '${blockName}' bitmap of ${size} bytes is implausible`, at);
  const bitmap = c.bytes(size, 'bitmap');
  const eAt = c.pos;
  const mark = c.be64('bitmap end mark');
  if (mark !== RECV_BITMAP_ENDING) {
    throw c.error('RECV_BITMAP', `ramblock '${blockName}' end mark incorrect: 0x${mark.toString(16)}`, eAt);
  }
  let setBits = 0;
  for (let i = 0; i < bitmap.length; i++) {
    let v = bitmap[i]!;
    while (v) {
      v &= v - 1;
      setBits++;
    }
  }
  return { size, setBits };
}

function rpFields(m: RpMessage): Record<string, ProxyFieldValue> {
  const { kind: _k, ...rest } = m;
  return rest as Record<string, ProxyFieldValue>;
}

const RP_KIND: Record<RpMessage['kind'], string> = {
  shut: RP_MSG_NAMES[RpMsg.SHUT]!,
  pong: RP_MSG_NAMES[RpMsg.PONG]!,
  reqPagesId: RP_MSG_NAMES[RpMsg.REQ_PAGES_ID]!,
  reqPages: RP_MSG_NAMES[RpMsg.REQ_PAGES]!,
  recvBitmap: RP_MSG_NAMES[RpMsg.RECV_BITMAP]!,
  resumeAck: RP_MSG_NAMES[RpMsg.RESUME_ACK]!,
};

/**
 * Decode the return path of one connection: framed messages with the
 * source's checks, and the bitmap after each RECV_BITMAP (`RECV_BITMAP_DATA`
 * with its size and number of set bits = pages received).
 */
export async function decodeReturnPath(source: AsyncIterable<Uint8Array>, emit: ItemSink): Promise<void> {
  const reader = new StreamReader(source);
  for (;;) {
    if (await reader.atEnd()) return;
    const at = reader.offset;
    const m = await reader.decode(decodeRpMessage);
    emit({ dir: 'rp', kind: RP_KIND[m.kind], at, end: reader.offset, fields: rpFields(m) });
    if (m.kind === 'recvBitmap') {
      const dAt = reader.offset;
      const d = await reader.decode((c) => decodeBitmapData(c, m.blockName));
      emit({ dir: 'rp', kind: 'RECV_BITMAP_DATA', at: dAt, end: reader.offset, fields: { blockName: m.blockName, ...d } });
    }
  }
}

/** True for errors that mean "the bytes ended mid-item" (a cut), not "bad bytes". */
export function isTruncation(e: unknown): e is TruncatedError {
  return e instanceof TruncatedError;
}
