/**
 * The result of `inspectStream` / `postcopy inspect --json`: everything a
 * migration stream says, decoded. Offsets are byte offsets in the stream
 * (inside a PACKAGED blob: still offsets in the outer stream).
 */

import type { DecodedField, DecodedStruct } from '../wire/vmdesc.js';

/** A RAM block as announced in the setup record, with its rebuilt content's hash. */
export interface InspectRamBlock {
  idstr: string;
  usedLength: number;
  pageSize?: number;
  gpa?: number;
  /** Hex SHA-256 of the block as rebuilt from the stream (unsent pages count as zeros). */
  sha256: string;
  /** Page records seen for this block, by kind. */
  pages: InspectPageCounts;
}

/** Page records by kind. */
export interface InspectPageCounts {
  zero: number;
  normal: number;
  xbzrle: number;
  compressed: number;
}

/** One top-level item (or an item inside a PACKAGED blob). */
export interface InspectSection {
  offset: number;
  /** Bytes of the whole item, header and footer included. */
  length: number;
  kind: 'start' | 'part' | 'end' | 'full' | 'command' | 'eof' | 'vmdesc';
  sectionId?: number;
  idstr?: string;
  instanceId?: number;
  versionId?: number;
  /** RAM sections: records inside, by kind (EOS and setup not counted). */
  pages?: InspectPageCounts;
  /** Command items: the MIG_CMD name. */
  command?: string;
  /** Set on items that came from inside a PACKAGED blob. */
  packaged?: boolean;
}

/** A decoded QEMU_VM_COMMAND. */
export interface InspectCommand {
  offset: number;
  /** MIG_CMD name, as in QEMU (`OPEN_RETURN_PATH`, `PING`, `PACKAGED`, ...). */
  name: string;
  /** The decoded payload (ping value, advise sizes, discard ranges, package length...). */
  args: Record<string, unknown>;
  packaged?: boolean;
}

/** A non-iterable device section (FULL). */
export interface InspectDevice {
  idstr: string;
  instanceId: number;
  versionId: number;
  sectionId: number;
  /** Offset of the section's type byte. */
  offset: number;
  /** Payload bytes (section header and footer excluded). */
  size: number;
  /**
   * How the payload was delimited: `vmdesc` (split field by field with the
   * stream's VMDESCRIPTION), or `footer-scan` (no description: the end was
   * found by looking for a plausible footer; fields unknown).
   */
  split: 'vmdesc' | 'footer-scan';
  /** vmsd name from the vmdesc (absent for old-style devices). */
  vmsdName?: string;
  fields?: DecodedField[];
  subsections?: DecodedStruct[];
  packaged?: boolean;
}

/** The PACKAGED blob of a postcopy stream. */
export interface InspectPackage {
  offset: number;
  length: number;
  /** Items inside it, in order. */
  items: number;
}

/** The whole result. */
export interface InspectResult {
  /** Stream format version (3). */
  version: number;
  configuration: {
    name: string;
    capabilities?: string[];
    uuid?: string;
    targetPageBits?: number;
  } | null;
  /** RAM blocks from the setup record, in stream order. */
  ramBlocks: InspectRamBlock[];
  /** Sum of the setup record's used lengths (its `total`). */
  ramTotal: number;
  /** All page records by kind. */
  pages: InspectPageCounts;
  commands: InspectCommand[];
  sections: InspectSection[];
  devices: InspectDevice[];
  packaged: InspectPackage[];
  /** True if the EOF byte was read. */
  eof: boolean;
  /** The VMDESCRIPTION after EOF, if any. */
  vmdesc: { offset: number; length: number; devices: number } | null;
  /** Stream offset of the first FULL section / of EOF, for size accounting. */
  deviceRegion: { start: number; end: number } | null;
  /** Total bytes read. */
  totalBytes: number;
  /** Things QEMU would only warn about (e.g. no vmdesc after EOF). */
  warnings: string[];
}
