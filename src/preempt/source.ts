/**
 * PreemptSource: a MigrationSource that serves page requests on a
 * postcopy-preempt channel (SPEC §6.5) when one is installed. A requested
 * page is claimed from the dirty bitmap (so the background scan never sends
 * it again) and written on the preempt channel at once, from the return-path
 * handler itself: it waits neither for the sender loop nor behind the
 * background bytes queued in the main channel. Pages already sent are
 * skipped, as QEMU does. After the last background page an EOS word ends
 * the preempt channel (before the main channel's EOF, as QEMU 7.2 does).
 *
 * Without a preempt channel (or once it broke, or after a pause) requests
 * go through the ordinary urgent queue on the main channel.
 */
import type { Duplex } from 'node:stream';
import { Socket } from 'node:net';
import { PostcopyError } from '../errors.js';
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import type { SourceGuest } from '../engine/ports.js';
import type { MigrationStatus } from '../engine/status.js';
import { MigrationSource, type MigrateOptions, type SourceOptions } from '../source/source.js';
import type { PageRequest } from '../source/return-path.js';
import { PreemptSender } from './channel.js';
import type { ChannelReader } from '../engine/bytes.js';
import type { ReturnPathHandlers } from '../source/return-path.js';
import { UrgentServer } from './urgent/urgent-server.js';
import { checkFaultPriority, type ThreadPriority } from '../threads.js';
import { Counter, type UrgentBlock } from './urgent/messages.js';

const TP = TARGET_PAGE_SIZE;
/** Sender yield period in postcopy with a preempt channel, ms (QEMU's is a thread: it needs none). */
export const PREEMPT_YIELD_EVERY_MS = 0.1;

/** Construction options: the source's, plus the sender's yield period once a preempt channel serves requests. */
export interface PreemptSourceOptions extends SourceOptions {
  /** ms, default PREEMPT_YIELD_EVERY_MS: a page request is read only when the sender yields. */
  preemptYieldMs?: number;
  /**
   * Serve page requests from a worker thread that reads the return path and
   * writes the preempt channel (preempt/urgent/), so a request waits for
   * neither the sender's event loop nor its bytes. Used when both channels
   * are sockets, guest RAM is shared memory and the native helper is built;
   * POSTCOPY_URGENT_WORKER=0 turns it off too. Default true.
   */
  urgentWorker?: boolean;
  /**
   * Nice value (-20…19) of the urgent worker's thread, which serves page
   * requests: with the background stream keeping both CPUs of a small host
   * busy, a request otherwise waits up to a scheduler slice for a CPU (see
   * urgentStats.priority). Raising it needs CAP_SYS_NICE; when that is
   * refused the worker runs on at its old value. Default: left as it is.
   */
  faultPriority?: number;
  /** Benchmarks: the urgent worker records when it read each of the first N page requests (urgentRequestTimes). */
  traceUrgentRequests?: number;
}

/** A MigrationSource with a postcopy-preempt channel. */
export class PreemptSource extends MigrationSource {
  private preempt: PreemptSender | undefined;
  private preemptChannel: Duplex | undefined;
  private pagesOnPreempt = 0;
  /** Serves page requests in a worker thread, when it can (urgent/urgent-server.ts). */
  private urgent: UrgentServer | undefined;
  /** Set once the preempt channel is being ended: the worker serves no more. */
  private urgentEnded = false;
  /** The urgent worker's counters as last folded into ours. */
  private readonly folded = new Float64Array(Counter.SIZE);

  constructor(guest: SourceGuest, opts: PreemptSourceOptions = {}) {
    checkFaultPriority(opts.faultPriority);
    super(guest, opts);
    this.on('paused', () => this.dropPreempt());
    // From the switchover on the sender yields often: the return path (and so
    // a page request) is read only when it does.
    this.on('switchover', () => {
      if (!this.preempt?.usable) return;
      this.yieldEveryMs = opts.preemptYieldMs ?? PREEMPT_YIELD_EVERY_MS;
      if (opts.urgentWorker !== false && !this.urgent && UrgentServer.sharable(this.urgentBlocks())) {
        this.urgent = UrgentServer.create(opts.traceUrgentRequests, opts.faultPriority);
        const c = this.urgent?.counters;
        if (c) this.saver!.shareClaims(() => c[Counter.CLAIMED]!);
      }
    });
  }

  private urgentBlocks(): UrgentBlock[] {
    const saver = this.saver;
    if (!saver) return [];
    return this.guest.blocks.map((b, i) => ({ idstr: b.idstr, usedLength: b.usedLength, bytes: b.bytes, dirty: saver.bitmaps[i]! }));
  }

  /**
   * Requests and pages the urgent worker served: runs, requests, pages sent;
   * with faultPriority, its thread's nice value and why it is not the one
   * asked for (once the worker started). Undefined without one.
   */
  get urgentStats(): { runs: number; requests: number; pages: number; priority?: ThreadPriority } | undefined {
    const u = this.urgent;
    return u && { runs: u.runs, requests: u.counters[Counter.REQUESTS]!, pages: u.counters[Counter.CLAIMED]!, ...(u.priority && { priority: u.priority }) };
  }

  /** With `traceUrgentRequests`: [request start, process.hrtime ns when the urgent worker read it]. */
  get urgentRequestTimes(): Array<[number, number]> {
    return this.urgent?.requestTimes() ?? [];
  }

