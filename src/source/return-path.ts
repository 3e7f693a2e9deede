/**
 * The source's return-path reader (SPEC §5.3): reads framed messages from
 * the reverse direction of the channel and validates them like QEMU's
 * reader thread. A violation marks the path "bad" (the migration then fails
 * at completion); SHUT ends reading.
 */
import { ProtocolError } from '../errors.js';
import { RP_MSG_NAMES, RpMsg, TARGET_PAGE_SIZE } from '../wire/constants.js';
import { decodeRpMessage } from '../wire/return-path.js';
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
}

/** Reads and dispatches return-path messages until SHUT, an error or the end. */
export class SourceReturnPath {
  /** SHUT value once received. */
  shutValue: number | undefined;
  /** Set when the path turned bad (validation failure or I/O error). */
  error: Error | undefined;
  /** PONG values in order of arrival. */
  readonly pongs: number[] = [];
  private lastReqBlock: string | undefined;
  /** Resolves when reading stops (SHUT, error or end of input). */
  readonly done: Promise<void>;

  constructor(
    private readonly r: ChannelReader,
    private readonly handlers: ReturnPathHandlers = {},
  ) {
    this.done = this.run().catch((e: unknown) => {
      this.error ??= e instanceof Error ? e : new Error(String(e));
    });
  }

  private async run(): Promise<void> {
    const r = this.r;
    for (;;) {
      if (r.available === 0 && !(await r.more())) {
        if (this.shutValue === undefined) this.error ??= new Error('Return path closed before SHUT');
        return;
      }
      const at = r.offset;
      const m = await r.stream.decode(decodeRpMessage);
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
        case 'recvBitmap':
          // RECV_BITMAP belongs to recovery: its bitmap follows out of band,
          // so it cannot be skipped safely here.
          throw new ProtocolError('return path', `unexpected ${RP_MSG_NAMES[RpMsg.RECV_BITMAP]} outside recovery`, at);
      }
    }
  }
}
