/**
 * QEMU_VM_COMMAND records (SPEC.md §2): `u8 0x08, be16 cmd, be16 len, payload`.
 * PACKAGED's blob follows the command outside its payload; the caller reads it.
 */

import {
  DISCARD_MIN_LEN,
  DISCARD_VERSION,
  MAX_DISCARDS_PER_COMMAND,
  MAX_PACKAGED_SIZE,
  MIG_CMD_LEN,
  MIG_CMD_NAMES,
  MigCmd,
  POSTCOPY_ADVISE_LEN,
  SectionType,
} from './constants.js';
import { ByteCursor } from './cursor.js';
import type { WireSink } from './writer.js';
import { stringToBytes } from './writer.js';

/** One discard range: byte offset and length inside the RAM block. */
export interface DiscardRange {
  start: number;
  length: number;
}

/** POSTCOPY_ADVISE payload when postcopy-ram is on. */
export interface PostcopyAdviseRam {
  /** OR of the page sizes of all non-ignored RAM blocks. */
  pageSizeSummary: number;
  targetPageSize: number;
}

/** A decoded MIG_CMD_*; discriminated by `kind`. */
export type Command =
  | { kind: 'openReturnPath' }
  | { kind: 'ping'; value: number }
  /** `ram` is null for the 0-byte advise (dirty-bitmaps only). */
  | { kind: 'postcopyAdvise'; ram: PostcopyAdviseRam | null }
  | { kind: 'postcopyListen' }
  | { kind: 'postcopyRun' }
  | { kind: 'postcopyRamDiscard'; blockName: string; ranges: DiscardRange[] }
  /** `length` bytes of nested stream follow the command on the wire. */
  | { kind: 'packaged'; length: number }
  | { kind: 'enableColo' }
  | { kind: 'postcopyResume' }
  | { kind: 'recvBitmap'; blockName: string };

/** The MIG_CMD id of a command record. */
export function commandId(cmd: Command): MigCmd {
  switch (cmd.kind) {
    case 'openReturnPath':
      return MigCmd.OPEN_RETURN_PATH;
    case 'ping':
      return MigCmd.PING;
    case 'postcopyAdvise':
      return MigCmd.POSTCOPY_ADVISE;
    case 'postcopyListen':
      return MigCmd.POSTCOPY_LISTEN;
    case 'postcopyRun':
      return MigCmd.POSTCOPY_RUN;
    case 'postcopyRamDiscard':
      return MigCmd.POSTCOPY_RAM_DISCARD;
    case 'packaged':
      return MigCmd.PACKAGED;
    case 'enableColo':
      return MigCmd.ENABLE_COLO;
    case 'postcopyResume':
      return MigCmd.POSTCOPY_RESUME;
    case 'recvBitmap':
      return MigCmd.RECV_BITMAP;
  }
}

/**
 * Decode a command after its 0x08 type byte: be16 cmd, be16 len, payload.
 * Checks everything QEMU's destination checks that does not depend on its
 * state (unknown ids, fixed lengths, discard layout, RECV_BITMAP name).
 */
export function decodeCommandBody(c: ByteCursor): Command {
  const at = c.pos;
  const cmd = c.be16('command id');
  const len = c.be16('command length');
  const pAt = at + 4;
  const what = `MIG_CMD ${MIG_CMD_NAMES[cmd] ?? cmd}`;
  if (cmd === MigCmd.INVALID || cmd >= MigCmd.MAX) {
    throw c.error('command', `MIG_CMD 0x${cmd.toString(16)} unknown (len 0x${len.toString(16)})`, at);
  }
  const fixed = MIG_CMD_LEN[cmd] ?? 0;
  if (fixed >= 0 && len !== fixed) {
    throw c.error(what, `${MIG_CMD_NAMES[cmd]} received with bad length - expecting ${fixed}, got ${len}`, at + 2);
  }
  const payload = c.bytes(len, 'command payload');
  const p = new ByteCursor(payload, 0, c.base + pAt);
  switch (cmd) {
    case MigCmd.OPEN_RETURN_PATH:
      return { kind: 'openReturnPath' };
    case MigCmd.PING:
      return { kind: 'ping', value: p.be32() };
    case MigCmd.POSTCOPY_ADVISE:
      if (len === 0) return { kind: 'postcopyAdvise', ram: null };
      if (len !== POSTCOPY_ADVISE_LEN) {
        throw c.error(what, `CMD_POSTCOPY_ADVISE invalid length (${len})`, at + 2);
      }
      return {
        kind: 'postcopyAdvise',
        ram: { pageSizeSummary: p.be64n('pageSizeSummary'), targetPageSize: p.be64n('targetPageSize') },
      };
    case MigCmd.POSTCOPY_LISTEN:
      return { kind: 'postcopyListen' };
    case MigCmd.POSTCOPY_RUN:
      return { kind: 'postcopyRun' };
    case MigCmd.POSTCOPY_RAM_DISCARD:
      return decodeDiscard(p, len, what);
    case MigCmd.PACKAGED:
      return { kind: 'packaged', length: p.be32() };
    case MigCmd.ENABLE_COLO:
      return { kind: 'enableColo' };
    case MigCmd.POSTCOPY_RESUME:
      return { kind: 'postcopyResume' };
    default: {
      // RECV_BITMAP: cstr8 name, len must be name_len + 1, name non-empty.
      const nameLen = len > 0 ? payload[0]! : -2;
      if (nameLen + 1 !== len) {
        throw c.error(what, `loadvm_handle_recv_bitmap: invalid payload length (${len})`, at + 2);
      }
      if (nameLen === 0) throw c.error(what, 'RAM block name is empty', pAt);
      return { kind: 'recvBitmap', blockName: p.cstr8('block name') };
    }
  }
}

