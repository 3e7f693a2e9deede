/**
 * Return-path messages, destination → source (SPEC.md §5): framing
 * `be16 type, be16 len, payload`, the source's validation, the pure page
 * request validator, and the RECV_BITMAP reply's out-of-band bitmap.
 */

import { RECV_BITMAP_ENDING, RP_MAX_LEN, RP_MSG_LEN, RP_MSG_NAMES, RpMsg, TARGET_PAGE_SIZE } from './constants.js';
import { ByteCursor } from './cursor.js';
import type { WireSink } from './writer.js';
import { stringToBytes } from './writer.js';

/** A decoded return-path message; discriminated by `kind`. */
export type RpMessage =
  /** value 0 = OK, 1 = the destination's input had an error. */
  | { kind: 'shut'; value: number }
  | { kind: 'pong'; value: number }
  /** A page request naming its block (REQ_PAGES_ID). */
  | { kind: 'reqPagesId'; start: number; length: number; blockName: string }
  /** A page request for the last named block (REQ_PAGES). */
  | { kind: 'reqPages'; start: number; length: number }
  /** Followed on the wire by the out-of-band bitmap (decodeRecvBitmapData). */
  | { kind: 'recvBitmap'; blockName: string }
  /** value must be 1 (RESUME_ACK_VALUE); checked by the engine. */
  | { kind: 'resumeAck'; value: number };

/**
 * Decode one framed return-path message with the source's checks (§5.3):
 * type 0 or ≥ 7, len > 512, fixed lengths, REQ_PAGES_ID len == 13+name_len,
 * RECV_BITMAP len ≥ 1 (name = payload[1 .. 1+payload[0]], not cross-checked
 * against len, as in QEMU).
 */
export function decodeRpMessage(c: ByteCursor): RpMessage {
  const at = c.pos;
  const type = c.be16('return-path type');
  const len = c.be16('return-path length');
  if (type === RpMsg.INVALID || type >= RpMsg.MAX) {
    throw c.error('return path', `RP: Received invalid message 0x${hex4(type)} length 0x${hex4(len)}`, at);
  }
  const fixed = RP_MSG_LEN[type] ?? -1;
  if ((fixed >= 0 && len !== fixed) || len > RP_MAX_LEN) {
    // QEMU prints the expected length as a size_t: -1 (variable) shows as 2^64-1.
    const expecting = fixed >= 0 ? String(fixed) : '18446744073709551615';
    throw c.error(
      'return path',
      `RP: Received '${RP_MSG_NAMES[type]}' message (0x${hex4(type)}) withincorrect length ${len} expecting ${expecting}`,
      at + 2,
    );
  }
  const payload = c.bytes(len, 'return-path payload');
  const p = new ByteCursor(payload, 0, c.base + at + 4);
  switch (type) {
    case RpMsg.SHUT:
      return { kind: 'shut', value: p.be32() };
    case RpMsg.PONG:
      return { kind: 'pong', value: p.be32() };
    case RpMsg.REQ_PAGES:
      return { kind: 'reqPages', start: p.be64n('request start'), length: p.be32() };
    case RpMsg.REQ_PAGES_ID: {
      const expected = 13 + (len >= 13 ? payload[12]! : 0);
      if (len !== expected) {
        throw c.error('return path', `RP: Req_Page_id with length ${len} expecting ${expected}`, at + 2);
      }
      const start = p.be64n('request start');
      const length = p.be32();
      return { kind: 'reqPagesId', start, length, blockName: p.cstr8('block name') };
    }
    case RpMsg.RECV_BITMAP: {
      if (len < 1) throw c.error('return path', 'RP: RECV_BITMAP with empty payload (length 0)', at + 2);
      const n = payload[0]!;
      // QEMU reads payload[1 .. 1+n] without checking n against len.
      if (1 + n > len) {
        throw c.error('return path', `RECV_BITMAP name length ${n} exceeds payload length ${len}`, at + 4);
      }
      return { kind: 'recvBitmap', blockName: p.cstr8('block name') };
    }
    default:
      return { kind: 'resumeAck', value: p.be32() };
  }
}

function hex4(v: number): string {
  return v.toString(16).padStart(4, '0');
}

