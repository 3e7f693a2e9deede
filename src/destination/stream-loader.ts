/**
 * StreamLoader: the parsing half of MigrationDestination — header and
 * configuration, sections with footers, RAM (ram-loader.ts), globalstate,
 * opaque device sections of an adopting destination, every MIG_CMD including
 * the postcopy ones (states and checks in postcopy.ts), the PACKAGED
 * sub-stream and the destination side of the recovery handshake. The
 * subclass owns the channel life cycle, pause/recover and the fault API.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ProtocolError } from '../errors.js';
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
  RESUME_ACK_VALUE,
  SectionType,
} from '../wire/constants.js';
import { ChannelReader } from '../engine/bytes.js';
import { ByteCursor } from '../wire/cursor.js';
import { decodeCommandBody } from '../wire/command.js';
import { encodeRecvBitmapData, encodeRpMessage } from '../wire/return-path.js';
import { StreamWriter } from '../wire/writer.js';
import type { EngineRamBlock, PageBits } from '../engine/ports.js';
import { jsPageOps } from '../engine/page-ops-js.js';
import type { MigrationStatus, StatusPort } from '../engine/status.js';
import { StatusMachine } from '../control/status.js';
import { PageBitmap } from '../memory/index.js';
import { loadConfiguration, parseGlobalState } from './config.js';
import type { ReceivedSection } from './device-split.js';
import { concat, readerOf, readOpaqueTail, readVmdesc, sectionHeaderBytes, splitDevices } from './device-tail.js';
import type { DestinationOptions } from './options.js';
import {
  applyDiscards,
  checkAdvisePageSizes,
  checkPostcopyState,
  packageDeviceEnd,
  recvBitmapBytes,
  zapRam,
  type PostcopyState,
} from './postcopy.js';
import { plainBlockAllocator, RamLoader } from './ram-loader.js';

const hex = (v: number): string => v.toString(16);

/** What a section loop stopped at. */
export type LoopEnd = 'eof' | 'run';

/** Parses an incoming stream; see MigrationDestination. */
export abstract class StreamLoader extends EventEmitter {
  readonly statusPort: StatusPort;
  protected readonly ram: RamLoader;
  protected readonly opts: DestinationOptions;
  protected rpWriter: StreamWriter | undefined;
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
  protected fullSeen = 0;
  /** Received bitmaps as PageBitmaps (only with the `hotpath` option). */
  readonly receivedBitmaps = new Map<string, PageBitmap>();
  protected pcState: PostcopyState = 'none';
  /** Section id → idstr of the iterable sections (kept across channels). */
  protected readonly sections = new Map<number, string>();
  /** The current input (replaced by recover()). */
  protected channel: Duplex | undefined;
  /** RECV_BITMAP replies sent (block names, in order). */
  readonly recvBitmaps: string[] = [];

