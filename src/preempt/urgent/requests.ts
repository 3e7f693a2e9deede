/**
 * RequestParser: the return path's page requests (REQ_PAGES, REQ_PAGES_ID;
 * SPEC §5.1) parsed push-style by the source's urgent worker. Like the
 * destination's RamStreamParser it takes the happy path only: a request whose
 * framing, block, alignment and range are right is handed to `serve`; at
 * any other message (SHUT, PONG, RESUME_ACK, RECV_BITMAP) or any request the
 * main thread's reader would refuse, it stops before it and keeps it, with
 * what follows, for that reader — which then answers with QEMU's words.
 */
import { RpMsg, TARGET_PAGE_SIZE } from '../../wire/constants.js';
import { PushParser } from '../../wire/push-parser.js';

const TP = TARGET_PAGE_SIZE;
/** The longest request: header, start, length, a counted name of 255 bytes. */
const MAX_REQUEST = 4 + 13 + 255;

/** A block as the worker knows it. */
export interface RequestBlock {
  idstr: string;
  usedLength: number;
}

export class RequestParser extends PushParser {
  /** Requests taken. */
  requests = 0;
  private readonly byName = new Map<string, number>();
  private last: number | undefined;

  constructor(
    private readonly blocks: readonly RequestBlock[],
    /** The block named by the last REQ_PAGES_ID, if any. */
    lastReqBlock: string | undefined,
    /** A request: block index, start and length in bytes (page aligned, in range). */
    private readonly serve: (block: number, start: number, length: number) => void,
  ) {
    super(MAX_REQUEST);
    blocks.forEach((b, i) => this.byName.set(b.idstr, i));
    this.last = lastReqBlock === undefined ? undefined : this.byName.get(lastReqBlock);
  }

  /** The block named by the last REQ_PAGES_ID taken (or given at the start). */
  get lastReqBlock(): string | undefined {
    return this.last === undefined ? undefined : this.blocks[this.last]!.idstr;
  }

  /** One message at b[p..end): its length when taken, 0 when incomplete, -1 when not ours. */
  protected item(b: Uint8Array, p: number, end: number): number {
    const have = end - p;
    if (have < 4) return 0;
    const type = (b[p]! << 8) | b[p + 1]!;
    const len = (b[p + 2]! << 8) | b[p + 3]!;
    let block: number | undefined;
    if (type === RpMsg.REQ_PAGES) {
      if (len !== 12) return -1;
      block = this.last;
      if (block === undefined) return -1;
    } else if (type === RpMsg.REQ_PAGES_ID) {
      if (len < 13) return -1;
      if (have < 4 + 13) return 0;
      const nameLen = b[p + 16]!;
      if (len !== 13 + nameLen) return -1;
    } else {
      return -1;
    }
    if (have < 4 + len) return 0;
    const q = p + 4;
    const hi = be32(b, q);
    const start = hi * 0x1_0000_0000 + be32(b, q + 4);
    const length = be32(b, q + 8);
    if (type === RpMsg.REQ_PAGES_ID) {
      let name = '';
      for (let i = 0; i < b[q + 12]!; i++) name += String.fromCharCode(b[q + 13 + i]!);
      block = this.byName.get(name);
      if (block === undefined) return -1;
    }
    if (hi >= 0x20_0000 || start % TP !== 0 || length % TP !== 0 || length === 0) return -1;
    if (start + length > this.blocks[block!]!.usedLength) return -1;
    this.last = block;
    this.requests++;
    this.serve(block!, start, length);
    return 4 + len;
  }
}

function be32(b: Uint8Array, p: number): number {
  return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
}
