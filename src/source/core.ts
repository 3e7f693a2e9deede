/**
 * The precopy engine under MigrationSource (SPEC §1.5, §3.4, §4.3): setup,
 * 100 ms bandwidth windows under max-bandwidth, PART iterations, bitmap
 * syncs, and completion (stop, END, devices, EOF, vmdesc, SHUT). The
 * postcopy layer (postcopy.ts) takes over at the switchover hook.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { setImmediate as yieldNow } from 'node:timers/promises';
import {
  PingValue,
  POSTCOPY_HOST_PAGE_SIZE,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  TARGET_PAGE_SIZE,
} from '../wire/constants.js';
import { PostcopyError } from '../errors.js';
import { ChannelReader } from '../engine/bytes.js';
import { vmdescJson } from './vmdesc-json.js';
import { StreamWriter } from '../wire/writer.js';
import { encodeConfiguration, encodeFooter, encodeHeader, encodeSection } from '../wire/stream.js';
import type { PageOps, SourceGuest } from '../engine/ports.js';
import { jsPageOps } from '../engine/page-ops-js.js';
import type { MigrationStatus, StatusPort } from '../engine/status.js';
import { StatusMachine } from '../control/status.js';
import {
  BUFFER_DELAY_MS,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  MAX_WAIT_MS,
  PAGES_PER_TIME_CHECK,
  XFER_LIMIT_RATIO,
  YIELD_EVERY_MS,
  type SourceCapabilities,
  type SourceParameters,
} from './options.js';
import { RamSaver } from './ram-saver.js';
import { SourceReturnPath, type PageRequest } from './return-path.js';
import { AutoConverge } from './throttle.js';
import { SourceRates } from './rates.js';
import { encodeDevices, RAM_SECTION_ID, resolveDevices, type DeviceSource } from './devices.js';

export { RAM_SECTION_ID, resolveDevices } from './devices.js';

const TP = TARGET_PAGE_SIZE;

/** Options of one outgoing migration. */
export interface MigrateOptions {
  /** Machine type name for the configuration section (`none` imitates -M none). */
  machineName?: string;
  /** Device sections sent FULL at completion (in postcopy: inside the package); called after the guest stopped. */
  devices?: DeviceSource;
  /** Write the VMDESCRIPTION after EOF (default true; QEMU's !suppress-vmdesc). Never in postcopy. */
  vmdesc?: boolean;
  /** Aborting cancels the migration (as migrate_cancel). */
  signal?: AbortSignal;
}

/** Construction options. */
export interface SourceOptions {
  capabilities?: Partial<SourceCapabilities>;
  parameters?: Partial<SourceParameters>;
  pageOps?: PageOps;
  /** A status holder (control/'s StatusMachine); a fresh StatusMachine by default. */
  status?: StatusPort;
  /** Postcopy keepalive PING period, ms (default KEEPALIVE_INTERVAL_MS). */
  keepaliveIntervalMs?: number;
  /** Postcopy: pause when the return path was silent this long, ms (default KEEPALIVE_TIMEOUT_MS). */
  keepaliveTimeoutMs?: number;
  /** Recovery handshake time limit, ms (default RECOVERY_TIMEOUT_MS). */
  recoveryTimeoutMs?: number;
}

export const now = (): number => performance.now();

/** Precopy machinery shared with the postcopy layer. */
export abstract class SourceCore extends EventEmitter {
  readonly capabilities: SourceCapabilities;
  readonly parameters: SourceParameters;
  readonly statusPort: StatusPort;
  protected readonly ops: PageOps;
  protected saver: RamSaver | undefined;
  protected writer: StreamWriter | undefined;
  protected channel: Duplex | undefined;
  protected rp: SourceReturnPath | undefined;
  protected errorDesc: string | undefined;
  protected continueResolve: (() => void) | undefined;
  protected wake: (() => void) | undefined;
  protected throttle: AutoConverge;
  protected guestStopped = false;
  /** Sender yield period, ms (shorter in postcopy). */
  protected yieldEveryMs = YIELD_EVERY_MS;
  // timing (ms, performance.now base)
  protected startTime = 0;
  protected setupTime = 0;
  protected downtimeStart = 0;
  protected totalTime = 0;
  protected downtime = 0;
  protected dirtySyncCount = 0;
  protected precopyBytes = 0;
  protected postcopyRequests = 0;
  protected downtimeBytes = 0;
  /** EOS words that ended PART sections: QEMU counts 8 bytes for each in ram.transferred. */
  protected partEos = 0;
  protected readonly rates = new SourceRates();

