/**
 * MigrationDestination's options and query-migrate shape.
 */
import type { EngineRamBlock, PageOps } from '../engine/ports.js';
import type { MigrationStatus, StatusPort } from '../engine/status.js';
import type { Hotpath } from '../hotpath/index.js';
import type { BlockAllocator } from './ram-loader.js';

/** Construction options. */
export interface DestinationOptions {
  /** Local machine type name; the received one must be a prefix-equal match. Default "none". */
  machineName?: string;
  /** Local RAM blocks. */
  blocks?: readonly EngineRamBlock[];
  /** Adopt the source's RAM layout and keep unknown device sections opaque. */
  adopt?: boolean;
  /** Allocator for adopted blocks (default: plain zeroed memory). */
  allocBlock?: BlockAllocator;
  /** Start the VM after loading unless globalstate says otherwise (QEMU without -S). Default true. */
  autostart?: boolean;
  /** Local postcopy-ram capability: must match POSTCOPY_ADVISE (16 bytes when on); enables the postcopy path. */
  postcopyRam?: boolean;
  pageOps?: PageOps;
  status?: StatusPort;
  /**
   * Received bitmaps as memory/ PageBitmaps in this hot path's memory (what
   * recovery's RECV_BITMAP needs); plain words otherwise.
   */
  hotpath?: Hotpath;
  /** postcopy-blocktime capability: query-migrate reports blocktime once completed. */
  postcopyBlocktime?: boolean;
  /**
   * Silent link: while postcopy-active with faults outstanding, pause when
   * nothing was received for this long, ms. Default KEEPALIVE_TIMEOUT_MS (5000).
   */
  keepaliveTimeoutMs?: number;
  /**
   * Read the postcopy background stream of the main channel in a worker
   * thread (destination/bulk/), so that it never delays a fault on the main
   * thread. Used when the channel is a socket, the RAM blocks and received
   * bitmaps are in shared memory and the native helper is built; the
   * environment's POSTCOPY_BULK_WORKER=0 turns it off too. Default true.
   */
  bulkWorker?: boolean;
  /**
   * Nice value (-20…19) of this destination's thread from POSTCOPY_LISTEN
   * until the migration ends (then it is put back): the thread that sends
   * page requests, places the requested pages and resumes the code that
   * waits for them. With the background stream keeping both CPUs of a small
   * host busy, it otherwise waits up to a scheduler slice for a CPU at each
   * fault. Raising it needs CAP_SYS_NICE; when that is refused the thread
   * keeps its value (faultThreadPriority says why). Default: left as it is.
   */
  faultPriority?: number;
}

/** Our keepalive timeout (the source's KEEPALIVE_TIMEOUT_MS). */
export const DEST_KEEPALIVE_TIMEOUT_MS = 5000;
/** Our extra query-migrate member once any fault happened. */
export interface FaultLatencyInfo {
  count: number;
  'p50-us': number;
  'p99-us': number;
  'max-us': number;
}
/** query-migrate on the destination. */
export interface DestinationMigrationInfo {
  status?: MigrationStatus;
  'error-desc'?: string;
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  'x-postcopy-fault-latency'?: FaultLatencyInfo;
}
