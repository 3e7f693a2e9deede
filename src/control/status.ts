/**
 * MigrationStatus and the state machine both sides run over it. The status
 * changes only through {@link StatusMachine.transition}, a compare-and-set
 * that refuses edges QEMU 7.2 never takes and emits the MIGRATION event
 * (when the `events` capability is on).
 */
import { PostcopyError } from '../errors.js';
import type { EventBus } from './events.js';

/** QEMU 7.2's MigrationStatus values, in QAPI enum order. */
export const MIGRATION_STATUSES = [
  'none',
  'setup',
  'cancelling',
  'cancelled',
  'active',
  'postcopy-active',
  'postcopy-paused',
  'postcopy-recover',
  'completed',
  'failed',
  'colo',
  'pre-switchover',
  'device',
  'wait-unplug',
] as const;

/** A migration status name. */
export type MigrationStatus = (typeof MIGRATION_STATUSES)[number];

/**
 * Legal edges (union of source and destination, SPEC §7.4). Terminal states
 * (completed, failed, cancelled) only leave through {@link StatusMachine.reset}.
 */
const EDGES: Readonly<Record<MigrationStatus, readonly MigrationStatus[]>> = {
  none: ['setup', 'active', 'failed'],
  setup: ['active', 'wait-unplug', 'failed', 'cancelling'],
  'wait-unplug': ['active', 'failed', 'cancelling'],
  active: ['postcopy-active', 'pre-switchover', 'completed', 'failed', 'cancelling', 'colo'],
  'pre-switchover': ['device', 'postcopy-active', 'failed', 'cancelling'],
  device: ['completed', 'failed', 'cancelling'],
  'postcopy-active': ['postcopy-paused', 'completed', 'failed', 'cancelling'],
  'postcopy-paused': ['postcopy-recover', 'failed', 'cancelling'],
  'postcopy-recover': ['postcopy-active', 'postcopy-paused', 'failed'],
  cancelling: ['cancelled', 'failed'],
  colo: ['completed', 'failed'],
  completed: [],
  failed: [],
  cancelled: [],
};

/** True when QEMU can move from `from` to `to`. */
export function isLegalTransition(from: MigrationStatus, to: MigrationStatus): boolean {
  return EDGES[from].includes(to);
}

/** States in which a migration is running (migrate-set-capabilities/-migrate refuse). */
export function isActiveStatus(s: MigrationStatus): boolean {
  return !['none', 'completed', 'failed', 'cancelled'].includes(s);
}

/** True for completed, failed and cancelled. */
export function isTerminalStatus(s: MigrationStatus): boolean {
  return s === 'completed' || s === 'failed' || s === 'cancelled';
}

/** Options of a {@link StatusMachine}. */
export interface StatusMachineOptions {
  /** Where MIGRATION events go. */
  bus?: EventBus;
  /** Whether the `events` capability is on, asked at each transition. */
  eventsEnabled?: () => boolean;
  /** Starting status (default `none`). */
  initial?: MigrationStatus;
}

/** A status change, as seen by {@link StatusMachine.onChange} listeners. */
export type StatusListener = (to: MigrationStatus, from: MigrationStatus) => void;

/** One side's migration status. */
export class StatusMachine {
  private current: MigrationStatus;
  private readonly listeners = new Set<StatusListener>();
  /** Every status taken through transition(), in order (for logs and tests). */
  readonly history: MigrationStatus[] = [];

  constructor(private readonly opts: StatusMachineOptions = {}) {
    this.current = opts.initial ?? 'none';
  }

  /** The current status. */
  get status(): MigrationStatus {
    return this.current;
  }

  /**
   * Compare-and-set: if the status is `from`, move to `to`, emit MIGRATION
   * (events capability permitting) and return true; if it is not `from`,
   * change nothing and return false. Throws when `from → to` is not an edge
   * QEMU takes.
   */
  transition(from: MigrationStatus, to: MigrationStatus): boolean {
    if (!isLegalTransition(from, to)) {
      throw new PostcopyError('ILLEGAL_TRANSITION', `Illegal migration status transition: ${from} -> ${to}`);
    }
    if (this.current !== from) return false;
    this.current = to;
    this.history.push(to);
    if (this.opts.eventsEnabled?.()) this.opts.bus?.emit('MIGRATION', { status: to });
    for (const fn of [...this.listeners]) fn(to, from);
    return true;
  }

  /**
   * The unconditional MIGRATION `setup` event of migrate-incoming and
   * migrate-recover; the status itself does not change.
   */
  emitSetup(): void {
    this.opts.bus?.emit('MIGRATION', { status: 'setup' });
  }

  /** MIGRATION_PASS {pass} after a bitmap sync (source), only with the events capability. */
  emitPass(pass: number): void {
    if (this.opts.eventsEnabled?.()) this.opts.bus?.emit('MIGRATION_PASS', { pass });
  }

  /**
   * Start afresh from a terminal state (a new `migrate` after completed,
   * failed or cancelled): back to `none` without an event, as QEMU's
   * migrate_init does. Refused while a migration runs.
   */
  reset(): void {
    if (isActiveStatus(this.current)) {
      throw new PostcopyError('ILLEGAL_TRANSITION', `Cannot reset migration status while ${this.current}`);
    }
    this.current = 'none';
  }

  /** Observe changes; returns the unsubscribe function. */
  onChange(fn: StatusListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Resolve when the status is one of `targets` (at once if it already is). */
  waitFor(targets: readonly MigrationStatus[], signal?: AbortSignal): Promise<MigrationStatus> {
    if (targets.includes(this.current)) return Promise.resolve(this.current);
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        off();
        reject(signal!.reason ?? new Error('aborted'));
      };
      const off = this.onChange((to) => {
        if (targets.includes(to)) {
          off();
          signal?.removeEventListener('abort', onAbort);
          resolve(to);
        }
      });
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
