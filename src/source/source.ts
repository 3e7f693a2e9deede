/**
 * MigrationSource: the outgoing precopy state machine (SPEC §1.5, §3.4,
 * §4.3). none → setup → active → [pre-switchover →] device → completed,
 * or failed / cancelling → cancelled. Iterates in 100 ms bandwidth windows
 * under max-bandwidth, completes when the pending dirty bytes fit into
 * bandwidth × downtime-limit.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { PingValue, RAM_SECTION_IDSTR, RAM_SECTION_VERSION, TARGET_PAGE_SIZE } from '../wire/constants.js';
import { PostcopyError } from '../errors.js';
import { ChannelReader } from '../engine/bytes.js';
import { vmdescJson } from './vmdesc-json.js';
import { StreamWriter } from '../wire/writer.js';
import { encodeConfiguration, encodeFooter, encodeHeader, encodeSection } from '../wire/stream.js';
import { encodeCommand } from '../wire/command.js';
import type { DeviceSection, PageOps, SourceGuest } from '../engine/ports.js';
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
  type SourceCapabilities,
  type SourceParameters,
} from './options.js';
import { RamSaver } from './ram-saver.js';
import { SourceReturnPath, type PageRequest } from './return-path.js';
import type { MigrationStats, SourceMigrationInfo } from './stats.js';
import { emptyMigrationStats, sourceMigrationInfo } from '../control/info.js';
import { AutoConverge } from './throttle.js';
import { SourceRates } from './rates.js';

const TP = TARGET_PAGE_SIZE;
/** Section id of "ram" (QEMU's, §11). Device sections are numbered after it. */
export const RAM_SECTION_ID = 2;
/** Longest synchronous stretch of the sender before it yields, ms. */
const YIELD_EVERY_MS = 8;

/** Options of one outgoing migration. */
export interface MigrateOptions {
  /** Machine type name for the configuration section (`none` imitates -M none). */
  machineName?: string;
  /** Device sections sent FULL at completion; called after the guest stopped. */
  devices?: readonly DeviceSection[] | (() => readonly DeviceSection[]);
  /** Write the VMDESCRIPTION after EOF (default true; QEMU's !suppress-vmdesc). */
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
}

const now = (): number => performance.now();

/**
 * The outgoing side. Events: 'MIGRATION_PASS' {pass} (events capability
 * on), 'throttle' (percent); status events come from the status holder.
 */
export class MigrationSource extends EventEmitter {
  readonly capabilities: SourceCapabilities;
  readonly parameters: SourceParameters;
  readonly statusPort: StatusPort;
  private readonly ops: PageOps;
  private saver: RamSaver | undefined;
  private writer: StreamWriter | undefined;
  private channel: Duplex | undefined;
  private rp: SourceReturnPath | undefined;
  private errorDesc: string | undefined;
  private continueResolve: (() => void) | undefined;
  private wake: (() => void) | undefined;
  private throttle: AutoConverge;
  private guestStopped = false;
  // timing (ms, performance.now base)
  private startTime = 0;
  private setupTime = 0;
  private downtimeStart = 0;
  private totalTime = 0;
  private downtime = 0;
  private dirtySyncCount = 0;
  private precopyBytes = 0;
  private postcopyRequests = 0;
  private downtimeBytes = 0;
  private readonly rates = new SourceRates();