  constructor(
    readonly guest: SourceGuest,
    protected readonly opts: SourceOptions = {},
  ) {
    super();
    this.capabilities = { ...DEFAULT_CAPABILITIES, ...opts.capabilities };
    this.parameters = { ...DEFAULT_PARAMETERS, ...opts.parameters };
    this.statusPort = opts.status ?? new StatusMachine();
    this.ops = opts.pageOps ?? jsPageOps;
    this.throttle = new AutoConverge(
      () => this.parameters,
      (p) => {
        this.guest.setThrottle?.(p);
        this.emit('throttle', p);
      },
    );
  }

  /** Current status. */
  get status(): MigrationStatus {
    return this.statusPort.status;
  }

  /** True when the switchover to postcopy is due at the next iteration boundary. */
  protected abstract postcopyDue(): boolean;
  /** Switchover and the postcopy phase until completion (postcopy.ts). */
  protected abstract postcopyPhase(opts: MigrateOptions): Promise<void>;
  /** Called for every new return-path reader (postcopy watches for I/O loss). */
  protected abstract watchReturnPath(rp: SourceReturnPath): void;

  /**
   * A page request from the return path: every target page of the range is
   * queued ahead of the background scan (already-sent pages are dropped when
   * dequeued). Throws (the return path turns bad) on an unknown block or a
   * range outside it, as QEMU does.
   */
  protected queuePageRequest(req: PageRequest): void {
    const saver = this.saver;
    const index = this.guest.blocks.findIndex((b) => b.idstr === req.idstr);
    if (!saver || index < 0) throw new PostcopyError('RETURN_PATH', `Unknown block name: ${req.idstr}`);
    const block = this.guest.blocks[index]!;
    if (req.length === 0 || req.start + req.length > block.usedLength) {
      throw new PostcopyError('RETURN_PATH', `Request out of range: ${req.idstr} 0x${req.start.toString(16)}+0x${req.length.toString(16)}`);
    }
    this.postcopyRequests++;
    for (let off = req.start; off < req.start + req.length; off += TP) saver.queueUrgent(index, off / TP);
    this.wake?.();
  }

  /** Adds to this source's counters what another thread served (the preempt source's urgent worker). */
  protected syncServedElsewhere(): void {}

  /** A new return-path reader on `channel`, dispatching to this source. */
  protected openReturnPath(channel: Duplex, recovering = false, lastReqBlock?: string): SourceReturnPath {
    const rp = new SourceReturnPath(new ChannelReader(channel), this.returnPathHandlers(), { recovering, lastReqBlock });
    this.watchReturnPath(rp);
    return rp;
  }

  /** The handlers given to every return-path reader. */
  protected abstract returnPathHandlers(): ConstructorParameters<typeof SourceReturnPath>[1];

  protected shutdownChannel(channel = this.channel): void {
    const ch = channel as (Duplex & { shutdown?: () => void }) | undefined;
    if (!ch) return;
    if (typeof ch.shutdown === 'function') ch.shutdown();
    else ch.destroy();
  }

  /** True once the guest runs on the destination (never resume it here). */
  protected abstract get guestHandedOver(): boolean;

  protected async fail(e: unknown): Promise<void> {
    const s = this.status;
    this.throttle.stop();
    this.guest.stopDirtyLog?.();
    if (s === 'cancelling') {
      this.statusPort.transition('cancelling', 'cancelled');
    } else if (s !== 'completed' && s !== 'failed' && s !== 'cancelled') {
      this.errorDesc = e instanceof Error ? e.message : String(e);
      this.statusPort.transition(s, 'failed');
      this.shutdownChannel();
    }
    if (this.guestStopped && !this.guestHandedOver) {
      this.guestStopped = false;
      await this.guest.resume();
    }
  }

  /** Throws when cancelled or the channel broke (a bad return path fails only at completion, as in QEMU). */
  protected checkRunning(w = this.writer!): void {
    if (this.status === 'cancelling') throw new PostcopyError('CANCELLED', 'migration cancelled');
    // `w` is the writer the caller is using: after a postcopy resume an old loop must not go on.
    w.check();
    if (w !== this.writer) throw new PostcopyError('IO', 'channel replaced');
  }

