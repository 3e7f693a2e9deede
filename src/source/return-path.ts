/**
 * The source's return-path reader (SPEC §5.3): reads framed messages from
 * the reverse direction of the channel and validates them like QEMU's
 * reader thread. A violation marks the path "bad" (the migration then fails
 * at completion); SHUT ends reading.
 */
import { ProtocolError } from '../errors.js';
import { RP_MAX_LEN, RP_MSG_LEN, RP_MSG_NAMES, RpMsg } from '../wire/constants.js';
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
      await r.need(4, 'return-path header');
      const at = r.offset;
      const type = r.be16();
      const len = r.be16();
      if (type === RpMsg.INVALID || type >= RpMsg.MAX) {
        throw new ProtocolError('return path', `Received invalid message 0x${type.toString(16).padStart(4, '0')} length 0x${len.toString(16).padStart(4, '0')}`, at);
      }
      const fixed = RP_MSG_LEN[type]!;
      if ((fixed !== -1 && len !== fixed) || len > RP_MAX_LEN) {
        throw new ProtocolError('return path', `Received '${RP_MSG_NAMES[type]}' message (0x${type.toString(16).padStart(4, '0')}) with bad length ${len}`, at);
      }
      await r.need(len, 'return-path payload');
      const p = r.take(len);
      const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
      switch (type) {
        case RpMsg.SHUT:
          this.shutValue = dv.getUint32(0);
          return;
        case RpMsg.PONG: {
          const v = dv.getUint32(0);
          this.pongs.push(v);
          this.handlers.onPong?.(v);
          break;
        }
        case RpMsg.REQ_PAGES:
        case RpMsg.REQ_PAGES_ID: {
          const start = Number(dv.getBigUint64(0));
          const length = dv.getUint32(8);
          if (type === RpMsg.REQ_PAGES_ID) {
            const n = p[12]!;
            if (len !== 13 + n) throw new ProtocolError('return path', `Received '${RP_MSG_NAMES[type]}' message with bad length ${len}`, at);
            this.lastReqBlock = Buffer.from(p.subarray(13, 13 + n)).toString('latin1');
          } else if (this.lastReqBlock === undefined) {
            throw new ProtocolError('return path', 'no previous block', at);
          }
          if (start % 4096 !== 0 || length % 4096 !== 0) throw new ProtocolError('return path', 'Misaligned page request', at);
          this.handlers.onPageRequest?.({ idstr: this.lastReqBlock!, start, length });
          break;
        }
        case RpMsg.RESUME_ACK:
          this.handlers.onResumeAck?.(dv.getUint32(0));
          break;
        default:
          // RECV_BITMAP belongs to recovery (later issue): its bitmap follows
          // out of band, so it cannot be skipped safely here.
          throw new ProtocolError('return path', `unexpected ${RP_MSG_NAMES[type]} outside recovery`, at);
      }
    }
  }
}
