/**
 * MigrationDestination: the incoming precopy state machine (SPEC §1–§3).
 * none → active → completed | failed. Checks the header and configuration,
 * loads sections with footers, RAM, globalstate and (when adopting) opaque
 * device sections, answers commands, sends SHUT on the return path.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { PostcopyError, ProtocolError, TruncatedError } from '../errors.js';
import {
  GLOBALSTATE_IDSTR,
  GLOBALSTATE_RUNSTATE_LEN,
  GLOBALSTATE_VERSION,
  MIG_CMD_LEN,
  MIG_CMD_NAMES,
  MigCmd,
  POSTCOPY_ADVISE_LEN,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  QEMU_VM_FILE_VERSION_COMPAT,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  SectionType,
} from '../wire/constants.js';
import { ChannelReader } from '../engine/bytes.js';
import { StreamWriter } from '../wire/writer.js';
import { encodeRpMessage } from '../wire/return-path.js';
import type { EngineRamBlock, PageBits, PageOps } from '../engine/ports.js';
import { jsPageOps } from '../engine/page-ops-js.js';
import type { MigrationStatus, StatusPort } from '../engine/status.js';
import { StatusMachine } from '../control/status.js';
import type { Hotpath } from '../hotpath/index.js';
import { PageBitmap } from '../memory/index.js';
import { loadConfiguration, parseGlobalState } from './config.js';
import { findTail, splitSections, type ReceivedSection } from './device-split.js';
import { plainBlockAllocator, RamLoader, type BlockAllocator } from './ram-loader.js';

/** Construction options. */
export interface DestinationOptions {
  /** Local machine type name; the received one must be a prefix-equal match. Default "none". */
  machineName?: string;
  /** Local RAM blocks. */
  blocks?: readonly EngineRamBlock[];
  /** Adopt the source's RAM layout and keep unknown device sections opaque. */
  adopt?: boolean;
  /** Allocator for adopted blocks (default: plain zeroed memory). */
  allocBlock?: BlockAllocator;
  /** Start the VM after loading unless globalstate says otherwise (QEMU without -S). Default true. */
  autostart?: boolean;
  /** Local postcopy-ram capability (only checked against POSTCOPY_ADVISE). */
  postcopyRam?: boolean;
  pageOps?: PageOps;
  status?: StatusPort;
  /**
   * Received bitmaps as memory/ PageBitmaps in this hot path's memory (what
   * recovery's RECV_BITMAP needs); plain words otherwise.
   */
  hotpath?: Hotpath;
}

const hex = (v: number): string => v.toString(16);

/** The incoming side of one migration. Emits 'runstate' (name) after load. */
export class MigrationDestination extends EventEmitter {
  readonly statusPort: StatusPort;
  private readonly ram: RamLoader;
  private readonly opts: DestinationOptions;
  private rpWriter: StreamWriter | undefined;
  private errorDesc: string | undefined;
  /** Run state from the globalstate section, if one was received. */
  globalState: string | undefined;
  /** Run state after a completed load ("running", "paused", "prelaunch", ...). */
  runState = 'inmigrate';
  /** Device sections kept as opaque bytes (adopting destination). */
  readonly devices: ReceivedSection[] = [];
  /** The VMDESCRIPTION JSON text, when one arrived. */
  vmdesc: string | undefined;
  /** Warnings QEMU would print without failing. */
  readonly warnings: string[] = [];
  /** PING values answered, in order. */
  readonly pings: number[] = [];
  private fullSeen = 0;
  /** Received bitmaps as PageBitmaps (only with the `hotpath` option). */
  readonly receivedBitmaps = new Map<string, PageBitmap>();

  constructor(opts: DestinationOptions = {}) {
    super();
    this.opts = opts;
    this.statusPort = opts.status ?? new StatusMachine();
    const hp = opts.hotpath;
    this.ram = new RamLoader(
      opts.blocks ?? [],
      opts.pageOps ?? jsPageOps,
      opts.adopt ? (opts.allocBlock ?? plainBlockAllocator) : undefined,
      hp
        ? (pages, idstr) => {
            const bm = PageBitmap.create(hp, pages);
            this.receivedBitmaps.set(idstr, bm);
            return bm.words32();
          }
        : undefined,
    );
  }

  get status(): MigrationStatus {
    return this.statusPort.status;
  }
  /** RAM blocks (the adopted layout after setup when adopting). */
  get blocks(): readonly EngineRamBlock[] {
    return this.ram.blocks;
  }
  /** Received bitmap per block idstr. */
  get received(): ReadonlyMap<string, PageBits> {
    return this.ram.received;
  }
  /** Page records received by kind. */
  get pageCounts(): { zero: number; normal: number; xbzrle: number } {
    return { ...this.ram.counters };
  }

  /** query-migrate for the destination. */
  queryMigrate(): { status?: MigrationStatus; 'error-desc'?: string } {
    if (this.status === 'none') return {};
    if (this.status === 'failed') return { status: 'failed', 'error-desc': this.errorDesc ?? 'unknown error' };
    return { status: this.status };
  }

