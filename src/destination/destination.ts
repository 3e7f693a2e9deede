/**
 * MigrationDestination: the incoming migration (SPEC §1–§3, §6, §7).
 * none → active → [postcopy-active ⇄ postcopy-paused → postcopy-recover →]
 * completed | failed. Checks the header and configuration, loads sections
 * with footers, RAM, globalstate and (when adopting) opaque device sections,
 * answers commands, runs the postcopy states (postcopy.ts), the fault API
 * (faults.ts) and the recovery handshake, sends SHUT on the return path.
 */
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
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
  RESUME_ACK_VALUE,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  QEMU_VM_FILE_VERSION_COMPAT,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  SectionType,
} from '../wire/constants.js';
import { Readable } from 'node:stream';
import { ChannelReader } from '../engine/bytes.js';
import { ByteCursor } from '../wire/cursor.js';
import { decodeCommandBody } from '../wire/command.js';
import { encodeRecvBitmapData } from '../wire/return-path.js';
import { FaultService, type FaultRecord } from './faults.js';
import type { FaultLatency } from './blocktime.js';
import {
  applyDiscards,
  checkAdvisePageSizes,
  checkPostcopyState,
  packageDeviceEnd,
  recvBitmapBytes,
  zapRam,
  type PostcopyState,
} from './postcopy.js';
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
  /** postcopy-blocktime capability: query-migrate reports blocktime once completed. */
  postcopyBlocktime?: boolean;
  /**
   * Silent link: while postcopy-active with faults outstanding, pause when
   * nothing was received for this long, ms. Default KEEPALIVE_TIMEOUT_MS (5000).
   */
  keepaliveTimeoutMs?: number;
}

/** Our keepalive timeout (the source's KEEPALIVE_TIMEOUT_MS). */
export const DEST_KEEPALIVE_TIMEOUT_MS = 5000;
/** Our extra query-migrate member once any fault happened. */
export interface FaultLatencyInfo {
  count: number;
  'p50-us': number;
  'p99-us': number;
  'max-us': number;
}
/** query-migrate on the destination. */
export interface DestinationMigrationInfo {
  status?: MigrationStatus;
  'error-desc'?: string;
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  'x-postcopy-fault-latency'?: FaultLatencyInfo;
}

const hex = (v: number): string => v.toString(16);

/** What a section loop stopped at. */
type LoopEnd = 'eof' | 'run';

