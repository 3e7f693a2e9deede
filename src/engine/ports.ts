/**
 * What the engines need from the layers around them, as small interfaces.
 * The memory/, hotpath/ and control/ layers are adapted to these (see
 * memory-guest.ts, hotpath-ops.ts, page-ops-js.ts); tests can also implement them directly.
 */

/** One RAM block as the engines see it. Offsets are bytes inside the block. */
export interface EngineRamBlock {
  /** QEMU's idstr ("ram", "pc.ram", ...). */
  readonly idstr: string;
  /** Bytes migrated (QEMU's used_length), a multiple of the page size. */
  readonly usedLength: number;
  /** Base of the block in the global RAM-offset space (QEMU's ram_addr). */
  readonly ramAddr: number;
  /** The block's memory: at least usedLength bytes. */
  readonly bytes: Uint8Array;
  /**
   * Destination only: the bytes were all zero when the migration began
   * (fresh memory). A page not received yet is then known to be zero, and a
   * ZERO record or a zap does not touch it — touching fresh memory costs a
   * page fault per page, most of a zero page's cost.
   */
  readonly zeroed?: boolean;
}

/**
 * Dirty bitmaps are Uint32Array words, one bit per 4 KiB page, page i in
 * word i >>> 5, bit i & 31.
 */
export type PageBits = Uint32Array;

/** The guest being migrated (source side). */
export interface SourceGuest {
  readonly blocks: readonly EngineRamBlock[];
  /**
   * ORs the pages of block `index` dirtied since the previous call into
   * `bitmap` and returns how many bits were newly set. Called once per
   * bitmap sync (QEMU's migration_bitmap_sync).
   */
  syncDirty(index: number, bitmap: PageBits): number;
  /** Enables dirty logging (first call) — the first sync reports what was written since. */
  startDirtyLog?(): void;
  /** Stops dirty logging at the end of migration. */
  stopDirtyLog?(): void;
  /** Stops the vCPUs (QEMU's vm_stop before completion). */
  stop(): void | Promise<void>;
  /** Resumes the vCPUs (after cancel or failure). */
  resume(): void | Promise<void>;
  /** Throttles the workload to `percent` (0 = none) for auto-converge. */
  setThrottle?(percent: number): void;
  /** Run state name written into globalstate ("running", "paused", "prelaunch"). */
  readonly runState?: string;
}

/** Page operations the engines need from the hot path. */
export interface PageOps {
  /** True if the 4096 bytes at `page[off..]` are all zero. */
  isZeroPage(page: Uint8Array, off: number): boolean;
  /**
   * XBZRLE-encodes `cur` (4096 bytes at curOff) against `old` (at oldOff)
   * into `out`; returns the length, 0 for unchanged, -1 on overflow.
   */
  xbzrleEncode(old: Uint8Array, oldOff: number, cur: Uint8Array, curOff: number, out: Uint8Array): number;
  /** Applies `src` in place over dst[dstOff..dstOff+4096]; returns the decoded end or -1. */
  xbzrleDecode(src: Uint8Array, dst: Uint8Array, dstOff: number): number;
  /** Allocates `bytes` bytes of page memory (the XBZRLE cache lives there). */
  alloc(bytes: number): Uint8Array;
}

/** A device section the source sends at completion (FULL) as opaque bytes. */
export interface DeviceSection {
  readonly idstr: string;
  readonly instanceId: number;
  readonly versionId: number;
  readonly payload: Uint8Array;
  /** Field description for VMDESCRIPTION; defaults to one "data" buffer (old-style). */
  readonly vmdesc?: Record<string, unknown>;
}