  constructor(
    readonly guest: SourceGuest,
    opts: SourceOptions = {},
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

  /** The return-path reader, when one is open. */
  get returnPath(): SourceReturnPath | undefined {
    return this.rp;
  }

  /**
   * Changes parameters during migration (migrate-set-parameters). A new
   * xbzrle-cache-size replaces the cache with an empty one.
   */
  setParameters(p: Partial<SourceParameters>): void {
    const resize = p.xbzrleCacheSize !== undefined && p.xbzrleCacheSize !== this.parameters.xbzrleCacheSize;
    Object.assign(this.parameters, p);
    if (resize) this.saver?.resizeCache(this.parameters.xbzrleCacheSize);
    this.wake?.();
  }

  /** migrate_cancel: cancelling → cancelled, the guest resumes. */
  cancel(): void {
    const s = this.status;
    if (s === 'setup' || s === 'active' || s === 'pre-switchover' || s === 'device') {
      this.statusPort.transition(s, 'cancelling');
      this.shutdownChannel();
      this.wake?.();
      this.continueResolve?.();
    }
  }

  /** migrate-continue from pre-switchover. */
  continue(state: MigrationStatus = 'pre-switchover'): void {
    if (this.status !== state) {
      throw new PostcopyError('STATE', `Migration not in expected state: ${this.status}`);
    }
    this.continueResolve?.();
  }

  /**
   * A page request from the return path: every target page of the range is
   * queued ahead of the background scan (already-sent pages are dropped when
   * dequeued). Throws (the return path turns bad) on an unknown block or a
   * range outside it, as QEMU does.
   */
  private queuePageRequest(req: PageRequest): void {
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

  private shutdownChannel(): void {
    const ch = this.channel as (Duplex & { shutdown?: () => void }) | undefined;
    if (!ch) return;
    if (typeof ch.shutdown === 'function') ch.shutdown();
    else ch.destroy();
  }

  /**
   * Runs a whole outgoing migration over `channel`. Resolves with the final
   * status (completed, failed or cancelled); never rejects for migration
   * errors — they end in `failed` with error-desc.
   */
  async migrate(channel: Duplex, opts: MigrateOptions = {}): Promise<MigrationStatus> {
    if (this.status !== 'none') throw new PostcopyError('STATE', 'There is a migration process in progress');
    this.channel = channel;
    this.startTime = now();
    this.statusPort.transition('none', 'setup');
    const onAbort = (): void => this.cancel();
    opts.signal?.addEventListener('abort', onAbort);
    try {
      if (opts.signal?.aborted) this.cancel();
      await this.run(channel, opts);
    } catch (e) {
      await this.fail(e);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    return this.status;
  }

  private async fail(e: unknown): Promise<void> {
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
    if (this.guestStopped) {
      this.guestStopped = false;
      await this.guest.resume();
    }
  }

  /** Throws when cancelled or the channel broke (a bad return path fails only at completion, as in QEMU). */
  private checkRunning(): void {
    if (this.status === 'cancelling') throw new PostcopyError('CANCELLED', 'migration cancelled');
    this.writer!.check();
  }

  private async run(channel: Duplex, opts: MigrateOptions): Promise<void> {
    const w = (this.writer = new StreamWriter(channel));
    const caps = this.capabilities;
    if (caps.returnPath) {
      this.rp = new SourceReturnPath(new ChannelReader(channel), { onPageRequest: (req) => this.queuePageRequest(req) });
    }
    encodeHeader(w);
    encodeConfiguration(w, { machineName: opts.machineName ?? 'none' });
    if (this.rp) {
      encodeSection(w, { kind: 'command', command: { kind: 'openReturnPath' } });
      encodeSection(w, { kind: 'command', command: { kind: 'ping', value: PingValue.AFTER_OPEN_RETURN_PATH } });
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
      await this.iterate();
      await this.rateLimit();
    }
    await this.complete(opts);
  }

  private totalPages(): number {
    const s = this.saver!;
    return s.counters.normal + s.counters.duplicate + s.xbzrle.pages;
  }

  /** One PART section: pages until the window budget is spent, 50 ms pass, or nothing is dirty. */
  private async iterate(): Promise<void> {
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
        if (t - slice > YIELD_EVERY_MS) {
          await w.flush();
          await yieldNow();
          this.checkRunning();
          slice = now();
        }
      }
    }
    saver.enc.eos(w);
    encodeFooter(w, RAM_SECTION_ID);
    await w.flush();
    await yieldNow();
  }

  private rateLimited(): boolean {
    const max = this.parameters.maxBandwidth;
    if (max <= 0 || max >= Number.MAX_SAFE_INTEGER) return false;
    return this.writer!.transferred - this.rates.iterBytes >= max / XFER_LIMIT_RATIO;
  }

  /** Sleeps out the window when its budget is spent, then updates the counters. */
  private async rateLimit(): Promise<void> {
    if (this.rateLimited()) {
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
  private bitmapSync(): void {
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

  /** Stop the guest, last pass (END), devices (FULL), EOF, vmdesc, wait for SHUT. */
  private async complete(opts: MigrateOptions): Promise<void> {
    const w = this.writer!;
    const saver = this.saver!;
    this.downtimeStart = now();
    await this.guest.stop();
    this.guestStopped = true;
    this.precopyBytes = w.transferred;
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
    let i = 0;
    let slice = now();
    while (saver.sendNext(w, true) !== 0) {
      if ((++i & (PAGES_PER_TIME_CHECK - 1)) === 0 && now() - slice > YIELD_EVERY_MS) {
        await w.flush();
        await yieldNow();
        this.checkRunning();
        slice = now();
      }
    }
    saver.enc.eos(w);
    encodeFooter(w, RAM_SECTION_ID);
    const devs = typeof opts.devices === 'function' ? opts.devices() : (opts.devices ?? []);
    let id = RAM_SECTION_ID + 1;
    for (const d of devs) {
      encodeSection(w, { kind: 'full', sectionId: id, idstr: d.idstr, instanceId: d.instanceId, versionId: d.versionId });
      w.bytes(d.payload);
      encodeFooter(w, id);
      id++;
    }
    encodeSection(w, { kind: 'eof' });
    if (opts.vmdesc ?? true) encodeSection(w, { kind: 'vmdesc', json: vmdescJson(devs) });
    await w.flush();
    this.downtimeBytes = w.transferred - this.precopyBytes;
    this.throttle.stop();
    this.guest.stopDirtyLog?.();
    if (this.rp) {
      await this.rp.done;
      if (this.rp.shutValue === undefined) {
        throw new PostcopyError('RETURN_PATH', this.rp.error?.message ?? 'Return path closed before SHUT');
      }
      if (this.rp.shutValue !== 0) throw new PostcopyError('RETURN_PATH', `Destination reported failure (SHUT ${this.rp.shutValue})`);
      if (this.rp.error) throw this.rp.error;
    }
    this.checkRunning();
    const end = now();
    this.totalTime = end - this.startTime;
    this.downtime = end - this.downtimeStart;
    const transferTime = this.totalTime - this.setupTime;
    if (transferTime > 0) this.rates.mbps = (w.transferred * 8) / transferTime / 1000;
    this.statusPort.transition(this.capabilities.pauseBeforeSwitchover ? 'device' : 'active', 'completed');
    const ch = this.channel as Duplex;
    ch.end();
  }

  /** query-migrate as QEMU shows it for the current status (control/'s builder). */
  queryMigrate(): SourceMigrationInfo {
    const status = this.status;
    const ms = (v: number): number => Math.round(v);
    const done = status === 'completed';
    const throttling = this.capabilities.autoConverge && this.throttle.percentage > 0;
    return sourceMigrationInfo({
      status,
      totalTime: ms(done ? this.totalTime : now() - this.startTime),
      setupTime: ms(this.setupTime),
      expectedDowntime: ms(this.rates.expectedDowntime),
      downtime: ms(this.downtime),
      ram: this.saver ? this.ramStats() : undefined,
      xbzrle: this.capabilities.xbzrle && this.saver ? this.saver.xbzrleStats() : undefined,
      cpuThrottlePercentage: throttling ? this.throttle.percentage : undefined,
      errorDesc: this.errorDesc ?? (status === 'failed' ? 'unknown error' : undefined),
    });
  }

  /** The xbzrle-cache record regardless of status (tests, completed migrations). */
  xbzrleStats(): ReturnType<RamSaver['xbzrleStats']> | undefined {
    return this.saver?.xbzrleStats();
  }

  /** MigrationStats ("ram"), in QEMU's member order. */
  ramStats(): MigrationStats {
    const s = this.saver;
    const transferred = this.writer?.transferred ?? 0;
    const stopped = this.guestStopped || this.status === 'completed';
    const normal = s?.counters.normal ?? 0;
    return Object.assign(emptyMigrationStats(TP), {
      total: this.guest.blocks.reduce((a, b) => a + b.usedLength, 0),
      'postcopy-requests': this.postcopyRequests,
      'dirty-sync-count': this.dirtySyncCount,
      'pages-per-second': Math.round(this.rates.pagesPerSecond),
      'downtime-bytes': stopped ? (this.status === 'completed' ? this.downtimeBytes : transferred - this.precopyBytes) : 0,
      remaining: (s?.dirtyPages ?? 0) * TP,
      mbps: this.rates.mbps,
      transferred,
      'precopy-bytes': stopped ? this.precopyBytes : transferred,
      duplicate: s?.counters.duplicate ?? 0,
      'dirty-pages-rate': this.rates.dirtyPagesRate,
      'normal-bytes': normal * TP,
      normal,
    });
  }
}
