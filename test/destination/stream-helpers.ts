/**
 * Hand-built stream pieces for destination tests: the well-formed ones come
 * from wire/'s encoders; the raw ones (command, page header) let tests send
 * what a broken peer would.
 */
import { RamFlag, SectionType } from '../../src/wire/constants.js';
import { encodeConfiguration, encodeFooter, encodeHeader, encodeSection } from '../../src/wire/stream.js';
import { RamRecordEncoder } from '../../src/wire/ram.js';
import type { WireSink } from '../../src/wire/writer.js';

/** Header plus CONFIGURATION with `machineName`. */
export function writeHeader(w: WireSink, machineName: string): void {
  encodeHeader(w);
  encodeConfiguration(w, { machineName });
}

/** START or FULL section header. */
export function writeSectionStart(w: WireSink, type: number, sectionId: number, idstr: string, instanceId: number, versionId: number): void {
  encodeSection(w, { kind: type === SectionType.START ? 'start' : 'full', sectionId, idstr, instanceId, versionId });
}

/** PART or END section header. */
export function writeSectionPart(w: WireSink, type: number, sectionId: number): void {
  encodeSection(w, { kind: type === SectionType.PART ? 'part' : 'end', sectionId });
}

export const writeFooter = encodeFooter;

/** A raw COMMAND record (any id, any payload). */
export function writeCommand(w: WireSink, cmd: number, payload: Uint8Array = new Uint8Array(0)): void {
  w.u8(SectionType.COMMAND);
  w.be16(cmd);
  w.be16(payload.length);
  w.bytes(payload);
}

/** PING(value). */
export function writePing(w: WireSink, value: number): void {
  encodeSection(w, { kind: 'command', command: { kind: 'ping', value } });
}

/** RAM setup payload (MEM_SIZE + blocks + EOS). */
export function writeRamSetup(w: WireSink, blocks: readonly { idstr: string; usedLength: number }[]): void {
  const enc = new RamRecordEncoder();
  enc.memSize(w, blocks);
  enc.eos(w);
}

/** A raw page-record header: offset|flags, then the idstr unless CONTINUE (undefined). */
export function writePageHeader(w: WireSink, offset: number, flags: number, idstr: string | undefined): void {
  if (idstr === undefined) {
    w.be64(offset + (flags | RamFlag.CONTINUE));
    return;
  }
  w.be64(offset + flags);
  w.cstr8(idstr);
}
