/**
 * query-migrate shapes for the source (SPEC §8.4): control/'s types.
 */
export type { MigrationInfo as SourceMigrationInfo, MigrationStats, XbzrleCacheStats } from '../control/info.js';
