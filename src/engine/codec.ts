/**
 * Encoders for the top-level stream items the source writes (SPEC §1, §2,
 * §3.1-3.2), onto any WireSink-like writer.
 */
import {
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RamFlag,
  SectionType,
  MigCmd,
} from '../wire/constants.js';

/** The subset of a WireSink the encoders use. */
export interface Sink {
  u8(v: number): void;
  be16(v: number): void;
  be32(v: number): void;
  be64(v: number | bigint): void;
  bytes(b: Uint8Array): void;
  cstr8(s: string): void;
}

/** §1.1/§1.2 header plus CONFIGURATION with the machine name, no subsections. */
export function writeHeader(w: Sink, machineName: string): void {
  w.be32(QEMU_VM_FILE_MAGIC);
  w.be32(QEMU_VM_FILE_VERSION);
  w.u8(SectionType.CONFIGURATION);
  const name = Buffer.from(machineName, 'latin1');
  w.be32(name.length);
  w.bytes(name);
}

/** START or FULL section header. */
export function writeSectionStart(
  w: Sink,
  type: typeof SectionType.START | typeof SectionType.FULL,
  sectionId: number,
  idstr: string,
  instanceId: number,
  versionId: number,
): void {
  w.u8(type);
  w.be32(sectionId);
  w.cstr8(idstr);
  w.be32(instanceId);
  w.be32(versionId);
}

/** PART or END section header. */
export function writeSectionPart(w: Sink, type: typeof SectionType.PART | typeof SectionType.END, sectionId: number): void {
  w.u8(type);
  w.be32(sectionId);
}

/** §1.3 footer. */
export function writeFooter(w: Sink, sectionId: number): void {
  w.u8(SectionType.FOOTER);
  w.be32(sectionId);
}

/** §2 COMMAND. */
export function writeCommand(w: Sink, cmd: number, payload: Uint8Array = new Uint8Array(0)): void {
  w.u8(SectionType.COMMAND);
  w.be16(cmd);
  w.be16(payload.length);
  w.bytes(payload);
}

/** §2.2 PING(value). */
export function writePing(w: Sink, value: number): void {
  const p = new Uint8Array(4);
  new DataView(p.buffer).setUint32(0, value);
  writeCommand(w, MigCmd.PING, p);
}

/** §3.2 RAM setup payload (no page_size / GPA fields). */
export function writeRamSetup(w: Sink, blocks: readonly { idstr: string; usedLength: number }[]): void {
  let total = 0;
  for (const b of blocks) total += b.usedLength;
  w.be64(total + RamFlag.MEM_SIZE);
  for (const b of blocks) {
    w.cstr8(b.idstr);
    w.be64(b.usedLength);
  }
  w.be64(RamFlag.EOS);
}

/**
 * §3.1 page record header: offset|flags, then the idstr unless CONTINUE.
 * Returns the bytes written.
 */
export function writePageHeader(w: Sink, offset: number, flags: number, idstr: string | undefined): number {
  if (idstr === undefined) {
    w.be64(offset + (flags | RamFlag.CONTINUE));
    return 8;
  }
  w.be64(offset + flags);
  w.cstr8(idstr);
  return 9 + Buffer.byteLength(idstr, 'latin1');
}

/** §1.7 VMDESCRIPTION: u8 0x06, be32 len, JSON. */
export function writeVmdesc(w: Sink, json: string): void {
  const b = Buffer.from(json, 'utf8');
  w.u8(SectionType.VMDESCRIPTION);
  w.be32(b.length);
  w.bytes(b);
}

/**
 * QEMU-style JSON text (", " and ": " separators) for the vmdesc of the
 * given devices: old-style "data" buffers unless a description is given.
 */
export function vmdescJson(
  devices: readonly { idstr: string; instanceId: number; payload: Uint8Array; vmdesc?: Record<string, unknown> }[],
): string {
  const devs = devices.map((d) =>
    d.vmdesc
      ? { name: d.idstr, instance_id: d.instanceId, ...d.vmdesc }
      : {
          name: d.idstr,
          instance_id: d.instanceId,
          size: d.payload.length,
          fields: [{ name: 'data', size: d.payload.length, type: 'buffer' }],
        },
  );
  return qemuJson({ page_size: 4096, devices: devs });
}

function qemuJson(v: unknown): string {
  if (Array.isArray(v)) return '[' + v.map(qemuJson).join(', ') + ']';
  if (v !== null && typeof v === 'object') {
    return (
      '{' +
      Object.entries(v as Record<string, unknown>)
        .map(([k, x]) => JSON.stringify(k) + ': ' + qemuJson(x))
        .join(', ') +
      '}'
    );
  }
  return JSON.stringify(v);
}
