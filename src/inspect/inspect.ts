/**
 * inspectStream: decode a whole migration stream (as QEMU writes it with
 * `migrate "exec:cat > FILE"`) into an {@link InspectResult}. RAM is streamed
 * record by record through the wire decoders and rebuilt into plain Buffers;
 * device sections (small) are buffered and split with the stream's own
 * VMDESCRIPTION; a PACKAGED blob (postcopy) is parsed with the nested grammar.
 */

import { inflateSync } from 'node:zlib';
import { ProtocolError, TruncatedError } from '../errors.js';
import { xbzrleDecode } from '../hotpath/api.js';
import { RAM_SECTION_IDSTR, RAM_SECTION_VERSION, SectionType, TARGET_PAGE_SIZE } from '../wire/constants.js';
import type { ByteCursor } from '../wire/cursor.js';
import { type RamRecord, RamRecordDecoder, checkRamOffset } from '../wire/ram.js';
import { StreamReader } from '../wire/reader.js';
import { type Vmdesc, parseVmdesc } from '../wire/vmdesc.js';
import { decodeFooter, decodeSection, decodeStreamStart } from '../wire/stream.js';
import { commandRecord } from './commands.js';
import { parseDeviceItems, parseDeviceTail } from './devices.js';
import { RamImage } from './ram-image.js';
import type { InspectCommand, InspectPageCounts, InspectResult, InspectSection } from './types.js';

/** Options of {@link inspectStream}. */
export interface InspectOptions {
  /** Keep decoded fields of device sections (default true). */
  fields?: boolean;
  /** Refuse RAM layouts whose total exceeds this (default 64 GiB). */
  maxRamBytes?: number;
  /** Refuse device state (first FULL section to end of stream) above this (default 64 MiB). */
  maxDeviceBytes?: number;
  /** Refuse PACKAGED blobs above this (default 256 MiB). */
  maxPackagedBytes?: number;
  /**
   * A VMDESCRIPTION to split device sections that have none of their own:
   * postcopy streams (devices inside PACKAGED) or streams without vmdesc.
   * Take it from a precopy capture of the same machine ({@link vmdescFromCapture}).
   */
  vmdesc?: Vmdesc;
  /** Stop early. */
  signal?: AbortSignal;
}

const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;
const X_IGNORE_SHARED = 'x-ignore-shared';

function counts(): InspectPageCounts {
  return { zero: 0, normal: 0, xbzrle: 0, compressed: 0 };
}

/**
 * Decode a migration stream. `source` is any async iterable of byte chunks
 * (a Node Readable such as fs.createReadStream works). Rejects with a
 * ProtocolError (TruncatedError when the stream is cut short) whose message
 * and offset say what is wrong and where.
 */
