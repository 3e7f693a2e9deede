/**
 * The source's return-path reader (SPEC §5.3): reads framed messages from
 * the reverse direction of the channel and validates them like QEMU's
 * reader thread. A violation marks the path "bad" (the migration then fails
 * at completion); SHUT ends reading. An I/O end (EOF, channel error, a cut
 * mid-message) is told apart (`ioError`): in postcopy it pauses instead.
 * In recovery mode RECV_BITMAP replies (§5.6) are read with their bitmap.
 */
import { PostcopyError, ProtocolError, TruncatedError } from '../errors.js';
import { RP_MSG_NAMES, RpMsg, TARGET_PAGE_SIZE } from '../wire/constants.js';
import { decodeRecvBitmapData, decodeRpMessage } from '../wire/return-path.js';
import type { ChannelReader } from '../engine/bytes.js';

/** A page request received on the return path (postcopy). */
export interface PageRequest {
  /** Block idstr (the last named one for REQ_PAGES). */
  idstr: string;
  start: number;
  length: number;
}

/** Handlers for return-path messages. */
export interface ReturnPathHandlers {
  onPong?(value: number): void;
  onPageRequest?(req: PageRequest): void;
  onResumeAck?(value: number): void;
  /** Recovery: the source's bitmap size S for a block, undefined when the block is unknown. */
  recvBitmapSize?(idstr: string): number | undefined;
  /** Recovery: the received bitmap of a block (a copy, LE 64-bit words, bit = received). */
  onRecvBitmap?(idstr: string, bitmap: Uint8Array): void;
  /** Any message arrived (keepalive). */
  onMessage?(): void;
  /**
   * Offered at every message boundary outside recovery: another reader may
   * take the page requests from here (the source's urgent worker). Resolves
   * with what it took and the block its last REQ_PAGES_ID named, or
   * undefined when it took nothing.
   */
  offload?(r: ChannelReader, lastReqBlock: string | undefined): Promise<{ requests: number; lastReqBlock: string | undefined } | undefined>;
}

/** Options of a SourceReturnPath. */
export interface ReturnPathOptions {
  /** Accept RECV_BITMAP replies (the recovery handshake); else they make the path bad. */
  recovering?: boolean;
  /** The block named by the last REQ_PAGES_ID on an earlier channel (survives pauses). */
  lastReqBlock?: string;
}

/** Reads and dispatches return-path messages until SHUT, an error or the end. */
export class SourceReturnPath {
  /** SHUT value once received. */
  shutValue: number | undefined;
  /** Set when the path turned bad (validation failure or I/O error). */
  error: Error | undefined;
  /** True when reading ended by an I/O failure (end of input before SHUT, channel error, a cut message). */
  ioError = false;
  /** PONG values in order of arrival. */
  readonly pongs: number[] = [];
  /** In recovery mode RECV_BITMAP replies are accepted. */
  recovering: boolean;
  private lastReqBlock: string | undefined;
  /** Resolves when reading stops (SHUT, error or end of input). */
  readonly done: Promise<void>;

  constructor(
    private readonly r: ChannelReader,
    private readonly handlers: ReturnPathHandlers = {},
    opts: ReturnPathOptions = {},
  ) {
    this.recovering = opts.recovering ?? false;
    this.lastReqBlock = opts.lastReqBlock;
    this.done = this.run().catch((e: unknown) => {
      const err = e instanceof Error ? e : new Error(String(e));
      // A bad message (ProtocolError, or a request the source refuses) is not I/O; a short read is.
      const bad =
        (err instanceof ProtocolError && !(err instanceof TruncatedError)) ||
        (err instanceof PostcopyError && err.code === 'RETURN_PATH');
      if (!bad) this.ioError = true;
      this.error ??= err;
    });
  }

  /** The block named by the last REQ_PAGES_ID (for the next channel after a pause). */
  get lastBlock(): string | undefined {
    return this.lastReqBlock;
  }

  private async run(): Promise<void> {
    const r = this.r;
    for (;;) {
      if (this.handlers.offload && !this.recovering) {
        const back = await this.handlers.offload(r, this.lastReqBlock);
        if (back) {
          this.lastReqBlock = back.lastReqBlock;
          if (back.requests > 0) this.handlers.onMessage?.();
        }
      }
      if (r.available === 0 && !(await r.more())) {
        if (this.shutValue === undefined) {
          this.ioError = true;
          this.error ??= new Error('Return path closed before SHUT');
        }
        return;
      }
      const at = r.offset;
      const m = await r.stream.decode(decodeRpMessage);
      this.handlers.onMessage?.();
      switch (m.kind) {
        case 'shut':
          this.shutValue = m.value;
          return;
        case 'pong':
          this.pongs.push(m.value);
          this.handlers.onPong?.(m.value);
          break;
        case 'reqPages':
        case 'reqPagesId': {
          if (m.kind === 'reqPagesId') this.lastReqBlock = m.blockName;
          else if (this.lastReqBlock === undefined) throw new ProtocolError('return path', 'no previous block', at);
          const { start, length } = m;
          if (start % TARGET_PAGE_SIZE !== 0 || length % TARGET_PAGE_SIZE !== 0) {
            throw new ProtocolError('return path', 'Misaligned page request', at);
          }
          this.handlers.onPageRequest?.({ idstr: this.lastReqBlock!, start, length });
          break;
        }
        case 'resumeAck':
          this.handlers.onResumeAck?.(m.value);
          break;
        case 'recvBitmap': {
          if (!this.recovering) {
            // Outside recovery its out-of-band bitmap cannot be skipped safely.
            throw new ProtocolError('return path', `unexpected ${RP_MSG_NAMES[RpMsg.RECV_BITMAP]} outside recovery`, at);
          }
          const size = this.handlers.recvBitmapSize?.(m.blockName);
          if (size === undefined) {
            throw new ProtocolError('return path', `RECV_BITMAP: unknown ramblock '${m.blockName}'`, at);
          }
          const bits = await r.stream.decode((c) => decodeRecvBitmapData(c, m.blockName, size));
          this.handlers.onRecvBitmap?.(m.blockName, Uint8Array.from(bits));
          break;
        }
      }
    }
  }
}