  protected async run(channel: Duplex, opts: MigrateOptions): Promise<void> {
    const w = (this.writer = new StreamWriter(channel));
    const caps = this.capabilities;
    if (caps.returnPath || caps.postcopyRam) this.rp = this.openReturnPath(channel);
    encodeHeader(w);
    encodeConfiguration(w, { machineName: opts.machineName ?? 'none' });
    if (this.rp) {
      encodeSection(w, { kind: 'command', command: { kind: 'openReturnPath' } });
      encodeSection(w, { kind: 'command', command: { kind: 'ping', value: PingValue.AFTER_OPEN_RETURN_PATH } });
    }
    if (caps.postcopyRam) {
      const ram = { pageSizeSummary: POSTCOPY_HOST_PAGE_SIZE, targetPageSize: TP };
      encodeSection(w, { kind: 'command', command: { kind: 'postcopyAdvise', ram } });
    }
    const blocks = this.guest.blocks;
    const saver = (this.saver = new RamSaver(blocks, this.ops, caps.xbzrle, this.parameters.xbzrleCacheSize));
    encodeSection(w, { kind: 'start', sectionId: RAM_SECTION_ID, idstr: RAM_SECTION_IDSTR, instanceId: 0, versionId: RAM_SECTION_VERSION });
    saver.enc.memSize(w, blocks);
    saver.enc.eos(w);
    encodeFooter(w, RAM_SECTION_ID);
    // QEMU's ram_init_bitmaps: everything dirty, then the first sync.
    saver.setAllDirty();
    this.guest.startDirtyLog?.();
    this.rates.start(now(), w.transferred, 0, this.parameters.downtimeLimit);
    this.bitmapSync();
    await w.flush();
    this.checkRunning();
    this.setupTime = now() - this.startTime;
    if (!this.statusPort.transition('setup', 'active')) this.checkRunning();
    this.rates.start(now(), w.transferred, this.totalPages(), this.parameters.downtimeLimit);

    for (;;) {
      this.checkRunning();
      let pending = saver.dirtyPages * TP;
      if (pending < this.rates.thresholdSize) {
        this.bitmapSync();
        pending = saver.dirtyPages * TP;
      }
      if (pending === 0 || pending < this.rates.thresholdSize) break;
      // SPEC §6.1: still above the threshold and postcopy requested → switch.
      if (this.postcopyDue()) return this.postcopyPhase(opts);
      await this.iterate();
      await this.rateLimit();
    }
    await this.complete(opts);
  }

  protected totalPages(): number {
    const s = this.saver!;
    return s.counters.normal + s.counters.duplicate + s.xbzrle.pages;
  }

  /** One PART section: pages until the window budget is spent, 50 ms pass, or nothing is dirty. */
  protected async iterate(): Promise<void> {
    const w = this.writer!;
    const saver = this.saver!;
    encodeSection(w, { kind: 'part', sectionId: RAM_SECTION_ID });
    const t0 = now();
    let slice = t0;
    let i = 0;
    // Urgent (requested) pages go out even when the window's budget is spent.
    while (!this.rateLimited() || saver.urgent.length > 0) {
      const n = saver.sendNext(w, false);
      if (n === 0) break;
      if ((++i & (PAGES_PER_TIME_CHECK - 1)) === 0) {
        const t = now();
        if (t - t0 > MAX_WAIT_MS) break;
        if (t - slice > this.yieldEveryMs) {
          await w.flush();
          await yieldNow();
          this.checkRunning(w);
          slice = now();
        }
      }
    }
    saver.enc.eos(w);
    this.partEos++;
    encodeFooter(w, RAM_SECTION_ID);
    await w.flush();
    await yieldNow();
  }

  /**
   * ram.transferred as QEMU 7.2 counts it: RAM page records only (header and
   * payload of ZERO, PAGE and XBZRLE) plus 8 bytes per PART's EOS — not the
   * setup record, section headers, commands, device state or the END's EOS.
   * The rate limiter and mbps use every byte written instead, as QEMU does.
   */
  protected ramTransferred(): number {
    return (this.saver?.counters.pageBytes ?? 0) + 8 * this.partEos;
  }

  /** The bandwidth limit in force: max-postcopy-bandwidth (0 = none) once in postcopy. */
  protected bandwidthLimit(): number {
    return this.saver?.inPostcopy ? (this.parameters.maxPostcopyBandwidth ?? 0) : this.parameters.maxBandwidth;
  }

  protected rateLimited(): boolean {
    const max = this.bandwidthLimit();
    if (max <= 0 || max >= Number.MAX_SAFE_INTEGER) return false;
    return this.writer!.transferred - this.rates.iterBytes >= max / XFER_LIMIT_RATIO;
  }