function decodeDiscard(p: ByteCursor, len: number, what: string): Command {
  if (len < DISCARD_MIN_LEN) {
    throw p.error(what, `CMD_POSTCOPY_RAM_DISCARD invalid length (${len})`, -2);
  }
  const version = p.u8();
  if (version !== DISCARD_VERSION) {
    throw p.error(what, `CMD_POSTCOPY_RAM_DISCARD invalid version (${version})`, 0);
  }
  const nameLen = p.buf[1]!;
  if (nameLen === 0 || 3 + nameLen > len) {
    throw p.error(what, 'CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID', 1);
  }
  const blockName = p.cstr8('block name');
  const nil = p.u8();
  if (nil !== 0) throw p.error(what, `CMD_POSTCOPY_RAM_DISCARD missing nil (${nil})`, p.pos - 1);
  const rest = len - 3 - nameLen;
  if (rest % 16 !== 0) {
    throw p.error(what, `CMD_POSTCOPY_RAM_DISCARD invalid length (${rest})`, p.pos);
  }
  const ranges: DiscardRange[] = [];
  while (p.remaining > 0) ranges.push({ start: p.be64n('discard start'), length: p.be64n('discard length') });
  return { kind: 'postcopyRamDiscard', blockName, ranges };
}

/** Decode a whole command item including the 0x08 type byte. */
export function decodeCommand(c: ByteCursor): Command {
  const at = c.pos;
  const t = c.u8('section type');
  if (t !== SectionType.COMMAND) throw c.error('command', `expected section type 0x08, got 0x${t.toString(16)}`, at);
  return decodeCommandBody(c);
}

function header(w: WireSink, cmd: number, len: number): void {
  w.u8(SectionType.COMMAND);
  w.be16(cmd);
  w.be16(len);
}

/**
 * Encode one command (type byte included). For `packaged`, only the command
 * is written; the caller writes the `length` blob bytes after it. Discard
 * commands with more than 12 ranges are refused: use encodeDiscards().
 */
export function encodeCommand(w: WireSink, cmd: Command): void {
  const id = commandId(cmd);
  switch (cmd.kind) {
    case 'ping':
      header(w, id, 4);
      w.be32(cmd.value);
      return;
    case 'postcopyAdvise':
      if (cmd.ram === null) {
        header(w, id, 0);
      } else {
        header(w, id, POSTCOPY_ADVISE_LEN);
        w.be64(cmd.ram.pageSizeSummary);
        w.be64(cmd.ram.targetPageSize);
      }
      return;
    case 'postcopyRamDiscard': {
      const name = stringToBytes(cmd.blockName);
      if (name.length < 1 || name.length > 255) throw new RangeError('discard: block name must be 1..255 bytes');
      const n = cmd.ranges.length;
      if (n < 1 || n > MAX_DISCARDS_PER_COMMAND) {
        throw new RangeError(`discard: ${n} ranges; 1..${MAX_DISCARDS_PER_COMMAND} per command`);
      }
      header(w, id, 3 + name.length + 16 * n);
      w.u8(DISCARD_VERSION);
      w.u8(name.length);
      w.bytes(name);
      w.u8(0);
      for (const r of cmd.ranges) {
        w.be64(r.start);
        w.be64(r.length);
      }
      return;
    }
    case 'packaged':
      if (!Number.isInteger(cmd.length) || cmd.length < 0 || cmd.length > MAX_PACKAGED_SIZE) {
        throw new RangeError(`Unreasonably large packaged state: ${cmd.length}`);
      }
      header(w, id, 4);
      w.be32(cmd.length);
      return;
    case 'recvBitmap': {
      const name = stringToBytes(cmd.blockName);
      if (name.length < 1 || name.length > 255) throw new RangeError('recvBitmap: block name must be 1..255 bytes');
      header(w, id, 1 + name.length);
      w.cstr8(cmd.blockName);
      return;
    }
    default:
      header(w, id, 0);
  }
}

/**
 * Encode the discard ranges of one block as as many POSTCOPY_RAM_DISCARD
 * commands as needed (≤ 12 ranges each). Returns the number of commands.
 */
export function encodeDiscards(w: WireSink, blockName: string, ranges: readonly DiscardRange[]): number {
  let n = 0;
  for (let i = 0; i < ranges.length; i += MAX_DISCARDS_PER_COMMAND) {
    encodeCommand(w, {
      kind: 'postcopyRamDiscard',
      blockName,
      ranges: ranges.slice(i, i + MAX_DISCARDS_PER_COMMAND),
    });
    n++;
  }
  return n;
}
