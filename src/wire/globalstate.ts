/**
 * The "globalstate" section body (SPEC.md §1.8): be32 size = strlen+1, then a
 * 100-byte NUL-padded run-state name.
 */

import { GLOBALSTATE_RUNSTATE_LEN } from './constants.js';
import type { ByteCursor } from './cursor.js';
import { bytesToString } from './cursor.js';
import type { WireSink } from './writer.js';
import { stringToBytes } from './writer.js';

/** Encode the body for run state `runstate` (e.g. "running", "prelaunch"). */
export function encodeGlobalState(w: WireSink, runstate: string): void {
  const b = stringToBytes(runstate);
  if (b.length >= GLOBALSTATE_RUNSTATE_LEN) throw new RangeError('runstate name too long');
  w.be32(b.length + 1);
  const buf = w.reserve(GLOBALSTATE_RUNSTATE_LEN);
  buf.fill(0);
  buf.set(b);
}

/** Decode the body; returns the run-state name. The buffer must hold a NUL. */
export function decodeGlobalState(c: ByteCursor): string {
  const at = c.pos;
  const size = c.be32('globalstate size');
  const buf = c.bytes(GLOBALSTATE_RUNSTATE_LEN, 'globalstate runstate');
  const nul = buf.indexOf(0);
  if (nul < 0) throw c.error('globalstate', 'runstate is not NUL-terminated', at + 4);
  if (size > GLOBALSTATE_RUNSTATE_LEN) {
    throw c.error('globalstate', `size ${size} larger than the runstate buffer`, at);
  }
  return bytesToString(buf.subarray(0, nul));
}