  /** Sleeps out the window when its budget is spent (a request or wake() ends it early), then updates the counters. */
  protected async rateLimit(): Promise<void> {
    if (this.rateLimited() && this.saver!.urgent.length === 0) {
      const left = this.rates.iterStart + BUFFER_DELAY_MS - now();
      if (left > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, left);
          function done(): void {
            clearTimeout(t);
            resolve();
          }
          this.wake = done;
        });
        this.wake = undefined;
      }
    }
    if (now() >= this.rates.iterStart + BUFFER_DELAY_MS) {
      this.rates.updateCounters(now(), this.writer!.transferred, this.totalPages(), this.saver!.dirtyPages, this.parameters.downtimeLimit);
    }
  }

  /** QEMU's migration_bitmap_sync: collect dirty bits, pass count, rates once per second. */
  protected bitmapSync(): void {
    const saver = this.saver!;
    let newly = 0;
    for (let i = 0; i < saver.bitmaps.length; i++) newly += this.guest.syncDirty(i, saver.bitmaps[i]!);
    saver.recount();
    this.dirtySyncCount++;
    saver.generation = this.dirtySyncCount;
    const period = this.rates.onSync(now(), newly, this.writer!.transferred, saver, this.capabilities.xbzrle);
    if (period && this.capabilities.autoConverge) this.throttle.onPeriod(period.xfer, period.dirty);
    if (this.capabilities.events) this.emit('MIGRATION_PASS', { pass: this.dirtySyncCount });
  }

  /** Sends every dirty page left (served requests first), yielding now and then. */
  protected async sendRemaining(lastStage: boolean): Promise<void> {
    const w = this.writer!;
    const saver = this.saver!;
    let i = 0;
    let slice = now();
    while (saver.sendNext(w, lastStage) !== 0) {
      if ((++i & (PAGES_PER_TIME_CHECK - 1)) === 0 && now() - slice > this.yieldEveryMs) {
        await w.flush();
        await yieldNow();
        this.checkRunning(w);
        slice = now();
      }
    }
  }

  /** Waits for SHUT on the return path and throws unless it is SHUT(0) on a good path. */
  protected async awaitShut(): Promise<void> {
    const rp = this.rp;
    if (!rp) return;
    await rp.done;
    if (rp.shutValue === undefined) {
      throw new PostcopyError('RETURN_PATH', rp.error?.message ?? 'Return path closed before SHUT');
    }
    if (rp.shutValue !== 0) throw new PostcopyError('RETURN_PATH', `Destination reported failure (SHUT ${rp.shutValue})`);
    if (rp.error) throw rp.error;
  }

  /** Stop the guest, last pass (END), devices (FULL), EOF, vmdesc, wait for SHUT. */
  protected async complete(opts: MigrateOptions): Promise<void> {
    const w = this.writer!;
    const saver = this.saver!;
    this.downtimeStart = now();
    await this.guest.stop();
    this.guestStopped = true;
    this.precopyBytes = this.ramTransferred();
    if (this.capabilities.pauseBeforeSwitchover) {
      this.statusPort.transition('active', 'pre-switchover');
      await new Promise<void>((r) => (this.continueResolve = r));
      this.continueResolve = undefined;
      this.checkRunning();
      this.statusPort.transition('pre-switchover', 'device');
    }
    this.checkRunning();
    this.bitmapSync();
    encodeSection(w, { kind: 'end', sectionId: RAM_SECTION_ID });
    await this.sendRemaining(true);
    saver.enc.eos(w);
    encodeFooter(w, RAM_SECTION_ID);
    const devs = resolveDevices(opts);
    encodeDevices(w, devs);
    encodeSection(w, { kind: 'eof' });
    if (opts.vmdesc ?? true) encodeSection(w, { kind: 'vmdesc', json: vmdescJson(devs) });
    await w.flush();
    this.downtimeBytes = this.ramTransferred() - this.precopyBytes;
    this.throttle.stop();
    this.guest.stopDirtyLog?.();
    await this.awaitShut();
    this.checkRunning();
    const end = now();
    this.totalTime = end - this.startTime;
    this.downtime = end - this.downtimeStart;
    this.finishRates();
    this.statusPort.transition(this.capabilities.pauseBeforeSwitchover ? 'device' : 'active', 'completed');
    this.channel!.end();
  }

  /** mbps over the whole migration (QEMU's final figure). */
  protected finishRates(): void {
    const transferTime = this.totalTime - this.setupTime;
    if (transferTime > 0) this.rates.mbps = (this.writer!.transferred * 8) / transferTime / 1000;
  }
}
