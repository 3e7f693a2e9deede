/**
 * MigrationDestination: the incoming migration (SPEC §1–§3, §6, §7).
 * none → active → [postcopy-active ⇄ postcopy-paused → postcopy-recover →]
 * completed | failed. Parsing lives in stream-loader.ts (postcopy states in
 * postcopy.ts); this class owns the channel life cycle (load, pause, the
 * silent-link watchdog, recover), the fault API (faults.ts) and query-migrate.
 */
import { Socket } from 'node:net';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { PostcopyError, ProtocolError, TruncatedError } from '../errors.js';
import { ChannelReader } from '../engine/bytes.js';
import { encodeRpMessage } from '../wire/return-path.js';
import { StreamWriter } from '../wire/writer.js';
import type { MigrationStatus } from '../engine/status.js';
import type { EngineRamBlock, PageBits } from '../engine/ports.js';
import type { FaultLatency } from './blocktime.js';
import { FaultService, type FaultRecord } from './faults.js';
import { DEST_KEEPALIVE_TIMEOUT_MS, type DestinationMigrationInfo, type DestinationOptions } from './options.js';
import { StreamLoader } from './stream-loader.js';
import { BulkReader } from './bulk/bulk-reader.js';
import { socketFd } from '../transport/hold.js';
import { RAM_SECTION_IDSTR } from '../wire/constants.js';
import { checkFaultPriority, setThreadPriority, type ThreadPriority } from '../threads.js';

export * from './options.js';
export type { FaultRecord } from './faults.js';
export type { FaultLatency } from './blocktime.js';
export type { PostcopyState } from './postcopy.js';

/**
 * The incoming side of one migration. Emits 'runstate' (name) when the run
 * state is applied (after load, or at POSTCOPY_RUN), 'postcopyListen',
 * 'postcopyRun', 'fault' (FaultRecord), 'pagePlaced' {idstr, offset,
 * latencyUs}, 'paused' {reason}, 'resumed' {}.
 */
export class MigrationDestination extends StreamLoader {
  private errorDesc: string | undefined;
  private readonly fault: FaultService;
  private reader: ChannelReader | undefined;
  /** Incremented by every installed channel. */
  private gen = 0;
  private inputWaiter: { gen: number; resolve: () => void; reject: (e: unknown) => void } | undefined;
  private recovering: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  private lastData = performance.now();
  private watchdog: NodeJS.Timeout | undefined;
  /** Why the last pause happened. */
  pauseReason: string | undefined;
  /** Reads the postcopy background stream in a worker thread, when it can (bulk/bulk-reader.ts). */
  private bulk: BulkReader | undefined;
  /**
   * With faultPriority: this thread's nice value during postcopy and why it
   * is not the one asked for (set at POSTCOPY_LISTEN).
   */
  faultThreadPriority: ThreadPriority | undefined;
  /** The thread's nice value before faultPriority changed it, put back at the end. */
  private niceBefore: number | undefined;

  constructor(opts: DestinationOptions = {}) {
    checkFaultPriority(opts.faultPriority);
    super(opts);
    this.fault = new FaultService({
      block: (idstr) => {
        const b = this.ram.block(idstr);
        return b ? { bits: this.ram.received.get(idstr)!, usedLength: b.usedLength } : undefined;
      },
      send: (idstr, offset, length, withId) => this.sendPageRequest(idstr, offset, length, withId),
      emit: (event, payload) => void this.emit(event, payload),
      watch: (idstr, page) => this.watchPage(idstr, page),
    });
    this.ram.onPlaced = (idstr, page) => this.fault.placed(idstr, page);
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

  /**
   * What the bulk worker did with the main channel's background stream:
   * runs, pages placed and bytes taken (as of the last run's end), bytes
   * read from the socket (live). Undefined when the stream is read on the
   * main thread: no native helper, not a socket, RAM not in shared memory,
   * or `bulkWorker: false`.
   */
  get bulkStats(): { runs: number; normal: number; zero: number; bytes: number; bytesRead: number } | undefined {
    return this.bulk && { ...this.bulk.stats, bytesRead: this.bulk.bytesRead };
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
          if (this.pcState === 'running') await this.postcopyEnd();
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
      this.bulk?.close();
      if (this.niceBefore !== undefined) setThreadPriority(this.niceBefore);
      this.niceBefore = undefined;
    }
    return this.status;
  }

