/**
 * The non-iterable device sections of an outgoing migration: resolved after
 * the guest stopped, written FULL with section ids after "ram" (at precopy
 * completion, or inside the postcopy package).
 */
import { encodeFooter, encodeSection } from '../wire/stream.js';
import type { WireSink } from '../wire/writer.js';
import type { DeviceSection } from '../engine/ports.js';

/** Section id of "ram" (QEMU's, §11). Device sections are numbered after it. */
export const RAM_SECTION_ID = 2;

/** Device sections given to migrate(): a list, or a function called once the guest stopped. */
export type DeviceSource = readonly DeviceSection[] | (() => readonly DeviceSection[]);

/** The device sections of a migration, resolved after the guest stopped. */
export function resolveDevices(opts: { devices?: DeviceSource }): readonly DeviceSection[] {
  return typeof opts.devices === 'function' ? opts.devices() : (opts.devices ?? []);
}

/** FULL sections of the non-iterable devices, numbered after "ram". */
export function encodeDevices(w: WireSink, devs: readonly DeviceSection[]): void {
  let id = RAM_SECTION_ID + 1;
  for (const d of devs) {
    encodeSection(w, { kind: 'full', sectionId: id, idstr: d.idstr, instanceId: d.instanceId, versionId: d.versionId });
    w.bytes(d.payload);
    encodeFooter(w, id);
    id++;
  }
}
