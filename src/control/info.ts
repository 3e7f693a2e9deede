/**
 * query-migrate (MigrationInfo): QEMU's field names, which fields appear in
 * which state (SPEC §8.4), and QEMU 7.2's member order (captured from
 * qemu-system-x86_64 7.2.22, so a serialized reply reads the same).
 */
import type { MigrationStatus } from './status.js';
import type { SocketAddress } from '../transport/uri.js';

/** `ram` of query-migrate (MigrationStats), members in QEMU's output order. */
export interface MigrationStats {
  total: number;
  'postcopy-requests': number;
  'dirty-sync-count': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'downtime-bytes': number;
  'page-size': number;
  remaining: number;
  'postcopy-bytes': number;
  /** A double in QEMU (megabits/s). */
  mbps: number;
  transferred: number;
  'dirty-sync-missed-zero-copy': number;
  'precopy-bytes': number;
  /** Zero pages. */
  duplicate: number;
  'dirty-pages-rate': number;
  /** Always 0 in 7.2. */
  skipped: number;
  'normal-bytes': number;
  normal: number;
}

/** `xbzrle-cache` of query-migrate (XBZRLECacheStats), QEMU's order. */
export interface XbzrleCacheStats {
  /** Last interval only (double). */
  'encoding-rate': number;
  bytes: number;
  'cache-size': number;
  /** Last interval only (double). */
  'cache-miss-rate': number;
  pages: number;
  overflow: number;
  'cache-miss': number;
}

/** `compression` of query-migrate (CompressionStats), QEMU's order. */
export interface CompressionStats {
  'compression-rate': number;
  busy: number;
  'compressed-size': number;
  pages: number;
  'busy-rate': number;
}

/** A zeroed MigrationStats (key order preserved). */
export function emptyMigrationStats(pageSize = 4096): MigrationStats {
  return {
    total: 0, 'postcopy-requests': 0, 'dirty-sync-count': 0, 'multifd-bytes': 0, 'pages-per-second': 0,
    'downtime-bytes': 0, 'page-size': pageSize, remaining: 0, 'postcopy-bytes': 0, mbps: 0, transferred: 0,
    'dirty-sync-missed-zero-copy': 0, 'precopy-bytes': 0, duplicate: 0, 'dirty-pages-rate': 0, skipped: 0,
    'normal-bytes': 0, normal: 0,
  };
}

/** A zeroed XbzrleCacheStats (key order preserved). */
export function emptyXbzrleCacheStats(cacheSize: number): XbzrleCacheStats {
  return { 'encoding-rate': 0, bytes: 0, 'cache-size': cacheSize, 'cache-miss-rate': 0, pages: 0, overflow: 0, 'cache-miss': 0 };
}

/** The query-migrate reply. Every member optional, as in QEMU. */
export interface MigrationInfo {
  'expected-downtime'?: number;
  compression?: CompressionStats;
  'xbzrle-cache'?: XbzrleCacheStats;
  status?: MigrationStatus;
  'setup-time'?: number;
  downtime?: number;
  'total-time'?: number;
  ram?: MigrationStats;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'socket-address'?: SocketAddress[];
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
}

/** What the source side knows; the builder picks the fields the state shows. */
export interface SourceInfoInput {
  status: MigrationStatus;
  /** ms since `migrate`. */
  totalTime?: number;
  setupTime?: number;
  expectedDowntime?: number;
  downtime?: number;
  ram?: MigrationStats;
  /** Given when the xbzrle capability is on. */
  xbzrle?: XbzrleCacheStats;
  /** Given when the compress capability is on. */
  compression?: CompressionStats;
  /** Given when auto-converge throttling is active. */
  cpuThrottlePercentage?: number;
  errorDesc?: string;
  blockedReasons?: string[];
}

const RUNNING: readonly MigrationStatus[] = [
  'active', 'cancelling', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'pre-switchover', 'device',
];

/** Source-side MigrationInfo per state (SPEC §8.4), in QEMU's member order. */
export function sourceMigrationInfo(i: SourceInfoInput): MigrationInfo {
  const out: MigrationInfo = {};
  const ramFields = (): void => {
    if (i.compression) out.compression = i.compression;
    if (i.xbzrle) out['xbzrle-cache'] = i.xbzrle;
  };
  switch (i.status) {
    case 'none':
      break;
    case 'setup':
      out.status = i.status;
      break;
    case 'completed':
      ramFields();
      out.status = i.status;
      out['setup-time'] = i.setupTime ?? 0;
      out.downtime = i.downtime ?? 0;
      out['total-time'] = i.totalTime ?? 0;
      out.ram = i.ram ?? emptyMigrationStats();
      break;
    case 'failed':
      out.status = i.status;
      if (i.errorDesc !== undefined) out['error-desc'] = i.errorDesc;
      break;
    default:
      if (RUNNING.includes(i.status)) {
        out['expected-downtime'] = i.expectedDowntime ?? 0;
        ramFields();
        out.status = i.status;
        out['setup-time'] = i.setupTime ?? 0;
        out['total-time'] = i.totalTime ?? 0;
        out.ram = i.ram ?? emptyMigrationStats();
        if (i.cpuThrottlePercentage !== undefined) out['cpu-throttle-percentage'] = i.cpuThrottlePercentage;
      } else {
        out.status = i.status; // cancelled, colo, wait-unplug
      }
  }
  if (i.blockedReasons && i.blockedReasons.length > 0) out['blocked-reasons'] = i.blockedReasons;
  return out;
}

/** What the destination side knows. */
export interface DestinationInfoInput {
  /** The incoming state; `none` while listening (before a connection arrives). */
  status: MigrationStatus;
  /** Listening addresses (socket transports only). */
  socketAddress?: SocketAddress[];
  /** With postcopy-blocktime: total and per-vCPU blocktime, ms; shown once completed. */
  blocktime?: { total: number; vcpu: number[] };
}

/** Destination-side MigrationInfo: status (except `none`), socket-address, blocktime when completed. */
export function destinationMigrationInfo(i: DestinationInfoInput): MigrationInfo {
  const out: MigrationInfo = {};
  if (i.status !== 'none') out.status = i.status;
  if (i.socketAddress) out['socket-address'] = i.socketAddress;
  if (i.status === 'completed' && i.blocktime) {
    out['postcopy-blocktime'] = i.blocktime.total;
    out['postcopy-vcpu-blocktime'] = i.blocktime.vcpu;
  }
  return out;
}
