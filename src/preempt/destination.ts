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

  /** Pages placed from the preempt channel so far. */
  get preemptPages(): number {
    return this.receiver?.pages ?? 0;
  }

  /**
   * Reads `channel` as the preempt channel until its EOS. Resolves at EOS; a
   * broken or malformed channel pauses the migration while postcopy runs
   * (postcopy-active), and fails it before that, as an error on the main
   * channel would; the promise then rejects with the error.
   */
  async attachPreempt(channel: Duplex): Promise<void> {
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
    try {
      await rx.run(new ChannelReader(channel));
    } catch (e) {
      if (this.status === 'postcopy-active') this.pause();
      else if (this.status === 'active') this.channel?.destroy(e instanceof Error ? e : undefined);
      throw e;
    }
  }
}
