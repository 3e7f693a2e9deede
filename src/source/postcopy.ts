/**
 * The postcopy layer of the source (SPEC §6.1–6.5, §7): the switchover at an
 * iteration boundary, the postcopy iteration (requested pages first, then the
 * background scan from the requested location, each page once), END + EOF
 * and SHUT, pause on I/O loss (postcopy-paused, never failed), the keepalive,
 * and resume on a new channel through the recovery handshake.
 */
import type { Duplex } from 'node:stream';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { KEEPALIVE_PING_VALUE, PingValue } from '../wire/constants.js';
import { PostcopyError } from '../errors.js';
import { encodeCommand } from '../wire/command.js';
import { encodeFooter, encodeSection } from '../wire/stream.js';
import { StreamWriter } from '../wire/writer.js';
import { MIGRATE_ERRORS } from '../control/migrate-args.js';
import {
  KEEPALIVE_INTERVAL_MS,
  KEEPALIVE_TIMEOUT_MS,
  POSTCOPY_YIELD_EVERY_MS,
  RECOVERY_TIMEOUT_MS,
} from './options.js';
import { now, RAM_SECTION_ID, resolveDevices, SourceCore, type MigrateOptions } from './core.js';
import type { ReturnPathHandlers, SourceReturnPath } from './return-path.js';
import { encodePackage, sendDiscards, type DiscardSummary } from './switchover.js';
import { Keepalive } from './keepalive.js';
import { installNotReceived, RecoveryHandshake } from './recovery.js';

/** Payload of the 'switchover' event. */
export interface SwitchoverEvent {
  /** Guest stop → package on the wire, ms. */
  downtimeMs: number;
  /** What was discarded. */
  discards: DiscardSummary;
  /** Bytes of the PACKAGED blob. */
  packageBytes: number;
}

/** Error codes that end a postcopy migration as failed rather than pausing it. */
const FATAL_CODES = new Set(['RETURN_PATH', 'CANCELLED', 'PROTOCOL', 'ILLEGAL_TRANSITION']);

function isFatal(e: unknown): boolean {
  return e instanceof PostcopyError && FATAL_CODES.has(e.code);
}

/** Postcopy on top of the precopy engine. */
export abstract class PostcopySource extends SourceCore {
  /** migrate-start-postcopy was issued. */
  protected postcopyRequested = false;
  /** The package (with RUN) is on the wire: the guest belongs to the destination now. */
  private handedOver = false;
  private keepalive: Keepalive | undefined;
  private pingDue = false;
  private recovery: RecoveryHandshake | undefined;
  private resumed: { promise: Promise<void>; resolve: () => void } | undefined;
  /** The channel of a recovery handshake in progress. */
  private recoveryChannel: Duplex | undefined;
  /** Bytes written on channels that were replaced by resume(). */
  /** Times the migration paused. */
  pauseCount = 0;
  /** Why the migration last paused. */
  lastPauseReason: string | undefined;

  protected get guestHandedOver(): boolean {
    return this.handedOver;
  }


  /** The keepalive PINGs requested so far (tests). */
  get keepalivePings(): number {
    return this.keepalive?.pings ?? 0;
  }

  protected postcopyDue(): boolean {
    return this.postcopyRequested && this.capabilities.postcopyRam === true;
  }

  protected returnPathHandlers(): ReturnPathHandlers {
    return {
      onPageRequest: (req) => this.queuePageRequest(req),
      onMessage: () => this.keepalive?.touch(),
      recvBitmapSize: (idstr) => this.recovery?.bitmapSize(idstr),
      onRecvBitmap: (idstr, bitmap) => this.recovery?.onBitmap(idstr, bitmap),
      onResumeAck: (value) => this.recovery?.onAck(value),
    };
  }

  protected watchReturnPath(rp: SourceReturnPath): void {
    void rp.done.then(() => {
      if (rp === this.rp && rp.ioError && this.handedOver) {
        this.enterPaused(`return path: ${rp.error?.message ?? 'closed'}`);
      }
    });
  }

  /**
   * Moves postcopy-active → postcopy-paused: stops the keepalive, forgets
   * queued requests (the destination re-requests after RESUME_ACK, §6.4),
   * shuts the channel, emits 'paused'. False when not postcopy-active.
   */
  protected enterPaused(reason: string): boolean {
    // Before the package is out a failure is fatal (QEMU's postcopy_start fails).
    if (this.status !== 'postcopy-active' || !this.handedOver) return false;
    if (!this.statusPort.transition('postcopy-active', 'postcopy-paused')) return false;
    this.keepalive?.stop();
    this.saver?.urgent.splice(0);
    this.pingDue = false;
    this.pauseCount++;
    this.lastPauseReason = reason;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.resumed = { promise, resolve };
    this.shutdownChannel();
    this.emit('paused', { reason });
    this.wake?.();
    return true;
  }