  /**
   * The main channel ended a postcopy (its EOF): what else must arrive
   * before the migration completes (the preempt channel's pages up to its
   * EOS, in PreemptDestination). An error pauses, as one on the main channel.
   */
  protected postcopyEnd(): Promise<void> {
    return Promise.resolve();
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
    this.bulk?.abort();
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
        if (this.bulk?.activitySinceLastCall()) this.lastData = performance.now();
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

  protected onListen(): void {
    this.fault.listen();
    this.startWatchdog();
    // The worker starts now, so that it is ready when RUN comes.
    if (this.opts.bulkWorker !== false && !this.bulk && this.channel && socketFd(this.channel) !== undefined && BulkReader.sharable(this.bulkBlocks())) {
      this.bulk = BulkReader.create((idstr, page) => this.ram.onPlaced?.(idstr, page));
      // faults that began to wait before the worker existed (later ones are watched as they start)
      for (const [idstr, page] of this.fault.pendingPages()) this.watchPage(idstr, page);
    }
    // After the bulk worker started: a new thread takes its creator's priority, and the bulk must not have this one.
    const nice = this.opts.faultPriority;
    if (nice !== undefined && this.niceBefore === undefined) {
      this.niceBefore = os.getPriority();
      this.faultThreadPriority = setThreadPriority(nice);
    }
  }

  private bulkBlocks(): { block: EngineRamBlock; bits: PageBits }[] {
    return this.ram.blocks.map((block) => ({ block, bits: this.ram.received.get(block.idstr)! }));
  }

  /** A fault began to wait: the bulk worker must tell us when it places the page. */
  private watchPage(idstr: string, page: number): void {
    const bits = this.ram.received.get(idstr);
    if (this.bulk && bits && this.bulk.watch(idstr, page, bits)) queueMicrotask(() => this.ram.onPlaced?.(idstr, page));
  }

  protected override async offloadRam(r: ChannelReader): Promise<{ at: 'section' | 'record' | 'footer'; sectionId: number } | undefined> {
    const bulk = this.bulk;
    const ch = this.channel;
    if (!bulk || !ch || r !== this.reader || this.status !== 'postcopy-active') return undefined;
    const ramSections = [...this.sections].filter(([, idstr]) => idstr === RAM_SECTION_IDSTR).map(([id]) => id);
    const stop = await bulk.run(ch, r, this.bulkBlocks(), ramSections, { at: 'section', sectionId: -1, lastBlock: this.ram.lastBlockName });
    if (!stop) return undefined;
    this.ram.counters.normal += stop.counters.normal;
    this.ram.counters.zero += stop.counters.zero;
    this.ram.setLastBlock(stop.lastBlock);
    return stop.consumed > 0 ? { at: stop.at, sectionId: stop.sectionId } : undefined;
  }

  protected onResume(): void {
    this.fault.resume();
    this.startWatchdog();
    const rec = this.recovering;
    this.recovering = undefined;
    rec?.resolve();
    this.emit('resumed', {});
  }
}

/** error-desc text: QEMU's message without our "what:" prefix and offset (kept for truncation). */
function describeError(e: unknown): string {
  if (e instanceof TruncatedError) return e.message.replace(/ \(at offset \d+\)$/, '');
  if (e instanceof ProtocolError) return e.message.slice(e.what.length + 2).replace(/ \(at offset \d+\)$/, '');
  return e instanceof Error ? e.message : String(e);
}

export { encodeGlobalState, parseGlobalState } from './config.js';