/**
 * The incoming side of one migration. Emits 'runstate' (name) when the run
 * state is applied (after load, or at POSTCOPY_RUN), 'postcopyListen',
 * 'postcopyRun', 'fault' (FaultRecord), 'pagePlaced' {idstr, offset,
 * latencyUs}, 'paused' {reason}, 'resumed' {}.
 */
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
  private pcState: PostcopyState = 'none';
  /** Section id → idstr of the iterable sections (kept across channels). */
  private readonly sections = new Map<number, string>();
  private readonly fault: FaultService;
  /** The current input (replaced by recover()). */
  private channel: Duplex | undefined;
  private reader: ChannelReader | undefined;
  /** Incremented by every installed channel. */
  private gen = 0;
  private inputWaiter: { gen: number; resolve: () => void; reject: (e: unknown) => void } | undefined;
  private recovering: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  private lastData = performance.now();
  private watchdog: NodeJS.Timeout | undefined;
  /** Why the last pause happened. */
  pauseReason: string | undefined;
  /** RECV_BITMAP replies sent (block names, in order). */
  readonly recvBitmaps: string[] = [];

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
    this.fault = new FaultService({
      block: (idstr) => {
        const b = this.ram.block(idstr);
        return b ? { bits: this.ram.received.get(idstr)!, usedLength: b.usedLength } : undefined;
      },
      send: (idstr, offset, length, withId) => this.sendPageRequest(idstr, offset, length, withId),
      emit: (event, payload) => void this.emit(event, payload),
    });
    this.ram.onPlaced = (idstr, page) => this.fault.placed(idstr, page);
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

  // ---- fault API ----

  /** True when every page of the range has been received (or the migration completed). */
  isReceived(idstr: string, offset: number, length?: number): boolean {
    return this.fault.isReceived(idstr, offset, length);
  }
  /**
   * Resolves once every page of [offset, offset+length) of block idstr is
   * placed. Before LISTEN it waits for the pages to arrive; from LISTEN on a
   * missing page is requested (one request per page, kept over a pause and
   * re-sent after RESUME_ACK). Rejects only if the migration failed.
   */
  ensure(idstr: string, offset: number, length?: number): Promise<void> {
    return this.fault.ensure(idstr, offset, length);
  }
  /** ensure() then a view of the block's bytes (no copy). */
  async read(idstr: string, offset: number, length: number): Promise<Uint8Array> {
    await this.fault.ensure(idstr, offset, length);
    return this.ram.block(idstr)!.bytes.subarray(offset, offset + length);
  }
  /** Page requests as they are sent, until the migration ends. */
  faults(): AsyncIterable<FaultRecord> {
    return this.fault.faults();
  }
  /** Requests sent and fault → placement latency of requested pages, µs. */
  faultStats(): FaultLatency {
    return this.fault.stats();
  }
  /** Faults waited for and not yet placed. */
  get outstandingFaults(): number {
    return this.fault.outstanding;
  }

  /** query-migrate for the destination. */
  queryMigrate(): DestinationMigrationInfo {
    if (this.status === 'none') return {};
    const out: DestinationMigrationInfo =
      this.status === 'failed' ? { status: 'failed', 'error-desc': this.errorDesc ?? 'unknown error' } : { status: this.status };
    if (this.status === 'completed' && this.opts.postcopyBlocktime && this.pcState === 'end') {
      const ms = Math.round(this.fault.blocktimeMs());
      out['postcopy-blocktime'] = ms;
      out['postcopy-vcpu-blocktime'] = [ms];
    }
    if (this.fault.anyFault) {
      const st = this.fault.stats();
      out['x-postcopy-fault-latency'] = { count: st.count, 'p50-us': st.p50Us, 'p99-us': st.p99Us, 'max-us': st.maxUs };
    }
    return out;
  }

  /**
   * Loads a whole incoming migration from `channel`. Resolves with the final
   * status; stays pending across postcopy-paused/recover. A load error before
   * POSTCOPY_RUN ends in `failed` with error-desc (QEMU's message); after it,
   * any error pauses (postcopy-paused) until recover().
   */
  async load(channel: Duplex, opts: { signal?: AbortSignal } = {}): Promise<MigrationStatus> {
    if (this.status !== 'none') throw new PostcopyError('STATE', 'incoming migration already started');
    this.statusPort.transition('none', 'active');
    this.attach(channel);
    const onAbort = (): void => {
      const e = new PostcopyError('CANCELLED', 'incoming migration aborted');
      this.channel?.destroy(e);
      this.inputWaiter?.reject(e);
    };
    opts.signal?.addEventListener('abort', onAbort);
    if (opts.signal?.aborted) onAbort();
    try {
      await this.loadHeader(this.reader!);
      for (;;) {
        const gen = this.gen;
        try {
          await this.loadSections(this.reader!, false);
          break;
        } catch (e) {
          if (gen === this.gen) {
            if (!this.pausable()) throw e;
            if ((this.status as MigrationStatus) !== 'postcopy-paused') this.pauseNow(e);
          }
          await this.waitForInput(gen);
        }
      }
      if (this.pcState === 'none' || this.pcState === 'advise' || this.pcState === 'discard') this.applyRunState();
      if (this.pcState === 'running') this.pcState = 'end';
      await this.sendShut(0);
      this.stopWatchdog();
      this.statusPort.transition(this.status, 'completed');
      this.fault.complete();
      this.channel?.end();
    } catch (e) {
      this.stopWatchdog();
      this.errorDesc = describeError(e);
      this.error = e;
      await this.sendShut(1).catch(() => undefined);
      this.statusPort.transition(this.status, 'failed');
      this.fault.fail(e);
      this.recovering?.reject(e);
      const ch = this.channel;
      ch?.end();
      setTimeout(() => ch?.destroy(), 1000).unref();
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    return this.status;
  }

  /** The error that failed the load, with its offset. */
  error: unknown;

  /**
   * migrate-pause on the destination: only in postcopy-active (else QEMU's
   * text); shuts the input → postcopy-paused.
   */
  pause(): void {
    if (this.status !== 'postcopy-active') {
      throw new PostcopyError('STATE', 'migrate-pause is currently only supported during postcopy-active state');
    }
    this.pauseNow(new PostcopyError('IO', 'migrate-pause'));
  }

  /**
   * After migrate-recover's listener accepted a connection: installs it as
   * input and return path and runs the destination side of the handshake
   * (RECV_BITMAP replies, POSTCOPY_RESUME → RESUME_ACK). Resolves at
   * postcopy-active; rejects (status back to postcopy-paused) when the channel
   * breaks first. Only in postcopy-paused.
   */
  recover(channel: Duplex): Promise<void> {
    if (this.status !== 'postcopy-paused') {
      return Promise.reject(new PostcopyError('STATE', 'Migrate recover can only be run when postcopy is paused.'));
    }
    this.statusPort.transition('postcopy-paused', 'postcopy-recover');
    const done = new Promise<void>((resolve, reject) => (this.recovering = { resolve, reject }));
    this.attach(channel);
    // A recovery channel carries no OPEN_RETURN_PATH: its reverse direction is the return path.
    this.rpWriter = new StreamWriter(channel, { batchSize: 4096 });
    return done;
  }

  /** Installs `channel` as the input; wakes a load loop waiting for it. */
  private attach(channel: Duplex): void {
    this.channel = channel;
    // Page requests are tiny writes: Nagle + the peer's delayed ACK would hold them ~40 ms.
    if (channel instanceof Socket) channel.setNoDelay(true);
    this.reader = new ChannelReader(channel);
    this.ram.forgetLastBlock();
    this.gen++;
    this.lastData = performance.now();
    channel.on('data', () => (this.lastData = performance.now()));
    channel.on('error', () => undefined);
    const w = this.inputWaiter;
    if (w && this.gen > w.gen) {
      this.inputWaiter = undefined;
      w.resolve();
    }
  }

  private waitForInput(gen: number): Promise<void> {
    if (this.gen > gen) return Promise.resolve();
    return new Promise((resolve, reject) => (this.inputWaiter = { gen, resolve, reject }));
  }

  /** Errors pause (never fail) once POSTCOPY_RUN was handled. */
  private pausable(): boolean {
    const s = this.status;
    return this.pcState === 'running' && (s === 'postcopy-active' || s === 'postcopy-recover' || s === 'postcopy-paused');
  }

  /** → postcopy-paused: both directions closed, faults kept, a pending recover() rejected. */
  private pauseNow(reason: unknown): void {
    const s = this.status;
    if (s === 'postcopy-active' || s === 'postcopy-recover') this.statusPort.transition(s, 'postcopy-paused');
    this.pauseReason = describeError(reason);
    this.fault.pause();
    this.stopWatchdog();
    this.rpWriter = undefined;
    this.channel?.destroy();
    const rec = this.recovering;
    this.recovering = undefined;
    rec?.reject(reason instanceof Error ? reason : new PostcopyError('IO', String(reason)));
    this.emit('paused', { reason: this.pauseReason });
  }

  /** Silent link (postcopy-active, faults outstanding, nothing received for the timeout) → pause. */
  private startWatchdog(): void {
    const timeout = this.opts.keepaliveTimeoutMs ?? DEST_KEEPALIVE_TIMEOUT_MS;
    this.stopWatchdog();
    this.watchdog = setInterval(
      () => {
        if (this.status !== 'postcopy-active' || this.fault.outstanding === 0) return;
        if (performance.now() - Math.max(this.lastData, this.fault.outstandingSince) > timeout) {
          this.pauseNow(new PostcopyError('IO', `no data from the source for ${timeout} ms with page requests outstanding`));
        }
      },
      Math.max(10, Math.floor(timeout / 5)),
    );
    this.watchdog.unref();
  }

  private stopWatchdog(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }

  private sendPageRequest(idstr: string, offset: number, length: number, withId: boolean): boolean {
    const w = this.rpWriter;
    if (!w || this.status !== 'postcopy-active') return false;
    try {
      encodeRpMessage(w, withId ? { kind: 'reqPagesId', start: offset, length, blockName: idstr } : { kind: 'reqPages', start: offset, length });
      w.push();
    } catch {
      return false;
    }
    return true;
  }

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

  private async loadHeader(r: ChannelReader): Promise<void> {
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
  private async loadSections(r: ChannelReader, inPackage: boolean): Promise<LoopEnd> {
    const sections = this.sections;
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

  private async checkFooter(r: ChannelReader, id: number, idstr: string): Promise<void> {
    await r.need(1, 'section footer');
    const at = r.offset;
    if (r.u8() !== SectionType.FOOTER) throw new ProtocolError('section', `Missing section footer for ${idstr}`, at);
    await r.need(4, 'section footer');
    const got = r.be32();
    if (got !== id) throw new ProtocolError('section', `Mismatched section id in footer for ${idstr} - read 0x${hex(got)} expected 0x${hex(id)}`, at);
  }

  private async loadCommand(r: ChannelReader, at: number): Promise<LoopEnd | void> {
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
        this.fault.listen();
        this.startWatchdog();
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

  private handleAdvise(dv: DataView, len: number, at: number): void {
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

  private handleDiscard(p: Uint8Array, len: number, at: number): void {
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

  private async handleRecvBitmap(p: Uint8Array, len: number, at: number): Promise<void> {
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

  private async handleResume(): Promise<void> {
    if (this.status !== 'postcopy-recover') {
      this.warnings.push('illegal resume received');
      return;
    }
    this.statusPort.transition('postcopy-recover', 'postcopy-active');
    const w = this.rpWriter!;
    encodeRpMessage(w, { kind: 'resumeAck', value: RESUME_ACK_VALUE });
    w.push();
    this.fault.resume();
    this.startWatchdog();
    const rec = this.recovering;
    this.recovering = undefined;
    rec?.resolve();
    this.emit('resumed', {});
    await w.flush();
  }

  /**
   * An adopting destination inside a package: the device sections up to the
   * trailing PING/RUN are split opaquely; the commands after them parsed.
   */
  private async loadPackageDevices(r: ChannelReader, header: Uint8Array, at: number): Promise<LoopEnd> {
    const body = r.drainBuffered();
    const rest = concat([header, body], header.length + body.length);
    const end = packageDeviceEnd(rest);
    for (const s of splitSections(rest.subarray(0, end), at)) {
      if (s.idstr === GLOBALSTATE_IDSTR && s.instanceId === 0 && s.payload.length === 4 + GLOBALSTATE_RUNSTATE_LEN) {
        this.globalState = parseGlobalState(s.payload);
      } else {
        this.devices.push(s);
      }
    }
    return this.loadSections(readerOf(rest.subarray(end)), true);
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

/** A reader over bytes already in memory (a package blob). */
function readerOf(bytes: Uint8Array): ChannelReader {
  return new ChannelReader(Readable.from([Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]));
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
