/**
 * Argument checking for the migration commands (migrate, migrate-incoming,
 * migrate-recover, migrate-continue, and the argument-less ones) with QEMU
 * 7.2's QAPI texts, plus the command-level error texts QEMU uses, so the
 * process that serves them reads exactly like QEMU. Texts captured from
 * qemu-system-x86_64 7.2.22 (see test/control/migrate-args.test.ts).
 */
import { QmpError } from '../errors.js';
import type { QmpObject } from './json.js';
import { argBool, argStr, checkMembers, toEnum } from './qapi.js';
import { MIGRATION_STATUSES, type MigrationStatus } from './status.js';

/** QEMU 7.2's texts for refusals of the migration commands (SPEC §8.1, §7.2). */
export const MIGRATE_ERRORS = {
  inProgress: "There's a migration process in progress",
  resumeNotPaused: 'Cannot resume if there is no paused migration',
  resumeReleaseRam: 'Postcopy recovery cannot work when release-ram capability is set',
  waitingIncoming: 'Guest is waiting for an incoming migration',
  pausedByPrevious: "Can't migrate the vm that was paused due to previous migration",
  incomingStarted: 'The incoming migration has already been started',
  noIncomingOption: "'-incoming' was not specified on the command line",
  startPostcopyNotEnabled: 'Enable postcopy with migrate_set_capability before the start of migration',
  startPostcopyIdle: 'Postcopy must be started after migration has been started',
  pauseNotPostcopy: 'migrate-pause is currently only supported during postcopy-active state',
  recoverNotPaused: 'Migrate recover can only be run when postcopy is paused.',
  notExpectedState: (s: string) => `Migration not in expected state: ${s}`,
} as const;

/** The arguments of `migrate`. */
export interface MigrateArgs {
  uri: string;
  blk?: boolean;
  inc?: boolean;
  detach?: boolean;
  resume?: boolean;
}

/** Type-check `migrate` arguments (schema order: uri, blk, inc, detach, resume). */
export function visitMigrateArgs(args: QmpObject): MigrateArgs {
  const out: MigrateArgs = { uri: argStr(args, 'uri') };
  for (const k of ['blk', 'inc', 'detach', 'resume'] as const) {
    const v = argBool(args, k, '', true);
    if (v !== undefined) out[k] = v;
  }
  checkMembers(args, ['uri', 'blk', 'inc', 'detach', 'resume']);
  return out;
}

/** Type-check `{uri}` (migrate-incoming, migrate-recover). */
export function visitUriArgs(args: QmpObject): string {
  const uri = argStr(args, 'uri');
  checkMembers(args, ['uri']);
  return uri;
}

/** Type-check migrate-continue's `{state}` (a MigrationStatus). */
export function visitContinueArgs(args: QmpObject): MigrationStatus {
  if (!Object.prototype.hasOwnProperty.call(args, 'state')) throw new QmpError("Parameter 'state' is missing");
  const state = toEnum(args.state!, 'state', MIGRATION_STATUSES);
  checkMembers(args, ['state']);
  return state;
}

/** For commands without arguments (migrate_cancel, migrate-pause, query-migrate, ...). */
export function visitNoArgs(args: QmpObject): void {
  checkMembers(args, []);
}
