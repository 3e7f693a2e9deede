/**
 * Destination-side configuration checks and the globalstate payload.
 */
import { ProtocolError } from '../errors.js';
import { GLOBALSTATE_RUNSTATE_LEN, SectionType } from '../wire/constants.js';
import type { ChannelReader } from '../engine/bytes.js';

/**
 * Reads the CONFIGURATION section (SPEC §1.2) after the header and checks it
 * like QEMU: machine-name prefix compare, known subsections only.
 */
export async function loadConfiguration(r: ChannelReader, local: string, warnings: string[]): Promise<void> {
  await r.need(1, 'configuration');
  if (r.peek() !== SectionType.CONFIGURATION) throw new ProtocolError('configuration', 'Configuration section missing', r.offset);
  r.u8();
  await r.need(4, 'machine name length');
  const at = r.offset;
  const len = r.be32();
  await r.need(len, 'machine name');
  const name = Buffer.from(r.take(len)).toString('latin1');
  // QEMU compares only the first `len` bytes (strncmp).
  if (Buffer.from(local, 'latin1').subarray(0, len).toString('latin1') !== name || (len > local.length)) {
    throw new ProtocolError('configuration', `Machine type received is '${name}' and local is '${local}'`, at);
  }
  for (;;) {
    await r.need(1, 'section type');
    if (r.peek() !== SectionType.SUBSECTION) return;
    const sat = r.offset;
    r.u8();
    const sub = await r.cstr8('subsection name');
    await r.need(4, 'subsection version');
    r.be32();
    if (sub === 'configuration/capabilities') {
      await r.need(4, 'capability count');
      const n = r.be32();
      for (let i = 0; i < n; i++) {
        const cap = await r.cstr8('capability');
        if (cap !== 'x-ignore-shared') throw new ProtocolError('configuration', `Received unknown capability ${cap}`, sat);
        // x-ignore-shared is not supported here, so it is off on this side.
        throw new ProtocolError('configuration', `Capability ${cap} is off, but received capability is on`, sat);
      }
    } else if (sub === 'configuration/uuid') {
      await r.need(16, 'uuid');
      r.take(16);
      warnings.push('UUID of the source ignored: no local -uuid');
    } else if (sub === 'configuration/target-page-bits') {
      await r.need(4, 'target page bits');
      const bits = r.be32();
      if (bits !== 12) throw new ProtocolError('configuration', `Received TARGET_PAGE_BITS is ${bits} but local is 12`, sat);
    } else {
      throw new ProtocolError('configuration', `Unknown subsection '${sub}'`, sat);
    }
  }
}

/** globalstate payload: be32 size, then 100 bytes of NUL-padded run state. */
export function parseGlobalState(p: Uint8Array): string {
  const size = ((p[0]! << 24) | (p[1]! << 16) | (p[2]! << 8) | p[3]!) >>> 0;
  const body = p.subarray(4, 4 + GLOBALSTATE_RUNSTATE_LEN);
  let end = body.indexOf(0);
  if (end < 0) end = Math.min(body.length, Math.max(0, size - 1));
  return Buffer.from(body.subarray(0, end)).toString('latin1');
}

/** Encodes a globalstate payload for `runState` (for sources and tests). */
export function encodeGlobalState(runState: string): Uint8Array {
  const out = new Uint8Array(4 + GLOBALSTATE_RUNSTATE_LEN);
  const name = Buffer.from(runState, 'latin1');
  new DataView(out.buffer).setUint32(0, name.length + 1);
  out.set(name.subarray(0, GLOBALSTATE_RUNSTATE_LEN - 1), 4);
  return out;
}
