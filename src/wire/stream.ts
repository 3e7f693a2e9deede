/**
 * Main-stream framing (SPEC.md §1): header, configuration, section headers,
 * footers, EOF, VMDESCRIPTION. Section payloads are not parsed here.
 */

import {
  CONFIG_SUBSECTION_CAPABILITIES,
  CONFIG_SUBSECTION_TARGET_PAGE_BITS,
  CONFIG_SUBSECTION_UUID,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  QEMU_VM_FILE_VERSION_COMPAT,
  SectionType,
} from './constants.js';
import { ByteCursor } from './cursor.js';
import { type Command, decodeCommandBody, encodeCommand } from './command.js';
import type { WireSink } from './writer.js';
import { stringToBytes } from './writer.js';

const JSON_TEXT = new TextDecoder('utf-8', { fatal: false });
/** Name prefix shared by the configuration's subsections. */
const CONFIG_PREFIX = 'configuration';
/** Version of each configuration subsection (all are v1 in 7.2). */
const CONFIG_SUBSECTION_VERSION = 1;
const UUID_LEN = 16;

/** The vmstate "configuration" (§1.2). Optional fields mirror optional subsections. */
export interface Configuration {
  /** Machine type name (e.g. "pc-i440fx-7.2", "none"). */
  machineName: string;
  /** configuration/target-page-bits (never sent on x86). */
  targetPageBits?: number;
  /** configuration/capabilities: names of the validated capabilities that are on. */
  capabilities?: string[];
  /** configuration/uuid: 16 raw bytes. */
  uuid?: Uint8Array;
}

/** Decode the 8-byte header; returns the version (always 3). */
export function decodeHeader(c: ByteCursor): number {
  const at = c.pos;
  const magic = c.be32('stream magic');
  if (magic !== QEMU_VM_FILE_MAGIC) throw c.error('stream header', 'Not a migration stream', at);
  const version = c.be32('stream version');
  if (version === QEMU_VM_FILE_VERSION_COMPAT) {
    throw c.error('stream header', "SaveVM v2 format is obsolete and don't work anymore", at + 4);
  }
  if (version !== QEMU_VM_FILE_VERSION) {
    throw c.error('stream header', 'Unsupported migration stream version', at + 4);
  }
  return version;
}

/** Encode the 8-byte header. */
export function encodeHeader(w: WireSink): void {
  w.be32(QEMU_VM_FILE_MAGIC);
  w.be32(QEMU_VM_FILE_VERSION);
}

/**
 * Decode a configuration body (after its 0x07 byte). Subsections are
 * recognised by peeking at the next byte, so a following byte is needed; pass
 * `final: true` when the buffer is known to end right after the configuration.
 */
export function decodeConfigurationBody(c: ByteCursor, opts: { final?: boolean } = {}): Configuration {
  const nameLen = c.be32('machine name length');
  const machineName = JSON_TEXT.decode(c.bytes(nameLen, 'machine name'));
  const cfg: Configuration = { machineName };
  const seen = new Set<string>();
  for (;;) {
    if (opts.final && c.remaining === 0) break;
    if (c.peekU8('section type') !== SectionType.SUBSECTION) break;
    const at = c.pos;
    c.u8();
    const name = c.cstr8('subsection name');
    if (!name.startsWith(CONFIG_PREFIX)) {
      c.pos = at; // not ours: the top-level parser will reject the 0x05
      break;
    }
    const known =
      name === CONFIG_SUBSECTION_TARGET_PAGE_BITS || name === CONFIG_SUBSECTION_CAPABILITIES || name === CONFIG_SUBSECTION_UUID;
    if (!known) throw c.error('configuration', `unknown subsection '${name}'`, at);
    if (seen.has(name)) throw c.error('configuration', `duplicate subsection '${name}'`, at);
    seen.add(name);
    const vAt = c.pos;
    const version = c.be32('subsection version');
    if (version > CONFIG_SUBSECTION_VERSION) {
      throw c.error(
        'configuration',
        `${name}: incoming version_id ${version} is too new for local version_id ${CONFIG_SUBSECTION_VERSION}`,
        vAt,
      );
    }
    if (version < CONFIG_SUBSECTION_VERSION) {
      throw c.error('configuration', `${name}: incoming version_id ${version} is too old`, vAt);
    }
    if (name === CONFIG_SUBSECTION_TARGET_PAGE_BITS) {
      cfg.targetPageBits = c.be32('target page bits');
    } else if (name === CONFIG_SUBSECTION_CAPABILITIES) {
      const count = c.be32('capability count');
      const caps: string[] = [];
      for (let i = 0; i < count; i++) caps.push(c.cstr8('capability name'));
      cfg.capabilities = caps;
    } else {
      cfg.uuid = c.bytes(UUID_LEN, 'uuid').slice();
    }
  }
  return cfg;
}

