/**
 * PreemptDestination: a MigrationDestination that also reads a
 * postcopy-preempt channel (SPEC §6.5): the second connection the source
 * opens, carrying only requested pages as raw RAM records until EOS. Its
 * pages are placed with the postcopy rules and resolve faults exactly like
 * pages from the main channel.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { ChannelReader } from '../engine/bytes.js';
import { MigrationDestination } from '../destination/destination.js';
import { PreemptReceiver } from './channel.js';

/** Loader yield period in postcopy with a preempt channel, ms (QEMU reads it in a thread of its own). */
export const PREEMPT_LOADER_YIELD_MS = 0.1;

/** A MigrationDestination with a postcopy-preempt channel. */
export class PreemptDestination extends MigrationDestination {
  private receiver: PreemptReceiver | undefined;
  private preemptChannel: Duplex | undefined;
  /** Pages placed by the receivers of earlier preempt channels (before a recovery). */
  private pagesBefore = 0;
  /** The current preempt channel read to its EOS (undefined once a pause dropped it). */
  private receiving: Promise<void> | undefined;

  constructor(...args: ConstructorParameters<typeof MigrationDestination>) {
    super(...args);
    // QEMU's destination closes the preempt channel too when it pauses; a recovery brings a new one.
    this.on('paused', () => {
      this.receiving = undefined;
      this.preemptChannel?.destroy();
    });
  }

  /**
   * The main channel's EOF ends the postcopy only once the preempt channel
   * has been read to its EOS, which the source sends first (QEMU's
   * destination joins its preempt thread before it completes): its last
   * pages may still be in the socket when the main channel ends.
   */
  protected override async postcopyEnd(): Promise<void> {
    await this.receiving;
  }

  /** Pages placed from preempt channels so far (all channels of this migration). */
  get preemptPages(): number {
    return this.pagesBefore + (this.receiver?.pages ?? 0);
  }

  /**
   * Reads `channel` as the preempt channel until its EOS. Resolves at EOS; a
   * broken or malformed channel pauses the migration while postcopy runs
   * (postcopy-active), and fails it before that, as an error on the main
   * channel would; the promise then rejects with the error. After a
   * recovery the new preempt connection is attached again (it replaces the
   * old one; the page count goes on).
   */
  async attachPreempt(channel: Duplex): Promise<void> {
    if (this.preemptChannel && this.preemptChannel !== channel) this.preemptChannel.destroy();
    this.preemptChannel = channel;
    this.pagesBefore += this.receiver?.pages ?? 0;
    if (channel instanceof Socket) channel.setNoDelay(true);
    channel.on('error', () => undefined);
    // The main channel's loader yields often from now on: the preempt channel is read only when it does.
    this.ram.postcopyYieldMs = PREEMPT_LOADER_YIELD_MS;
    const rx = (this.receiver = new PreemptReceiver({
      block: (idstr) => {
        const block = this.ram.block(idstr);
        return block && { block, bits: this.ram.received.get(idstr)! };
      },
      accepting: () => this.pcState === 'listening' || this.pcState === 'running',
      placed: (idstr, page) => this.ram.onPlaced?.(idstr, page),
    }));
    const run = rx.run(new ChannelReader(channel));
    this.receiving = run;
    // the error is handled below; postcopyEnd() only needs to know the channel is done
    run.catch(() => undefined);
    try {
      await run;
    } catch (e) {
      // a channel replaced by a recovery's is no reason to pause
      if (this.preemptChannel !== channel) throw e;
      if (this.status === 'postcopy-active') this.pause();
      else if (this.status === 'active') this.channel?.destroy(e instanceof Error ? e : undefined);
      throw e;
    }
  }
}