  /** Switchover, then postcopy iteration until completed (or a fatal error). */
  protected async postcopyPhase(opts: MigrateOptions): Promise<void> {
    await this.switchover(opts);
    await this.postcopyLoop();
  }

  /** SPEC §6.2 in QEMU's order. */
  private async switchover(opts: MigrateOptions): Promise<void> {
    const w = this.writer!;
    const saver = this.saver!;
    this.postcopyRequested = false;
    this.downtimeStart = now();
    if (this.capabilities.pauseBeforeSwitchover) {
      await this.guest.stop();
      this.guestStopped = true;
      this.statusPort.transition('active', 'pre-switchover');
      await new Promise<void>((r) => (this.continueResolve = r));
      this.continueResolve = undefined;
      this.checkRunning();
      this.statusPort.transition('pre-switchover', 'postcopy-active');
    } else {
      if (!this.statusPort.transition('active', 'postcopy-active')) this.checkRunning();
      await this.guest.stop();
      this.guestStopped = true;
    }
    this.precopyBytes = this.ramTransferred();
    this.throttle.stop();
    this.checkRunning();
    this.bitmapSync();
    this.guest.stopDirtyLog?.();
    saver.enterPostcopy();
    const discards = sendDiscards(w, saver);
    saver.resetLastBlock();
    this.yieldEveryMs = POSTCOPY_YIELD_EVERY_MS;
    encodeCommand(w, { kind: 'ping', value: PingValue.BEFORE_PACKAGE });
    const blob = encodePackage(resolveDevices(opts));
    encodeCommand(w, { kind: 'packaged', length: blob.length });
    w.bytes(blob);
    encodeCommand(w, { kind: 'ping', value: PingValue.AFTER_PACKAGE });
    await w.flush();
    this.handedOver = true;
    this.downtime = now() - this.downtimeStart;
    this.downtimeBytes = this.ramTransferred() - this.precopyBytes;
    // max-postcopy-bandwidth from here on: a fresh window.
    this.rates.iterStart = now();
    this.rates.iterBytes = w.transferred;
    if (this.capabilities.releaseRam) {
      saver.releaseClean();
      saver.releaseAfterSend = true;
    }
    this.startKeepalive();
    const ev: SwitchoverEvent = { downtimeMs: this.downtime, discards, packageBytes: blob.length };
    this.emit('switchover', ev);
  }

  private startKeepalive(): void {
    this.keepalive ??= new Keepalive(
      this.opts.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS,
      this.opts.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS,
      {
        pingDue: () => {
          this.pingDue = true;
          this.wake?.();
        },
        timeout: (ms) => this.enterPaused(`return path silent for ${Math.round(ms)} ms`),
      },
    );
    this.keepalive.start();
  }

  /** PART sections until nothing is dirty, END + EOF, SHUT; pauses and waits for resume() on I/O loss. */
  private async postcopyLoop(): Promise<void> {
    for (;;) {
      const w = this.writer!;
      try {
        this.checkRunning(w);
        const saver = this.saver!;
        while (saver.dirtyPages > 0) {
          if (this.pingDue) {
            this.pingDue = false;
            encodeCommand(w, { kind: 'ping', value: KEEPALIVE_PING_VALUE });
          }
          await this.iterate();
          await this.rateLimit();
          this.checkRunning(w);
        }
        // SPEC §6.2 step 11: END (whatever is left), EOF, no vmdesc.
        encodeSection(w, { kind: 'end', sectionId: RAM_SECTION_ID });
        await this.sendRemaining(false);
        saver.enc.eos(w);
        encodeFooter(w, RAM_SECTION_ID);
        encodeSection(w, { kind: 'eof' });
        await w.flush();
        this.keepalive?.touch();
        const rp = this.rp!;
        await rp.done;
        if (this.status !== 'postcopy-active' || rp.ioError) {
          throw new PostcopyError('IO', rp.error?.message ?? 'paused before SHUT');
        }
        await this.awaitShut();
        break;
      } catch (e) {
        if (isFatal(e) || !this.handedOver) throw e;
        // An error from a channel that resume() already replaced: carry on with the new one.
        if (this.writer !== w) continue;
        this.enterPaused(e instanceof Error ? e.message : String(e));
        if (this.status !== 'postcopy-paused' && this.status !== 'postcopy-recover') throw e;
        await this.resumed!.promise;
        // Let requests the destination re-sent right after RESUME_ACK be queued first.
        await yieldNow();
      }
    }
    this.keepalive?.stop();
    const end = now();
    this.totalTime = end - this.startTime;
    this.finishRates();
    this.statusPort.transition('postcopy-active', 'completed');
    this.channel!.end();
  }

