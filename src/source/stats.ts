/**
 * query-migrate shapes for the source (SPEC §8.4), QEMU's names.
 */
import type { MigrationStatus } from '../engine/status.js';
import type { XbzrleCacheStats } from './xbzrle-cache.js';

/** MigrationStats ("ram"). */
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  skipped: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
}

/** MigrationInfo as the source reports it. */
export interface SourceMigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  'xbzrle-cache'?: XbzrleCacheStats;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
}