export async function inspectStream(source: AsyncIterable<Uint8Array>, opts: InspectOptions = {}): Promise<InspectResult> {
  const maxRam = opts.maxRamBytes ?? 64 * GiB;
  const maxDevice = opts.maxDeviceBytes ?? 64 * MiB;
  const maxPackaged = opts.maxPackagedBytes ?? 256 * MiB;
  const keepFields = opts.fields ?? true;
  const reader = new StreamReader(source);
  const result: InspectResult = {
    version: 0,
    configuration: null,
    ramBlocks: [],
    ramTotal: 0,
    pages: counts(),
    commands: [],
    sections: [],
    devices: [],
    packaged: [],
    eof: false,
    vmdesc: null,
    deviceRegion: null,
    totalBytes: 0,
    warnings: [],
  };
  const images = new Map<string, { image: RamImage; pages: InspectPageCounts }>();
  const live = new Map<number, { idstr: string; instanceId: number; versionId: number }>();
  const ram = new RamRecordDecoder();

  /** Decode synchronously when the bytes are buffered, else wait for them. `fn` must not return undefined. */
  const decode = <T>(fn: (c: ByteCursor) => T): T | Promise<T> => {
    const v = reader.tryDecode(fn);
    return v !== undefined ? v : reader.decode(fn);
  };

  const start = await reader.decode((c) => decodeStreamStart(c));
  result.version = start.version;
  if (start.configuration) {
    const cfg = start.configuration;
    result.configuration = { name: cfg.machineName };
    if (cfg.capabilities) result.configuration.capabilities = cfg.capabilities;
    if (cfg.uuid) result.configuration.uuid = Buffer.from(cfg.uuid).toString('hex');
    if (cfg.targetPageBits !== undefined) result.configuration.targetPageBits = cfg.targetPageBits;
    ram.setup = { hasGpa: cfg.capabilities?.includes(X_IGNORE_SHARED) ?? false };
  }

  const onCommand = (cmd: InspectCommand): void => {
    result.commands.push(cmd);
    if (cmd.name === 'POSTCOPY_LISTEN') ram.postcopy = true;
    if (cmd.name === 'POSTCOPY_ADVISE') {
      const adv = cmd.args['ram'] as { pageSizeSummary: number } | null;
      if (adv && adv.pageSizeSummary !== TARGET_PAGE_SIZE) {
        result.warnings.push(
          `POSTCOPY_ADVISE page size summary 0x${adv.pageSizeSummary.toString(16)}: huge-page blocks carry a page-size field inspect does not expect`,
        );
      }
    }
  };

  const ramDecode = (c: ByteCursor): RamRecord => ram.decode(c);

  /** Read one RAM section's records up to EOS, applying them. */
  const ramPayload = async (sec: InspectSection): Promise<void> => {
    const pages = counts();
    sec.pages = pages;
    for (let n = 0; ; n++) {
      if ((n & 0xfff) === 0 && opts.signal?.aborted) throw new ProtocolError('inspect', 'aborted', reader.offset);
      const at = reader.offset;
      // Synchronous when the record is buffered (the common case): no await per record.
      const rec: RamRecord = reader.tryDecode(ramDecode) ?? (await reader.decode(ramDecode));
      if (rec.kind === 'eos') return;
      if (rec.kind === 'memSize') {
        if (result.ramBlocks.length > 0) throw new ProtocolError('RAM setup', 'a second RAM setup record', at);
        if (rec.total > maxRam) {
          throw new ProtocolError('RAM setup', `RAM total 0x${rec.total.toString(16)} exceeds the inspect limit of ${maxRam} bytes`, at);
        }
        result.ramTotal = rec.total;
        for (const b of rec.blocks) {
          if (images.has(b.idstr)) throw new ProtocolError('RAM setup', `RAM block "${b.idstr}" listed twice`, at);
          const entry = { image: new RamImage(b.idstr, b.usedLength), pages: counts() };
          images.set(b.idstr, entry);
          result.ramBlocks.push({ idstr: b.idstr, usedLength: b.usedLength, ...pick(b), sha256: '', pages: entry.pages });
        }
        continue;
      }
      const blk = images.get(rec.block);
      if (!blk) throw new ProtocolError('RAM record', `Can't find block ${rec.block}`, at);
      const bad = checkRamOffset(rec.offset, blk.image.usedLength);
      if (bad) throw new ProtocolError('RAM record', `${bad} (block ${rec.block})`, at);
      switch (rec.kind) {
        case 'zero':
          blk.image.fill(rec.offset, rec.fill);
          pages.zero++;
          blk.pages.zero++;
          break;
        case 'page':
          blk.image.write(rec.offset, rec.data);
          pages.normal++;
          blk.pages.normal++;
          break;
        case 'xbzrle': {
          try {
            xbzrleDecode(rec.data, blk.image.page(rec.offset));
          } catch (err) {
            if (!(err instanceof ProtocolError)) throw err;
            const dataAt = reader.offset - rec.data.length;
            throw new ProtocolError('XBZRLE page', err.message.replace(/ \(at offset \d+\)$/, ''), dataAt + err.offset);
          }
          pages.xbzrle++;
          blk.pages.xbzrle++;
          break;
        }
        case 'compressed': {
          let page: Buffer;
          try {
            page = inflateSync(rec.data, { maxOutputLength: TARGET_PAGE_SIZE });
          } catch (err) {
            throw new ProtocolError('compressed page', `Failed to load compressed page: ${(err as Error).message}`, at);
          }
          if (page.length !== TARGET_PAGE_SIZE) {
            throw new ProtocolError('compressed page', `decompressed to ${page.length} bytes, expected ${TARGET_PAGE_SIZE}`, at);
          }
          blk.image.write(rec.offset, page);
          pages.compressed++;
          blk.pages.compressed++;
          break;
        }
      }
    }
  };

  const addPages = (p: InspectPageCounts | undefined): void => {
    if (!p) return;
    result.pages.zero += p.zero;
    result.pages.normal += p.normal;
    result.pages.xbzrle += p.xbzrle;
    result.pages.compressed += p.compressed;
  };

  /** Read all remaining bytes (the device tail), bounded by maxDevice. */
  const readRest = async (): Promise<Uint8Array> => {
    const parts: Uint8Array[] = [];
    let total = 0;
    while (!(await reader.atEnd())) {
      const n = reader.buffered;
      total += n;
      if (total > maxDevice) {
        throw new ProtocolError('device state', `more than ${maxDevice} bytes of device sections (inspect limit)`, reader.offset);
      }
      parts.push(reader.readSync(n));
    }
    return Buffer.concat(parts, total);
  };

  for (;;) {
    const at = reader.offset;
    const type = await reader.peekU8();
    if (type === undefined) throw new TruncatedError('stream: section type (no EOF)', 1, at);
    if (type === SectionType.FULL) {
      // Device sections up to EOF, then the VMDESCRIPTION: buffer and split.
      const tail = await readRest();
      const r = parseDeviceTail(tail, at, onCommand, opts.vmdesc);
      result.sections.push(...r.sections);
      result.devices.push(...r.devices);
      result.warnings.push(...r.warnings);
      result.eof = r.eofOffset !== null;
      result.deviceRegion = { start: at, end: r.eofOffset ?? at + tail.length };
      if (r.vmdesc) result.vmdesc = { offset: r.vmdesc.offset, length: r.vmdesc.length, devices: r.vmdesc.desc.devices.length };
      break;
    }
    if (type === SectionType.VMDESCRIPTION) {
      throw new ProtocolError('section', `Unknown savevm section type ${type}`, at);
    }
    const s = await decode(decodeSection);
    if (s.kind === 'eof') {
      result.sections.push({ offset: at, length: 1, kind: 'eof' });
      result.eof = true;
      result.deviceRegion = { start: at, end: at };
      await afterEof(reader, result, maxDevice);
      break;
    }
    if (s.kind === 'command') {
      const cmd = commandRecord(s.command, at);
      onCommand(cmd);
      result.sections.push({ offset: at, length: reader.offset - at, kind: 'command', command: cmd.name });
      if (s.command.kind === 'packaged') {
        const len = s.command.length;
        if (len > maxPackaged) {
          throw new ProtocolError('MIG_CMD PACKAGED', `package of ${len} bytes exceeds the inspect limit of ${maxPackaged}`, at);
        }
        const blobAt = reader.offset;
        const blob = await reader.read(len, 'PACKAGED blob');
        const items = parseDeviceItems(blob, { base: blobAt, packaged: true, onCommand, vmdesc: opts.vmdesc });
        if (items.ended !== 'run' && items.ended !== 'eof') {
          throw new ProtocolError('MIG_CMD PACKAGED', 'package ended without POSTCOPY_RUN or EOF', blobAt + len);
        }
        if (items.pos < len) result.warnings.push(`${len - items.pos} byte(s) after POSTCOPY_RUN in the package ignored`);
        result.packaged.push({ offset: at, length: len, items: items.sections.length });
        result.sections.push(...items.sections);
        result.devices.push(...items.devices);
        result.warnings.push(...items.warnings);
      }
      continue;
    }
    if (s.kind === 'start') {
      if (s.idstr !== RAM_SECTION_IDSTR) {
        throw new ProtocolError('section', `cannot decode live section '${s.idstr}' (inspect knows only "ram")`, at);
      }
      if (s.versionId !== RAM_SECTION_VERSION) {
        throw new ProtocolError('section', `ram: unsupported version ${s.versionId} (expected ${RAM_SECTION_VERSION})`, at);
      }
      if (live.has(s.sectionId)) throw new ProtocolError('section', `section id ${s.sectionId} started twice`, at);
      live.set(s.sectionId, { idstr: s.idstr, instanceId: s.instanceId, versionId: s.versionId });
    }
    if (s.kind === 'start' || s.kind === 'part' || s.kind === 'end') {
      const info = live.get(s.sectionId);
      if (!info) throw new ProtocolError('section', `Unknown savevm section ${s.sectionId}`, at);
      const sec: InspectSection = { offset: at, length: 0, kind: s.kind, sectionId: s.sectionId, idstr: info.idstr };
      if (s.kind === 'start') Object.assign(sec, { instanceId: s.instanceId, versionId: s.versionId });
      await ramPayload(sec);
      await decode((c) => (decodeFooter(c, s.sectionId, info.idstr), true));
      sec.length = reader.offset - at;
      addPages(sec.pages);
      result.sections.push(sec);
      continue;
    }
    throw new ProtocolError('section', `unexpected ${s.kind} item`, at);
  }

  for (const b of result.ramBlocks) b.sha256 = images.get(b.idstr)!.image.sha256();
  if (!keepFields) {
    for (const d of result.devices) {
      delete d.fields;
      delete d.subsections;
    }
  }
  result.totalBytes = reader.offset;
  return result;
}