  /**
   * migrate_cancel once the guest runs on the destination: cancelling →
   * cancelled, the channel shut down, the guest NOT resumed here (it lives on
   * the destination, which pauses). QEMU 7.2 does this from postcopy-active;
   * from postcopy-paused/-recover it enters cancelling and stays there (its
   * migration thread waits for a resume that never comes) — we finish the
   * cancel instead. False when the status is not a postcopy one.
   */
  protected cancelPostcopy(): boolean {
    const s = this.status;
    if (s !== 'postcopy-active' && s !== 'postcopy-paused' && s !== 'postcopy-recover') return false;
    this.statusPort.transition(s, 'cancelling');
    this.keepalive?.stop();
    this.shutdownChannel();
    if (this.recoveryChannel) this.shutdownChannel(this.recoveryChannel);
    this.wake?.();
    // a loop parked in the pause wakes up, sees 'cancelling' and ends cancelled
    this.resumed?.resolve();
    return true;
  }

  /**
   * migrate-pause: only in postcopy-active ("migrate-pause is currently only
   * supported during postcopy-active state"); shuts the channel → postcopy-paused.
   */
  pause(): void {
    if (this.status !== 'postcopy-active') throw new PostcopyError('STATE', MIGRATE_ERRORS.pauseNotPostcopy);
    // During the switchover itself the cut makes it fail.
    if (!this.enterPaused('migrate-pause')) this.shutdownChannel();
  }

  /**
   * migrate {resume: true}: the recovery handshake on `channel` (SPEC §7.2).
   * Only in postcopy-paused ("Cannot resume if there is no paused
   * migration"), not with release-ram. Resolves at postcopy-active; on a
   * handshake failure the status returns to postcopy-paused and it rejects
   * (a later resume() may succeed).
   */
  async resume(channel: Duplex): Promise<void> {
    if (this.status !== 'postcopy-paused') throw new PostcopyError('STATE', MIGRATE_ERRORS.resumeNotPaused);
    if (this.capabilities.releaseRam) throw new PostcopyError('STATE', MIGRATE_ERRORS.resumeReleaseRam);
    this.statusPort.transition('postcopy-paused', 'postcopy-recover');
    const saver = this.saver!;
    const hs = (this.recovery = new RecoveryHandshake(this.guest.blocks, this.opts.recoveryTimeoutMs ?? RECOVERY_TIMEOUT_MS));
    const w = new StreamWriter(channel);
    this.recoveryChannel = channel;
    const rp = this.openReturnPath(channel, true, this.rp?.lastBlock);
    const fresh = saver.bitmaps.map((b) => new Uint32Array(b.length));
    try {
      await hs.run(w, rp, (i, received) => installNotReceived(received, fresh[i]!, saver.pages[i]!));
    } catch (e) {
      this.recovery = undefined;
      this.recoveryChannel = undefined;
      this.shutdownChannel(channel);
      const reason = e instanceof Error ? e.message : String(e);
      if (this.statusPort.transition('postcopy-recover', 'postcopy-paused')) {
        this.lastPauseReason = reason;
        this.emit('paused', { reason });
      }
      throw e instanceof PostcopyError ? e : new PostcopyError('RECOVERY', reason, { cause: e });
    }
    this.recovery = undefined;
    this.recoveryChannel = undefined;
    if (this.statusPort.status !== 'postcopy-recover') throw new PostcopyError('CANCELLED', 'migration cancelled');
    rp.recovering = false;
    // NOT(received) replaces the dirty bitmap; the next record names its block.
    fresh.forEach((f, i) => saver.bitmaps[i]!.set(f));
    saver.recount();
    saver.resetLastBlock();
    saver.resetScan();
    this.channel = channel;
    this.writer = w;
    this.rp = rp;
    this.rates.iterStart = now();
    this.rates.iterBytes = w.transferred;
    this.statusPort.transition('postcopy-recover', 'postcopy-active');
    this.startKeepalive();
    this.emit('resumed', {});
    this.resumed?.resolve();
  }
}
