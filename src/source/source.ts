/**
 * MigrationSource: the outgoing state machine (SPEC §1.5, §3.4, §4.3, §6,
 * §7). Precopy: none → setup → active → [pre-switchover →] device →
 * completed, or failed / cancelling → cancelled; iterates in 100 ms
 * bandwidth windows under max-bandwidth and completes when the pending dirty
 * bytes fit into bandwidth × downtime-limit. Postcopy (postcopy-ram):
 * startPostcopy() switches at the next iteration boundary → postcopy-active
 * ⇄ postcopy-paused → postcopy-recover → postcopy-active → completed.
 *
 * The machinery lives in core.ts (precopy) and postcopy.ts (switchover,
 * postcopy iteration, pause, resume).
 */
import type { Duplex } from 'node:stream';
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { PostcopyError } from '../errors.js';
import type { SourceGuest } from '../engine/ports.js';
import type { MigrationStatus } from '../engine/status.js';
import { MIGRATE_ERRORS } from '../control/migrate-args.js';
import type { SourceParameters } from './options.js';
import type { RamSaver } from './ram-saver.js';
import type { SourceReturnPath } from './return-path.js';
import type { MigrationStats, SourceMigrationInfo } from './stats.js';
import { emptyMigrationStats, sourceMigrationInfo } from '../control/info.js';
import { now, type MigrateOptions, type SourceOptions } from './core.js';
import { PostcopySource } from './postcopy.js';

export { RAM_SECTION_ID, type MigrateOptions, type SourceOptions } from './core.js';
export type { SwitchoverEvent } from './postcopy.js';

const TP = TARGET_PAGE_SIZE;

/**
 * The outgoing side. Events: 'MIGRATION_PASS' {pass} (events capability
 * on), 'throttle' (percent), 'switchover' {downtimeMs, discards,
 * packageBytes}, 'paused' {reason}, 'resumed' {}; status events come from
 * the status holder.
 */
export class MigrationSource extends PostcopySource {
  constructor(guest: SourceGuest, opts: SourceOptions = {}) {
    super(guest, opts);
  }

  /** The return-path reader, when one is open. */
  get returnPath(): SourceReturnPath | undefined {
    return this.rp;
  }

  /** Pages zeroed by release-ram so far. */
  get releasedPages(): number {
    return this.saver?.releasedPages ?? 0;
  }

  /** Requested pages that had already been sent (ignored). */
  get ignoredRequestPages(): number {
    return this.saver?.urgentSkipped ?? 0;
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

  /**
   * migrate_cancel: cancelling → cancelled; the guest resumes, unless it
   * already runs on the destination (postcopy states: it stays stopped here).
   */
  cancel(): void {
    if (this.cancelPostcopy()) return;
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
      throw new PostcopyError('STATE', MIGRATE_ERRORS.notExpectedState(this.status));
    }
    this.continueResolve?.();
  }

  /**
   * migrate-start-postcopy: sets the flag; the switch happens at the next
   * iteration boundary (SPEC §6.1). Throws PostcopyError('STATE') with
   * QEMU's text when postcopy-ram is off or no migration was started.
   * Harmless once switched or ended.
   */
  startPostcopy(): void {
    if (!this.capabilities.postcopyRam) throw new PostcopyError('STATE', MIGRATE_ERRORS.startPostcopyNotEnabled);
    if (this.status === 'none') throw new PostcopyError('STATE', MIGRATE_ERRORS.startPostcopyIdle);
    if (this.status === 'setup' || this.status === 'active') {
      this.postcopyRequested = true;
      this.wake?.();
    }
  }

  /**
   * Runs a whole outgoing migration over `channel`. Resolves with the final
   * status (completed, failed or cancelled); never rejects for migration
   * errors — they end in `failed` with error-desc. Stays pending across
   * postcopy-paused / postcopy-recover.
   */
  async migrate(channel: Duplex, opts: MigrateOptions = {}): Promise<MigrationStatus> {
    if (this.status !== 'none') throw new PostcopyError('STATE', MIGRATE_ERRORS.inProgress);
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
    this.syncServedElsewhere();
    const s = this.saver;
    const transferred = this.ramTransferred();
    const stopped = this.guestStopped || this.status === 'completed';
    const inPostcopy = this.guestHandedOver;
    const normal = s?.counters.normal ?? 0;
    let downtimeBytes = 0;
    if (inPostcopy || this.status === 'completed') downtimeBytes = this.downtimeBytes;
    else if (stopped) downtimeBytes = transferred - this.precopyBytes;
    return Object.assign(emptyMigrationStats(TP), {
      total: this.guest.blocks.reduce((a, b) => a + b.usedLength, 0),
      'postcopy-requests': this.postcopyRequests,
      'dirty-sync-count': this.dirtySyncCount,
      'pages-per-second': Math.round(this.rates.pagesPerSecond),
      'downtime-bytes': downtimeBytes,
      remaining: (s?.dirtyPages ?? 0) * TP,
      'postcopy-bytes': inPostcopy ? transferred - this.precopyBytes - this.downtimeBytes : 0,
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
