/**
 * Every constant of the QEMU 7.2 migration wire protocol, in one place.
 * Section numbers refer to ../shared/SPEC.md.
 */

/** §1.1 stream header. */
export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION = 3;
export const QEMU_VM_FILE_VERSION_COMPAT = 2;

/** Target page size on x86 (TARGET_PAGE_BITS = 12). */
export const TARGET_PAGE_BITS = 12;
export const TARGET_PAGE_SIZE = 1 << TARGET_PAGE_BITS;

/** §1.3 top-level section types. */
export const SectionType = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;
export type SectionType = (typeof SectionType)[keyof typeof SectionType];

/** §2 MIG_CMD_* (QEMU_VM_COMMAND payload ids). */
export const MigCmd = {
  INVALID: 0,
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  PACKAGED: 7,
  ENABLE_COLO: 8,
  POSTCOPY_RESUME: 9,
  RECV_BITMAP: 10,
  MAX: 11,
} as const;
export type MigCmd = (typeof MigCmd)[keyof typeof MigCmd];

/** Names of MIG_CMD values, lower case as QEMU traces them. */
export const MIG_CMD_NAMES: Readonly<Record<number, string>> = {
  0: 'INVALID',
  1: 'OPEN_RETURN_PATH',
  2: 'PING',
  3: 'POSTCOPY_ADVISE',
  4: 'POSTCOPY_LISTEN',
  5: 'POSTCOPY_RUN',
  6: 'POSTCOPY_RAM_DISCARD',
  7: 'PACKAGED',
  8: 'ENABLE_COLO',
  9: 'POSTCOPY_RESUME',
  10: 'RECV_BITMAP',
};

/**
 * Fixed payload lengths of commands; -1 = variable.
 * §2 table: a wrong length fails the destination (-ERANGE).
 */
export const MIG_CMD_LEN: Readonly<Record<number, number>> = {
  1: 0, // OPEN_RETURN_PATH
  2: 4, // PING
  3: -1, // POSTCOPY_ADVISE: 0 or 16
  4: 0, // POSTCOPY_LISTEN
  5: 0, // POSTCOPY_RUN
  6: -1, // POSTCOPY_RAM_DISCARD
  7: 4, // PACKAGED
  8: 0, // ENABLE_COLO
  9: 0, // POSTCOPY_RESUME
  10: -1, // RECV_BITMAP
};

/** §2.6 at most this many ranges per POSTCOPY_RAM_DISCARD command. */
export const MAX_DISCARDS_PER_COMMAND = 12;
/** §2.6 minimum payload length of a discard command. */
export const DISCARD_MIN_LEN = 20;
/** §2.6 version byte of a discard command. */
export const DISCARD_VERSION = 0;
/** §2.3 payload length of POSTCOPY_ADVISE with postcopy-ram. */
export const POSTCOPY_ADVISE_LEN = 16;
/** §2.7 maximum length of a PACKAGED blob. */
export const MAX_PACKAGED_SIZE = 0xffffffff;

/** §3.1 RAM record flags (low 12 bits of the be64 header word). */
export const RamFlag = {
  FULL: 0x001,
  ZERO: 0x002,
  MEM_SIZE: 0x004,
  PAGE: 0x008,
  EOS: 0x010,
  CONTINUE: 0x020,
  XBZRLE: 0x040,
  HOOK: 0x080,
  COMPRESS_PAGE: 0x100,
} as const;
export type RamFlag = (typeof RamFlag)[keyof typeof RamFlag];
export const RAM_FLAGS_MASK = 0xfff;
/** §3 the RAM section: idstr and version. */
export const RAM_SECTION_IDSTR = 'ram';
export const RAM_SECTION_VERSION = 4;
/** §3.3 XBZRLE record: encoding flag byte. */
export const ENCODING_FLAG_XBZRLE = 0x01;
/** §3.3 compressBound(4096) as zlib computes it. */
export const COMPRESS_BOUND_PAGE = 4110;

/** §4 XBZRLE: ULEB128 values are limited to 14 bits. */
export const XBZRLE_ULEB_MAX = 0x3fff;

/** §5.2 return-path message types. */
export const RpMsg = {
  INVALID: 0,
  SHUT: 1,
  PONG: 2,
  REQ_PAGES_ID: 3,
  REQ_PAGES: 4,
  RECV_BITMAP: 5,
  RESUME_ACK: 6,
  MAX: 7,
} as const;
export type RpMsg = (typeof RpMsg)[keyof typeof RpMsg];

export const RP_MSG_NAMES: Readonly<Record<number, string>> = {
  0: 'INVALID',
  1: 'SHUT',
  2: 'PONG',
  3: 'REQ_PAGES_ID',
  4: 'REQ_PAGES',
  5: 'RECV_BITMAP',
  6: 'RESUME_ACK',
};

/** §5.3 fixed return-path lengths; -1 = variable. */
export const RP_MSG_LEN: Readonly<Record<number, number>> = {
  1: 4,
  2: 4,
  3: -1,
  4: 12,
  5: -1,
  6: 4,
};
/** §5.3 the source's return-path buffer: any len above this is rejected. */
export const RP_MAX_LEN = 512;
/** §5.6 end marker after a RECV_BITMAP bitmap. */
export const RECV_BITMAP_ENDING = 0x0123456789abcdefn;
/** §5.4 RESUME_ACK carries this value. */
export const RESUME_ACK_VALUE = 1;

/** §2.2 PING values QEMU uses. */
export const PingValue = {
  AFTER_OPEN_RETURN_PATH: 1,
  BEFORE_PACKAGE: 2,
  IN_PACKAGE: 3,
  AFTER_PACKAGE: 4,
} as const;
/** Value of our postcopy keepalive PINGs (QEMU has none; any be32 is answered with PONG). */
export const KEEPALIVE_PING_VALUE = 0x6b61;
/** §2.3 POSTCOPY_ADVISE page size summary of 4 KiB-page RAM (QEMU's hps summary). */
export const POSTCOPY_HOST_PAGE_SIZE = 0x1000;

/** §1.2 configuration subsections. */
export const CONFIG_SUBSECTION_TARGET_PAGE_BITS = 'configuration/target-page-bits';
export const CONFIG_SUBSECTION_CAPABILITIES = 'configuration/capabilities';
export const CONFIG_SUBSECTION_UUID = 'configuration/uuid';

/** §1.8 globalstate section. */
export const GLOBALSTATE_IDSTR = 'globalstate';
export const GLOBALSTATE_VERSION = 1;
export const GLOBALSTATE_RUNSTATE_LEN = 100;