/** After a top-level EOF: an optional VMDESCRIPTION, nothing else. */
async function afterEof(reader: StreamReader, result: InspectResult, maxLen: number): Promise<void> {
  if (await reader.atEnd()) {
    if (result.packaged.length === 0) result.warnings.push('Expected vmdescription section, but got 0 (no VMDESCRIPTION after EOF)');
    return;
  }
  const at = reader.offset;
  const t = await reader.peekU8();
  if (t !== SectionType.VMDESCRIPTION) {
    result.warnings.push(`Expected vmdescription section, but got ${t}; bytes after EOF ignored`);
    return;
  }
  const len = await reader.decode((c) => (c.u8(), c.be32('vmdesc length')));
  if (len > maxLen) throw new ProtocolError('vmdesc', `VMDESCRIPTION of ${len} bytes exceeds the inspect limit of ${maxLen}`, at + 1);
  const json = Buffer.from(await reader.read(len, 'vmdesc')).toString('utf8');
  const desc = parseVmdesc(json, at + 5);
  result.vmdesc = { offset: at, length: reader.offset - at, devices: desc.devices.length };
  result.sections.push({ offset: at, length: reader.offset - at, kind: 'vmdesc' });
  if (!(await reader.atEnd())) result.warnings.push('bytes after the VMDESCRIPTION ignored');
}

function pick(b: { pageSize?: number; gpa?: number }): { pageSize?: number; gpa?: number } {
  const o: { pageSize?: number; gpa?: number } = {};
  if (b.pageSize !== undefined) o.pageSize = b.pageSize;
  if (b.gpa !== undefined) o.gpa = b.gpa;
  return o;
}