  constructor(opts: DestinationOptions) {
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
  /** The postcopy state: 'none'|'advise'|'discard'|'listening'|'running'|'end'. */
  get postcopyState(): PostcopyState {
    return this.pcState;
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

  /**
   * Offered at every section boundary of the main channel after
   * POSTCOPY_RUN, when the next item is a PART or END section: another reader
   * may parse the RAM sections from here (the bulk worker). Returns where it
   * stopped — inside a ram section it leaves the rest of that section to this
   * loader — or undefined when it took nothing.
   */
  protected offloadRam(_r: ChannelReader): Promise<{ at: 'section' | 'record' | 'footer'; sectionId: number } | undefined> {
    return Promise.resolve(undefined);
  }

  /** LISTEN was handled: faults may now be requested. */
  protected abstract onListen(): void;
  /** POSTCOPY_RESUME was handled and RESUME_ACK queued: re-send faults, resolve recover(). */
  protected abstract onResume(): void;

  protected async sendShut(value: number): Promise<void> {
    const w = this.rpWriter;
    if (!w) return;
    encodeRpMessage(w, { kind: 'shut', value });
    await w.flush();
  }

  protected applyRunState(): void {
    const gs = this.globalState;
    if (gs === undefined || gs === 'running') this.runState = (this.opts.autostart ?? true) ? 'running' : 'paused';
    else this.runState = gs;
    this.emit('runstate', this.runState);
  }

  protected async loadHeader(r: ChannelReader): Promise<void> {
    await r.need(8, 'stream header');
    const magic = r.be32();
    if (magic !== QEMU_VM_FILE_MAGIC) throw new ProtocolError('stream header', 'Not a migration stream', 0);
    const version = r.be32();
    if (version === QEMU_VM_FILE_VERSION_COMPAT) throw new ProtocolError('stream header', "SaveVM v2 format is obsolete and don't work anymore", 4);
    if (version !== QEMU_VM_FILE_VERSION) throw new ProtocolError('stream header', 'Unsupported migration stream version', 4);
    await loadConfiguration(r, this.opts.machineName ?? 'none', this.warnings);
  }

  /**
   * Loads sections and commands until EOF (or, inside a package, RUN).
   * `inPackage`: the nested stream of a PACKAGED blob.
   */
  protected async loadSections(r: ChannelReader, inPackage: boolean): Promise<LoopEnd> {
    const sections = this.sections;
    for (;;) {
      await r.need(1, 'section type');
      if (!inPackage && this.pcState === 'running' && (r.peek() === SectionType.PART || r.peek() === SectionType.END)) {
        const back = await this.offloadRam(r);
        if (back) {
          if (back.at === 'record') await this.ram.load(r);
          if (back.at !== 'section') await this.checkFooter(r, back.sectionId, RAM_SECTION_IDSTR);
          continue;
        }
        await r.need(1, 'section type');
      }
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
            if (inPackage) return this.loadPackageDevices(r, hdr, at);
            await this.loadOpaqueTail(r, hdr, at);
            return 'eof';
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
          if ((await this.loadCommand(r, at)) === 'run') return 'run';
          break;
        case SectionType.EOF:
          // A postcopy stream ends without a vmdesc (SPEC §6.2 step 11); a package has none either.
          if (!inPackage && (this.pcState === 'none' || this.pcState === 'advise' || this.pcState === 'discard')) await this.loadVmdesc(r);
          return 'eof';
        default:
          throw new ProtocolError('section', `Unknown savevm section type ${type}`, at);
      }
    }
  }

  protected async checkFooter(r: ChannelReader, id: number, idstr: string): Promise<void> {
    await r.need(1, 'section footer');
    const at = r.offset;
    if (r.u8() !== SectionType.FOOTER) throw new ProtocolError('section', `Missing section footer for ${idstr}`, at);
    await r.need(4, 'section footer');
    const got = r.be32();
    if (got !== id) throw new ProtocolError('section', `Mismatched section id in footer for ${idstr} - read 0x${hex(got)} expected 0x${hex(id)}`, at);
  }

  protected async loadCommand(r: ChannelReader, at: number): Promise<LoopEnd | void> {
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
        else this.rpWriter = new StreamWriter(this.channel!, { batchSize: 4096 });
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
      case MigCmd.POSTCOPY_ADVISE:
        return this.handleAdvise(dv, len, at);
      case MigCmd.POSTCOPY_RAM_DISCARD:
        return this.handleDiscard(p, len, at);
      case MigCmd.POSTCOPY_LISTEN:
        checkPostcopyState('CMD_POSTCOPY_LISTEN', this.pcState, ['advise', 'discard'], at);
        this.pcState = 'listening';
        this.ram.postcopy = true;
        this.statusPort.transition('active', 'postcopy-active');
        this.onListen();
        this.emit('postcopyListen');
        return;
      case MigCmd.POSTCOPY_RUN:
        checkPostcopyState('CMD_POSTCOPY_RUN', this.pcState, ['listening'], at);
        this.pcState = 'running';
        this.applyRunState();
        this.emit('postcopyRun');
        return 'run';
      case MigCmd.PACKAGED: {
        const n = dv.getUint32(0);
        await r.need(n, 'CMD_PACKAGED blob');
        const blob = r.take(n);
        await this.loadSections(readerOf(blob), true);
        return;
      }
      case MigCmd.RECV_BITMAP:
        return this.handleRecvBitmap(p, len, at);
      case MigCmd.POSTCOPY_RESUME:
        return this.handleResume();
      default:
        throw new ProtocolError('command', `${MIG_CMD_NAMES[cmd]} is not supported by this destination yet`, at);
    }
  }