  /**
   * Loads a whole incoming migration from `channel`. Resolves with the final
   * status; a load error ends in `failed` with error-desc (QEMU's message).
   */
  async load(channel: Duplex, opts: { signal?: AbortSignal } = {}): Promise<MigrationStatus> {
    if (this.status !== 'none') throw new PostcopyError('STATE', 'incoming migration already started');
    this.statusPort.transition('none', 'active');
    const r = new ChannelReader(channel);
    const onAbort = (): void => void channel.destroy(new PostcopyError('CANCELLED', 'incoming migration aborted'));
    opts.signal?.addEventListener('abort', onAbort);
    if (opts.signal?.aborted) onAbort();
    try {
      await this.loadStream(r, channel);
      this.applyRunState();
      await this.sendShut(0);
      this.statusPort.transition('active', 'completed');
      channel.end();
    } catch (e) {
      this.errorDesc = describeError(e);
      this.error = e;
      await this.sendShut(1).catch(() => undefined);
      this.statusPort.transition('active', 'failed');
      channel.end();
      setTimeout(() => channel.destroy(), 1000).unref();
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    return this.status;
  }

  /** The error that failed the load, with its offset. */
  error: unknown;

  private async sendShut(value: number): Promise<void> {
    const w = this.rpWriter;
    if (!w) return;
    encodeRpMessage(w, { kind: 'shut', value });
    await w.flush();
  }

  private applyRunState(): void {
    const gs = this.globalState;
    if (gs === undefined || gs === 'running') this.runState = (this.opts.autostart ?? true) ? 'running' : 'paused';
    else this.runState = gs;
    this.emit('runstate', this.runState);
  }

  private async loadStream(r: ChannelReader, channel: Duplex): Promise<void> {
    await r.need(8, 'stream header');
    const magic = r.be32();
    if (magic !== QEMU_VM_FILE_MAGIC) throw new ProtocolError('stream header', 'Not a migration stream', 0);
    const version = r.be32();
    if (version === QEMU_VM_FILE_VERSION_COMPAT) throw new ProtocolError('stream header', "SaveVM v2 format is obsolete and don't work anymore", 4);
    if (version !== QEMU_VM_FILE_VERSION) throw new ProtocolError('stream header', 'Unsupported migration stream version', 4);
    await loadConfiguration(r, this.opts.machineName ?? 'none', this.warnings);
    const sections = new Map<number, string>();
    for (;;) {
      await r.need(1, 'section type');
      const at = r.offset;
      const type = r.u8();
      switch (type) {
        case SectionType.START:
        case SectionType.FULL: {
          await r.need(4, 'section id');
          const id = r.be32();
          const idstr = await r.cstr8('section idstr');
          await r.need(8, 'section header');
          const instanceId = r.be32();
          const versionId = r.be32();
          if (idstr === RAM_SECTION_IDSTR && instanceId === 0) {
            if (versionId > RAM_SECTION_VERSION) throw new ProtocolError('section', `savevm: unsupported version ${versionId} for 'ram' v${RAM_SECTION_VERSION}`, at);
            if (versionId !== RAM_SECTION_VERSION || type !== SectionType.START) throw new ProtocolError('section', "error while loading state for instance 0x0 of device 'ram'", at);
            sections.set(id, idstr);
            await this.ram.load(r);
          } else if (idstr === GLOBALSTATE_IDSTR && instanceId === 0 && type === SectionType.FULL) {
            if (versionId > GLOBALSTATE_VERSION) throw new ProtocolError('section', `savevm: unsupported version ${versionId} for '${idstr}' v${GLOBALSTATE_VERSION}`, at);
            await r.need(4 + GLOBALSTATE_RUNSTATE_LEN, 'globalstate');
            this.globalState = parseGlobalState(r.take(4 + GLOBALSTATE_RUNSTATE_LEN));
            this.fullSeen++;
          } else if (this.opts.adopt && type === SectionType.FULL) {
            const hdr = sectionHeaderBytes(id, idstr, instanceId, versionId);
            await this.loadOpaqueTail(r, hdr, at);
            return;
          } else {
            throw new ProtocolError(
              'section',
              `Unknown savevm section or instance '${idstr}' ${instanceId}. Make sure that your current VM setup matches your saved VM setup, including any hotplugged devices`,
              at,
            );
          }
          await this.checkFooter(r, id, idstr);
          break;
        }
        case SectionType.PART:
        case SectionType.END: {
          await r.need(4, 'section id');
          const id = r.be32();
          const idstr = sections.get(id);
          if (idstr === undefined) throw new ProtocolError('section', `Unknown savevm section ${id}`, at);
          await this.ram.load(r);
          await this.checkFooter(r, id, idstr);
          break;
        }
        case SectionType.COMMAND:
          await this.loadCommand(r, channel, at);
          break;
        case SectionType.EOF:
          await this.loadVmdesc(r);
          return;
        default:
          throw new ProtocolError('section', `Unknown savevm section type ${type}`, at);
      }
    }
  }

  private async checkFooter(r: ChannelReader, id: number, idstr: string): Promise<void> {
    await r.need(1, 'section footer');
    const at = r.offset;
    if (r.u8() !== SectionType.FOOTER) throw new ProtocolError('section', `Missing section footer for ${idstr}`, at);
    await r.need(4, 'section footer');
    const got = r.be32();
    if (got !== id) throw new ProtocolError('section', `Mismatched section id in footer for ${idstr} - read 0x${hex(got)} expected 0x${hex(id)}`, at);
  }

  private async loadCommand(r: ChannelReader, channel: Duplex, at: number): Promise<void> {
    await r.need(4, 'command header');
    const cmd = r.be16();
    const len = r.be16();
    if (cmd === MigCmd.INVALID || cmd >= MigCmd.MAX) {
      throw new ProtocolError('command', `MIG_CMD 0x${hex(cmd)} unknown (len 0x${hex(len)})`, at);
    }
    const fixed = MIG_CMD_LEN[cmd]!;
    if (fixed !== -1 && fixed !== len) {
      throw new ProtocolError('command', `${MIG_CMD_NAMES[cmd]} received bad length: ${len} should be ${fixed}`, at);
    }
    await r.need(len, 'command payload');
    const p = r.take(len);
    const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
    switch (cmd) {
      case MigCmd.OPEN_RETURN_PATH:
        if (this.rpWriter) this.warnings.push('CMD_OPEN_RETURN_PATH called when RP already open');
        else this.rpWriter = new StreamWriter(channel, { batchSize: 4096 });
        return;
      case MigCmd.PING: {
        const v = dv.getUint32(0);
        if (!this.rpWriter) throw new ProtocolError('command', 'CMD_PING received with no return path', at);
        this.pings.push(v);
        const w = this.rpWriter;
        encodeRpMessage(w, { kind: 'pong', value: v });
        await w.flush();
        return;
      }
      case MigCmd.POSTCOPY_ADVISE: {
        const on = this.opts.postcopyRam ?? false;
        if (len === 0 && on) throw new ProtocolError('command', 'RAM postcopy is enabled but have 0 byte advise', at);
        if (len === POSTCOPY_ADVISE_LEN && !on) throw new ProtocolError('command', 'RAM postcopy is disabled but have 16 byte advise', at);
        if (len !== 0 && len !== POSTCOPY_ADVISE_LEN) throw new ProtocolError('command', `CMD_POSTCOPY_ADVISE invalid length (${len})`, at);
        return;
      }
      default:
        throw new ProtocolError('command', `${MIG_CMD_NAMES[cmd]} is not supported by this destination yet`, at);
    }
  }

  private async loadVmdesc(r: ChannelReader): Promise<void> {
    if (r.available === 0 && !(await r.more())) {
      this.warnings.push('Expected vmdescription section, but got 0');
      return;
    }
    const at = r.offset;
    const t = r.u8();
    if (t !== SectionType.VMDESCRIPTION) {
      this.warnings.push(`Expected vmdescription section, but got ${t}`);
      return;
    }
    await r.need(4, 'vmdesc length');
    const len = r.be32();
    await r.need(len, 'vmdesc');
    this.vmdesc = Buffer.from(r.take(len)).toString('utf8');
    void at;
  }

  /**
   * Buffers from the first unknown FULL section to the end of the vmdesc,
   * then splits the device sections (SPEC §1.6).
   */
  private async loadOpaqueTail(r: ChannelReader, header: Uint8Array, at: number): Promise<void> {
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
        if (tail) {
          this.vmdesc = tail.vmdesc;
          this.finishOpaque(data.subarray(0, tail.eofAt), at);
          return;
        }
      }
      if (!(await r.more())) break;
    }
    // Stream ended without a vmdesc: the last byte must be EOF.
    const data = concat(parts, size);
    if (data[data.length - 1] !== SectionType.EOF) throw new ProtocolError('device state', 'stream ended inside the device sections', at + data.length);
    this.warnings.push('Expected vmdescription section, but got 0');
    this.finishOpaque(data.subarray(0, data.length - 1), at);
  }

  private finishOpaque(region: Uint8Array, at: number): void {
    let expected: { name: string; instance_id: number }[] | undefined;
    if (this.vmdesc) {
      const j = JSON.parse(this.vmdesc) as { devices: { name: string; instance_id: number }[] };
      expected = j.devices.slice(this.fullSeen);
    }
    for (const s of splitSections(region, at, expected)) {
      if (s.idstr === GLOBALSTATE_IDSTR && s.instanceId === 0 && s.payload.length === 4 + GLOBALSTATE_RUNSTATE_LEN) {
        this.globalState = parseGlobalState(s.payload);
      } else {
        this.devices.push(s);
      }
    }
  }
}

/** error-desc text: QEMU's message without our "what:" prefix and offset (kept for truncation). */
function describeError(e: unknown): string {
  if (e instanceof TruncatedError) return e.message.replace(/ \(at offset \d+\)$/, '');
  if (e instanceof ProtocolError) return e.message.slice(e.what.length + 2).replace(/ \(at offset \d+\)$/, '');
  return e instanceof Error ? e.message : String(e);
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function sectionHeaderBytes(id: number, idstr: string, instanceId: number, versionId: number): Uint8Array {
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

export { encodeGlobalState, parseGlobalState } from './config.js';