  /** Adds what the urgent worker did since the last call to this source's counters. */
  protected override syncServedElsewhere(): void {
    const c = this.urgent?.counters;
    if (!c) return;
    const d = (i: number): number => {
      const v = c[i]! - this.folded[i]!;
      this.folded[i] = c[i]!;
      return v;
    };
    this.postcopyRequests += d(Counter.REQUESTS);
    this.pagesOnPreempt += d(Counter.CLAIMED);
    const saver = this.saver;
    if (saver) {
      saver.urgentSkipped += d(Counter.SKIPPED);
      saver.releasedPages += d(Counter.RELEASED);
      saver.foldClaims();
    }
    if (this.preempt) this.preempt.transferred += d(Counter.BYTES);
  }

  protected override returnPathHandlers(): ReturnPathHandlers {
    return { ...super.returnPathHandlers(), offload: (r, last) => this.offloadRequests(r, last) };
  }

  /** The return path at a message boundary: the urgent worker reads it while it can. */
  private async offloadRequests(r: ChannelReader, lastReqBlock: string | undefined): Promise<{ requests: number; lastReqBlock: string | undefined } | undefined> {
    const u = this.urgent;
    const p = this.preempt;
    const ch = this.channel;
    const pch = this.preemptChannel;
    if (!u || this.urgentEnded || !p?.usable || !ch || !pch || !this.guestHandedOver || this.status !== 'postcopy-active' || !this.saver) return undefined;
    const before = u.counters[Counter.REQUESTS]!;
    const stop = await u.run(ch, r, pch, this.urgentBlocks(), lastReqBlock, this.saver.releaseAfterSend);
    if (!stop) return undefined;
    // the next page written on this thread names its block again
    p.resetLastBlock();
    if (stop.preemptBroken && this.preempt === p) this.dropPreempt();
    this.syncServedElsewhere();
    return { requests: u.counters[Counter.REQUESTS]! - before, lastReqBlock: stop.lastReqBlock };
  }

  /** The sender's current yield period, ms. */
  get senderYieldMs(): number {
    return this.yieldEveryMs;
  }

  /** Requested pages sent on preempt channels so far (this migration). */
  get preemptPages(): number {
    this.syncServedElsewhere();
    return this.pagesOnPreempt;
  }

  /**
   * Installs the preempt channel (the second connection to the destination).
   * Set it before the switchover or after a resume; it is dropped at a pause.
   */
  setPreemptChannel(channel: Duplex): void {
    this.dropPreempt();
    if (channel instanceof Socket) channel.setNoDelay(true);
    channel.on('error', () => {
      if (this.preemptChannel === channel) this.dropPreempt();
    });
    this.preemptChannel = channel;
    this.preempt = new PreemptSender(channel, this.ops);
  }

  private dropPreempt(): void {
    // the worker's duplicate would keep the connection open
    this.urgent?.abort();
    this.preemptChannel?.destroy();
    this.preemptChannel = undefined;
    this.preempt = undefined;
  }

  protected override queuePageRequest(req: PageRequest): void {
    const p = this.preempt;
    const saver = this.saver;
    if (!p?.usable || !saver || !this.guestHandedOver || this.status !== 'postcopy-active') {
      super.queuePageRequest(req);
      return;
    }
    const index = this.guest.blocks.findIndex((b) => b.idstr === req.idstr);
    if (index < 0) throw new PostcopyError('RETURN_PATH', `Unknown block name: ${req.idstr}`);
    const block = this.guest.blocks[index]!;
    if (req.length === 0 || req.start + req.length > block.usedLength) {
      throw new PostcopyError('RETURN_PATH', `Request out of range: ${req.idstr} 0x${req.start.toString(16)}+0x${req.length.toString(16)}`);
    }
    this.postcopyRequests++;
    for (let off = req.start; off < req.start + req.length; off += TP) {
      if (!saver.claim(index, off / TP)) {
        saver.urgentSkipped++;
        continue;
      }
      p.sendPage(block, off);
      this.pagesOnPreempt++;
      if (saver.releaseAfterSend) {
        block.bytes.fill(0, off, off + TP);
        saver.releasedPages++;
      }
    }
  }

  /**
   * As MigrationSource.migrate(); once it ended (completed, failed or
   * cancelled) the preempt channel is closed too (it carries an EOS only when
   * postcopy ran to completion, as QEMU's does).
   */
  override async migrate(channel: Duplex, opts?: MigrateOptions): Promise<MigrationStatus> {
    try {
      return await super.migrate(channel, opts);
    } finally {
      this.syncServedElsewhere();
      this.urgent?.close();
      this.preemptChannel?.end();
      this.preempt = undefined;
      this.preemptChannel = undefined;
    }
  }

  /** As MigrationSource.resume(), once the urgent worker let go of the old channels (it claims pages until then). */
  override async resume(channel: Duplex): Promise<void> {
    await this.urgent?.idle();
    return super.resume(channel);
  }

  /** In postcopy, after the last background page: EOS on the preempt channel. */
  protected override async sendRemaining(lastStage: boolean): Promise<void> {
    await super.sendRemaining(lastStage);
    if (this.saver?.inPostcopy && this.preempt?.usable) {
      // No page may follow the EOS: the worker stops (its writes flushed) and is not offered the stream again.
      this.urgentEnded = true;
      this.urgent?.abort();
      await this.urgent?.idle();
      this.syncServedElsewhere();
      if (this.preempt?.usable) await this.preempt.end();
    }
  }
}