  protected handleAdvise(dv: DataView, len: number, at: number): void {
    checkPostcopyState('CMD_POSTCOPY_ADVISE', this.pcState, ['none'], at);
    this.pcState = 'advise';
    const on = this.opts.postcopyRam ?? false;
    if (len === 0 && on) throw new ProtocolError('command', 'RAM postcopy is enabled but have 0 byte advise', at);
    if (len === POSTCOPY_ADVISE_LEN && !on) throw new ProtocolError('command', 'RAM postcopy is disabled but have 16 byte advise', at);
    if (len !== 0 && len !== POSTCOPY_ADVISE_LEN) throw new ProtocolError('command', `CMD_POSTCOPY_ADVISE invalid length (${len})`, at);
    if (len === 0) return;
    checkAdvisePageSizes(dv.getBigUint64(0), dv.getBigUint64(8), at);
    zapRam(this.ram.blocks, this.ram.received);
  }

  protected handleDiscard(p: Uint8Array, len: number, at: number): void {
    checkPostcopyState('CMD_POSTCOPY_RAM_DISCARD', this.pcState, ['advise', 'discard'], at);
    this.pcState = 'discard';
    const raw = new Uint8Array(4 + len);
    raw[0] = MigCmd.POSTCOPY_RAM_DISCARD >> 8;
    raw[1] = MigCmd.POSTCOPY_RAM_DISCARD & 0xff;
    raw[2] = len >> 8;
    raw[3] = len & 0xff;
    raw.set(p, 4);
    const c = decodeCommandBody(new ByteCursor(raw, 0, at + 1));
    if (c.kind !== 'postcopyRamDiscard') throw new ProtocolError('command', 'CMD_POSTCOPY_RAM_DISCARD decode failed', at);
    applyDiscards(this.ram.block(c.blockName), c.blockName, this.ram.received.get(c.blockName), c.ranges, at);
  }

  protected async handleRecvBitmap(p: Uint8Array, len: number, at: number): Promise<void> {
    const nameLen = len > 0 ? p[0]! : -1;
    if (nameLen + 1 !== len) throw new ProtocolError('command', `loadvm_handle_recv_bitmap: invalid payload length (${len})`, at);
    const name = Buffer.from(p.subarray(1)).toString('latin1');
    const block = name ? this.ram.block(name) : undefined;
    if (!block) throw new ProtocolError('command', `loadvm_handle_recv_bitmap: block '${name}' not found`, at);
    if (this.status !== 'postcopy-recover') {
      this.warnings.push(`loadvm_handle_recv_bitmap: RECV_BITMAP in status ${this.status} ignored`);
      return;
    }
    const w = this.rpWriter!;
    encodeRpMessage(w, { kind: 'recvBitmap', blockName: name });
    encodeRecvBitmapData(w, recvBitmapBytes(this.ram.received.get(name)!, block.usedLength));
    this.recvBitmaps.push(name);
    await w.flush();
  }

  protected async handleResume(): Promise<void> {
    if (this.status !== 'postcopy-recover') {
      this.warnings.push('illegal resume received');
      return;
    }
    this.statusPort.transition('postcopy-recover', 'postcopy-active');
    const w = this.rpWriter!;
    encodeRpMessage(w, { kind: 'resumeAck', value: RESUME_ACK_VALUE });
    w.push();
    this.onResume();
    await w.flush();
  }

  /**
   * An adopting destination inside a package: the device sections up to the
   * trailing PING/RUN are split opaquely; the commands after them parsed.
   */
  protected async loadPackageDevices(r: ChannelReader, header: Uint8Array, at: number): Promise<LoopEnd> {
    const body = r.drainBuffered();
    const rest = concat([header, body], header.length + body.length);
    const end = packageDeviceEnd(rest);
    this.keepDevices(splitDevices(rest.subarray(0, end), at));
    return this.loadSections(readerOf(rest.subarray(end)), true);
  }

  protected async loadVmdesc(r: ChannelReader): Promise<void> {
    const t = await readVmdesc(r);
    this.vmdesc = t.vmdesc;
    this.warnings.push(...t.warnings);
  }

  /** Buffers the device-state tail of an adopting destination and splits it (SPEC §1.6). */
  protected async loadOpaqueTail(r: ChannelReader, header: Uint8Array, at: number): Promise<void> {
    const t = await readOpaqueTail(r, header, at);
    this.vmdesc = t.vmdesc;
    this.warnings.push(...t.warnings);
    const expected = t.vmdesc ? (JSON.parse(t.vmdesc) as { devices: { name: string; instance_id: number }[] }).devices.slice(this.fullSeen) : undefined;
    this.keepDevices(splitDevices(t.region, at, expected));
  }

  private keepDevices(d: ReturnType<typeof splitDevices>): void {
    if (d.globalState) this.globalState = parseGlobalState(d.globalState);
    this.devices.push(...d.devices);
  }
}
