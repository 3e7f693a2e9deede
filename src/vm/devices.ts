/**
 * Device sections a `postcopy vm` sends at switchover. As a `-M none
 * -nodefaults` QEMU 7.2 does (SPEC §11.1): `timer` v2 (24 bytes) and
 * `globalstate` v1. A VM that adopted another machine's layout sends back
 * the device sections it received, as opaque bytes, with a fresh globalstate.
 */
import { GLOBALSTATE_IDSTR, GLOBALSTATE_VERSION } from '../wire/constants.js';
import { encodeGlobalState } from '../destination/destination.js';
import type { DeviceSection } from '../engine/ports.js';

/** QEMU's "timer" section: version and payload size. */
export const TIMER_IDSTR = 'timer';
export const TIMER_VERSION = 2;
export const TIMER_PAYLOAD_LEN = 24;

/** The vmdesc field list of "timer" as QEMU 7.2 writes it. */
const TIMER_VMDESC = {
  name: 'timer',
  version: TIMER_VERSION,
  fields: [
    { name: 'cpu_ticks_offset', type: 'int64', size: 8 },
    { name: 'unused', type: 'unused_buffer', size: 8 },
    { name: 'cpu_clock_offset', type: 'int64', size: 8 },
  ],
};

/** A device section as received and kept (adopting destination). */
export interface OpaqueSection {
  idstr: string;
  instanceId: number;
  versionId: number;
  payload: Uint8Array;
}

/** The timer section: both clock offsets 0 (our guest has no clocks to carry). */
export function timerSection(): DeviceSection {
  return {
    idstr: TIMER_IDSTR,
    instanceId: 0,
    versionId: TIMER_VERSION,
    payload: new Uint8Array(TIMER_PAYLOAD_LEN),
    vmdesc: TIMER_VMDESC,
  };
}

/** globalstate carrying `runState`. */
export function globalStateSection(runState: string): DeviceSection {
  return { idstr: GLOBALSTATE_IDSTR, instanceId: 0, versionId: GLOBALSTATE_VERSION, payload: encodeGlobalState(runState) };
}

/**
 * The sections to send: the kept opaque ones (or `timer` when there are
 * none) and globalstate last, as QEMU orders them.
 */
export function deviceSections(kept: readonly OpaqueSection[] | undefined, runState: string): DeviceSection[] {
  const out: DeviceSection[] = [];
  if (kept && kept.length > 0) {
    for (const s of kept) if (s.idstr !== GLOBALSTATE_IDSTR) out.push({ ...s });
  } else {
    out.push(timerSection());
  }
  out.push(globalStateSection(runState));
  return out;
}
