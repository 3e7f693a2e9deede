/**
 * The engines' view of a migration status: control/'s StatusMachine (the
 * single compare-and-set transition that emits MIGRATION) is the one
 * implementation; the engines only need `status` and `transition`.
 */
export type { MigrationStatus } from '../control/status.js';
import type { MigrationStatus } from '../control/status.js';

/** What the engines need of a status holder (control/'s StatusMachine satisfies it). */
export interface StatusPort {
  readonly status: MigrationStatus;
  /** Moves from `from` to `to` if the status is `from`; returns whether it did. */
  transition(from: MigrationStatus, to: MigrationStatus): boolean;
}
