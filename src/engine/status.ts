/**
 * Migration status with a single compare-and-set transition that emits the
 * MIGRATION event (and nothing else may change the status). When control/
 * provides its StatusMachine the engines can be handed that instead: only
 * `status`, `transition` and the 'MIGRATION' event are used.
 */
import { EventEmitter } from 'node:events';

/** QEMU's MigrationStatus names. */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

/** What the engines need of a status holder. */
export interface StatusPort {
  readonly status: MigrationStatus;
  /** Moves from `from` to `to` if the status is `from`; returns whether it did. */
  transition(from: MigrationStatus, to: MigrationStatus): boolean;
}

/** Minimal StatusPort: emits `'MIGRATION', { status }` on every change. */
export class EngineStatus extends EventEmitter implements StatusPort {
  private current: MigrationStatus = 'none';
  /** Every status taken, in order (handy for tests and logs). */
  readonly history: MigrationStatus[] = [];

  get status(): MigrationStatus {
    return this.current;
  }

  transition(from: MigrationStatus, to: MigrationStatus): boolean {
    if (this.current !== from) return false;
    this.current = to;
    this.history.push(to);
    this.emit('MIGRATION', { status: to });
    return true;
  }
}