/** Encode one framed return-path message. */
export function encodeRpMessage(w: WireSink, m: RpMessage): void {
  switch (m.kind) {
    case 'shut':
    case 'pong':
    case 'resumeAck':
      w.be16(m.kind === 'shut' ? RpMsg.SHUT : m.kind === 'pong' ? RpMsg.PONG : RpMsg.RESUME_ACK);
      w.be16(4);
      w.be32(m.value);
      return;
    case 'reqPages':
      w.be16(RpMsg.REQ_PAGES);
      w.be16(12);
      w.be64(m.start);
      w.be32(m.length);
      return;
    case 'reqPagesId': {
      const name = stringToBytes(m.blockName);
      if (name.length > 255) throw new RangeError('block name longer than 255 bytes');
      w.be16(RpMsg.REQ_PAGES_ID);
      w.be16(13 + name.length);
      w.be64(m.start);
      w.be32(m.length);
      w.u8(name.length);
      w.bytes(name);
      return;
    }
    case 'recvBitmap': {
      const name = stringToBytes(m.blockName);
      if (name.length > 255) throw new RangeError('block name longer than 255 bytes');
      w.be16(RpMsg.RECV_BITMAP);
      w.be16(1 + name.length);
      w.u8(name.length);
      w.bytes(name);
      return;
    }
  }
}

/** What validatePageRequest needs to know about the source's side. */
export interface PageRequestContext {
  /** The source's real host page size (4096 on x86). */
  hostPageSize?: number;
  /** The block named by the last REQ_PAGES_ID (survives pauses), if any. */
  lastBlock: string | undefined;
  /** used_length of a block by name, undefined if unknown. */
  usedLength(blockName: string): number | undefined;
}

/** Result of validatePageRequest: the block to serve, or QEMU's error text. */
export type PageRequestCheck = { ok: true; block: string; usedLength: number } | { ok: false; error: string };

/**
 * The source's semantic checks of a page request (§5.4), in QEMU's order:
 * alignment ("Misaligned page request"), "no previous block", unknown block,
 * and the range ("request overrun"). On success the caller records the block
 * as the new last block when the request named one.
 */
export function validatePageRequest(
  req: { start: number; length: number; blockName?: string },
  ctx: PageRequestContext,
): PageRequestCheck {
  const hps = ctx.hostPageSize ?? TARGET_PAGE_SIZE;
  if (req.start % hps !== 0 || req.length % hps !== 0) {
    return {
      ok: false,
      error: `migrate_handle_rp_req_pages: Misaligned page request, start: ${req.start.toString(16)} len: ${req.length}`,
    };
  }
  let block: string;
  if (req.blockName === undefined) {
    if (ctx.lastBlock === undefined) return { ok: false, error: 'ram_save_queue_pages no previous block' };
    block = ctx.lastBlock;
  } else {
    block = req.blockName;
  }
  const used = ctx.usedLength(block);
  if (used === undefined) return { ok: false, error: `ram_save_queue_pages no block '${block}'` };
  const last = req.start + req.length - 1;
  if (req.length === 0 || last >= used) {
    return {
      ok: false,
      error: `ram_save_queue_pages request overrun start=${req.start.toString(16)} len=${req.length.toString(16)} blocklen=${used.toString(16)}`,
    };
  }
  return { ok: true, block, usedLength: used };
}

/**
 * Size S in bytes of a RECV_BITMAP bitmap for a block of `length` bytes:
 * one bit per target page, rounded up to whole 64-bit words.
 */
export function recvBitmapSize(length: number): number {
  const bits = Math.ceil(length / TARGET_PAGE_SIZE);
  return Math.ceil(bits / 64) * 8;
}

/**
 * The out-of-band part after an RP RECV_BITMAP message: be64 S, S bitmap
 * bytes (little-endian 64-bit words, bit p = target page p received), be64
 * end marker 0x0123456789ABCDEF.
 */
export function encodeRecvBitmapData(w: WireSink, bitmap: Uint8Array): void {
  if (bitmap.length % 8 !== 0) throw new RangeError('RECV_BITMAP bitmap size must be a multiple of 8');
  w.be64(bitmap.length);
  w.bytes(bitmap);
  w.be64(RECV_BITMAP_ENDING);
}

/**
 * Decode the out-of-band bitmap for block `blockName`. `expectedSize` is the
 * source's own S (recvBitmapSize(used_length)); a different S fails with
 * "bitmap size mismatch" before any bitmap byte is read. Returns a view.
 */
export function decodeRecvBitmapData(c: ByteCursor, blockName: string, expectedSize: number): Uint8Array {
  const at = c.pos;
  const size = c.be64('bitmap size');
  if (size !== BigInt(expectedSize)) {
    throw c.error(
      'RECV_BITMAP',
      `ram_dirty_bitmap_reload: ramblock '${blockName}' bitmap size mismatch (0x${size.toString(16)} != 0x${expectedSize.toString(16)})`,
      at,
    );
  }
  const bitmap = c.bytes(expectedSize, 'bitmap');
  const eAt = c.pos;
  const end = c.be64('bitmap end mark');
  if (end !== RECV_BITMAP_ENDING) {
    throw c.error(
      'RECV_BITMAP',
      `ram_dirty_bitmap_reload: ramblock '${blockName}' end mark incorrect: 0x${end.toString(16)}`,
      eAt,
    );
  }
  return bitmap;
}
