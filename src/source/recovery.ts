/**
 * The source side of the postcopy recovery handshake (SPEC §7.2) on a fresh
 * channel (no header, no configuration): RECV_BITMAP per block back to back,
 * one RP RECV_BITMAP reply + bitmap per block, the received bitmaps handed to
 * the caller, POSTCOPY_RESUME, RESUME_ACK(1). Any failure (the channel or
 * return path ending, a bad reply, the time limit) rejects.
 */
import { PostcopyError } from '../errors.js';
import { RESUME_ACK_VALUE } from '../wire/constants.js';
import { encodeCommand } from '../wire/command.js';
import { recvBitmapSize } from '../wire/return-path.js';
import type { StreamWriter } from '../wire/writer.js';
import type { EngineRamBlock, PageBits } from '../engine/ports.js';
import type { SourceReturnPath } from './return-path.js';

/**
 * Converts a RECV_BITMAP bitmap (LE 64-bit words, bit = received) into a
 * dirty bitmap: NOT(received) over `nbits` pages, padding bits clear.
 * Returns the number of dirty pages.
 */
export function installNotReceived(received: Uint8Array, dirty: PageBits, nbits: number): number {
  const dv = new DataView(received.buffer, received.byteOffset, received.byteLength);
  let n = 0;
  for (let w = 0; w < dirty.length; w++) {
    let v = ~dv.getUint32(w * 4, true);
    const left = nbits - w * 32;
    if (left < 32) v &= (1 << left) - 1;
    dirty[w] = v >>> 0;
    for (let x = v >>> 0; x !== 0; x &= x - 1) n++;
  }
  return n;
}

/** One recovery attempt. Feed it the return-path events; run() drives the channel. */
export class RecoveryHandshake {
  private readonly bitmaps = new Map<string, Uint8Array>();
  private acked = false;
  private failure: Error | undefined;
  private kick: (() => void) | undefined;
  private rejectFailed: ((e: Error) => void) | undefined;
  /** Rejects at the first failure (raced against writes that may never drain). */
  private readonly failed = new Promise<never>((_, reject) => (this.rejectFailed = reject));

  constructor(
    private readonly blocks: readonly EngineRamBlock[],
    private readonly timeoutMs: number,
  ) {
    this.failed.catch(() => undefined);
  }

  /** S of a block's bitmap, undefined for an unknown block (the reply is then bad). */
  bitmapSize(idstr: string): number | undefined {
    const b = this.blocks.find((x) => x.idstr === idstr);
    return b ? recvBitmapSize(b.usedLength) : undefined;
  }

  /** An RP RECV_BITMAP reply with its bitmap. */
  onBitmap(idstr: string, bitmap: Uint8Array): void {
    this.bitmaps.set(idstr, bitmap);
    this.poke();
  }

  /** RP RESUME_ACK. */
  onAck(value: number): void {
    if (value !== RESUME_ACK_VALUE) this.fail(new PostcopyError('RECOVERY', `RESUME_ACK with value ${value}, expecting ${RESUME_ACK_VALUE}`));
    else this.acked = true;
    this.poke();
  }

  /** Ends the attempt with `e` (first failure wins). */
  fail(e: Error): void {
    this.failure ??= e;
    this.rejectFailed?.(this.failure);
    this.poke();
  }

  private poke(): void {
    const k = this.kick;
    this.kick = undefined;
    k?.();
  }

  private async until(cond: () => boolean): Promise<void> {
    for (;;) {
      if (this.failure) throw this.failure;
      if (cond()) return;
      await new Promise<void>((r) => (this.kick = r));
    }
  }

  /**
   * Runs the handshake on `w` with `rp` reading the replies. `install` gets
   * each block's received bitmap (after all arrived, before POSTCOPY_RESUME).
   */
  async run(w: StreamWriter, rp: SourceReturnPath, install: (index: number, received: Uint8Array) => void): Promise<void> {
    const timer = setTimeout(() => this.fail(new PostcopyError('RECOVERY', `recovery handshake timed out after ${this.timeoutMs} ms`)), this.timeoutMs);
    void rp.done.then(() => {
      const why = rp.error?.message ?? (rp.shutValue !== undefined ? `SHUT ${rp.shutValue}` : 'return path ended');
      this.fail(new PostcopyError('RECOVERY', `return path ended during recovery: ${why}`));
    });
    try {
      for (const b of this.blocks) encodeCommand(w, { kind: 'recvBitmap', blockName: b.idstr });
      await Promise.race([w.flush(), this.failed]);
      await this.until(() => this.blocks.every((b) => this.bitmaps.has(b.idstr)));
      this.blocks.forEach((b, i) => install(i, this.bitmaps.get(b.idstr)!));
      encodeCommand(w, { kind: 'postcopyResume' });
      await Promise.race([w.flush(), this.failed]);
      await this.until(() => this.acked);
    } finally {
      clearTimeout(timer);
      this.kick = undefined;
    }
  }
}