/** Encode the configuration item, 0x07 type byte included. */
export function encodeConfiguration(w: WireSink, cfg: Configuration): void {
  const name = stringToBytes(cfg.machineName);
  w.u8(SectionType.CONFIGURATION);
  w.be32(name.length);
  w.bytes(name);
  if (cfg.targetPageBits !== undefined) {
    w.u8(SectionType.SUBSECTION);
    w.cstr8(CONFIG_SUBSECTION_TARGET_PAGE_BITS);
    w.be32(CONFIG_SUBSECTION_VERSION);
    w.be32(cfg.targetPageBits);
  }
  if (cfg.capabilities !== undefined) {
    w.u8(SectionType.SUBSECTION);
    w.cstr8(CONFIG_SUBSECTION_CAPABILITIES);
    w.be32(CONFIG_SUBSECTION_VERSION);
    w.be32(cfg.capabilities.length);
    for (const cap of cfg.capabilities) w.cstr8(cap);
  }
  if (cfg.uuid !== undefined) {
    if (cfg.uuid.length !== UUID_LEN) throw new RangeError('configuration uuid must be 16 bytes');
    w.u8(SectionType.SUBSECTION);
    w.cstr8(CONFIG_SUBSECTION_UUID);
    w.be32(CONFIG_SUBSECTION_VERSION);
    w.bytes(cfg.uuid);
  }
}

/**
 * Decode header + configuration. With `expectConfiguration` (default true,
 * QEMU's send-configuration), a missing 0x07 fails with
 * "Configuration section missing".
 */
export function decodeStreamStart(
  c: ByteCursor,
  opts: { expectConfiguration?: boolean; final?: boolean } = {},
): { version: number; configuration?: Configuration } {
  const version = decodeHeader(c);
  if (opts.expectConfiguration === false) return { version };
  const at = c.pos;
  if (c.u8('section type') !== SectionType.CONFIGURATION) {
    throw c.error('stream header', 'Configuration section missing', at);
  }
  return { version, configuration: decodeConfigurationBody(c, { final: opts.final }) };
}

/**
 * QEMU's machine-name check (a prefix compare over the received length).
 * Returns QEMU's error text, or null when they match.
 */
export function checkMachineName(received: string, local: string): string | null {
  if (local.startsWith(received)) return null;
  return `Machine type received is '${received}' and local is '${local}'`;
}

/** Header of a START or FULL section. */
export interface SectionStartHeader {
  kind: 'start' | 'full';
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
}

/** A top-level item of the main stream (the item's header only). */
export type Section =
  | { kind: 'eof' }
  | SectionStartHeader
  | { kind: 'part' | 'end'; sectionId: number }
  | { kind: 'command'; command: Command }
  /** VMDESCRIPTION (after EOF): the JSON text. */
  | { kind: 'vmdesc'; json: string };

/**
 * Decode the next top-level item's header (type byte included). A section's
 * payload and footer are left to the caller; a command is decoded whole.
 */
export function decodeSection(c: ByteCursor): Section {
  const at = c.pos;
  const type = c.u8('section type');
  switch (type) {
    case SectionType.EOF:
      return { kind: 'eof' };
    case SectionType.START:
    case SectionType.FULL: {
      const sectionId = c.be32('section id');
      const nAt = c.pos;
      const idstr = c.cstr8('idstr');
      if (idstr.length === 0) throw c.error('section', `Unable to read ID string for section ${sectionId}`, nAt);
      const instanceId = c.be32('instance id');
      const versionId = c.be32('version id');
      return { kind: type === SectionType.START ? 'start' : 'full', sectionId, idstr, instanceId, versionId };
    }
    case SectionType.PART:
    case SectionType.END:
      return { kind: type === SectionType.PART ? 'part' : 'end', sectionId: c.be32('section id') };
    case SectionType.COMMAND:
      return { kind: 'command', command: decodeCommandBody(c) };
    case SectionType.VMDESCRIPTION: {
      const len = c.be32('vmdesc length');
      return { kind: 'vmdesc', json: JSON_TEXT.decode(c.bytes(len, 'vmdesc')) };
    }
    default:
      throw c.error('section', `Unknown savevm section type ${type}`, at);
  }
}

/** Encode a top-level item's header (type byte included). */
export function encodeSection(w: WireSink, s: Section): void {
  switch (s.kind) {
    case 'eof':
      w.u8(SectionType.EOF);
      return;
    case 'start':
    case 'full':
      w.u8(s.kind === 'start' ? SectionType.START : SectionType.FULL);
      w.be32(s.sectionId);
      w.cstr8(s.idstr);
      w.be32(s.instanceId);
      w.be32(s.versionId);
      return;
    case 'part':
    case 'end':
      w.u8(s.kind === 'part' ? SectionType.PART : SectionType.END);
      w.be32(s.sectionId);
      return;
    case 'command':
      encodeCommand(w, s.command);
      return;
    case 'vmdesc': {
      const b = stringToBytes(s.json);
      w.u8(SectionType.VMDESCRIPTION);
      w.be32(b.length);
      w.bytes(b);
      return;
    }
  }
}

/**
 * Decode a section footer (0x7E + be32 id) and check it closes section
 * `sectionId` (`idstr` names the section in messages).
 */
export function decodeFooter(c: ByteCursor, sectionId: number, idstr: string): void {
  const at = c.pos;
  if (c.u8('section footer') !== SectionType.FOOTER) {
    throw c.error('section footer', `Missing section footer for ${idstr}`, at);
  }
  const id = c.be32('footer section id');
  if (id !== sectionId) {
    throw c.error(
      'section footer',
      `Mismatched section id in footer for ${idstr} - read 0x${id.toString(16)} expected 0x${sectionId.toString(16)}`,
      at + 1,
    );
  }
}

/** Encode a section footer. */
export function encodeFooter(w: WireSink, sectionId: number): void {
  w.u8(SectionType.FOOTER);
  w.be32(sectionId);
}
