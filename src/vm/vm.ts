/**
 * SimVm: the simulated VM behind `postcopy vm`. It owns the guest RAM
 * (GuestMemory in the hot path's shared memory), the workload worker, the
 * run state (prelaunch, running, paused, inmigrate, finish-migrate,
 * postmigrate) and one migration at a time, and serves QMP the way QEMU 7.2
 * does (commands, error texts, MIGRATION/MIGRATION_PASS/STOP/RESUME events).
 * The migration plumbing lives in outgoing.ts and incoming.ts.
 */
import { Hotpath } from '../hotpath/hotpath.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { hotpathPageOps } from '../engine/hotpath-ops.js';
import type { PageOps } from '../engine/ports.js';
import { EventBus } from '../control/events.js';
import { MigrationConfig, registerConfigCommands } from '../control/config-commands.js';
import { QmpServer } from '../control/qmp-server.js';
import { checkCapabilities, visitCapabilities } from '../control/capabilities.js';
import { StatusMachine, isActiveStatus } from '../control/status.js';
import { MIGRATE_ERRORS, visitContinueArgs, visitMigrateArgs, visitNoArgs, visitUriArgs } from '../control/migrate-args.js';
import { QmpError } from '../errors.js';
import type { QmpObject } from '../control/json.js';
import type { WorkloadSpec } from './options.js';
import { Workload } from './workload.js';
import { loadRamFile, ramDigest, saveRamFile } from './ram-file.js';
import type { OpaqueSection } from './devices.js';
import { Outgoing } from './outgoing.js';
import { Incoming } from './incoming.js';

/** QEMU's RAM block name and machine type name for `-M none`. */
export const NONE_RAM_IDSTR = 'ram';
export const NONE_MACHINE = 'none';

/** How a `postcopy vm` process is configured (the command line). */
export interface VmOptions {
  /** Machine type name (default "none"); ignored when adopting. */
  machine?: string;
  /** RAM size in bytes; undefined with `incoming` means: adopt the source's layout. */
  ram?: number;
  /** RAM image file (loaded at start if it has the RAM's size; written at quit / after an incoming migration). */
  memPath?: string;
  workload?: WorkloadSpec;
  /** Start in prelaunch (-S). */
  startPaused?: boolean;
  /** `-incoming` URI or "defer". */
  incoming?: string;
  /** Nice value of the migration's fault-path threads during postcopy (the engines' faultPriority). */
  faultPriority?: number;
  /** Called when the process should exit (quit, failed incoming migration). */
  onExit?: (code: number) => void;
}

/** QEMU run states we take. */
export type RunState = 'prelaunch' | 'running' | 'paused' | 'inmigrate' | 'finish-migrate' | 'postmigrate';

export class SimVm {
  readonly hp: Hotpath;
  readonly pageOps: PageOps;
  readonly bus = new EventBus();
  readonly config: MigrationConfig;
  readonly qmp: QmpServer;
  memory: GuestMemory | undefined;
  machineName: string;
  runState: RunState;
  /** Device sections received by an adopting destination (sent back when migrating out). */
  devices: OpaqueSection[] | undefined;
  workload: Workload | undefined;
  /** QEMU's autostart: start after an incoming migration (false with -S; cont/stop change it while inmigrate). */
  autostart: boolean;
  outgoing: Outgoing | undefined;
  readonly incoming: Incoming | undefined;
  /** The run state says running but the workload must not run yet (postcopy without a fault path). */
  holdWorkload = false;
  /** Counters of a workload that was replaced (adopting destination after postcopy), added to x-query-workload. */
  workloadBase = { visits: 0, faults: 0, blockedUs: 0, maxBlockedUs: 0 };
  private exiting = false;
  /** RAM was loaded from --mem-path (otherwise it is fresh, all zero, until something writes it). */
  ramFromFile = false;

  constructor(readonly opts: VmOptions) {
    this.machineName = opts.machine ?? NONE_MACHINE;
    const ramBytes = opts.ram ?? 0;
    this.hp = Hotpath.create({ initialBytes: ramBytes + (8 << 20) });
    this.pageOps = hotpathPageOps(this.hp);
    if (opts.ram !== undefined) {
      this.memory = GuestMemory.create(this.hp, [{ idstr: NONE_RAM_IDSTR, usedLength: opts.ram }]);
      if (opts.memPath) this.ramFromFile = loadRamFile(this.memory, opts.memPath);
    }
    this.autostart = !opts.startPaused;
    this.runState = opts.incoming !== undefined ? 'inmigrate' : opts.startPaused ? 'prelaunch' : 'running';
    this.config = new MigrationConfig(() => ({
      migrationActive: this.migrationActive(),
      incoming: this.runState === 'inmigrate',
    }));
    this.config.onChange = (what) => {
      if (what === 'parameters') this.outgoing?.applyParameters();
    };
    this.qmp = new QmpServer({ bus: this.bus });
    registerConfigCommands(this.qmp, this.config);
    // QEMU's own refusals (in progress, then the cross-checks) come before "not supported by this implementation".
    this.qmp.register('migrate-set-capabilities', (args) => {
      const changes = visitCapabilities(args.capabilities);
      if (this.migrationActive()) throw new QmpError(MIGRATE_ERRORS.inProgress);
      const next = { ...this.config.capabilities };
      for (const [name, state] of changes) next[name] = state;
      checkCapabilities(next, this.config.capabilities, { incoming: this.runState === 'inmigrate' });
      this.config.setCapabilities(args);
    });
    this.registerCommands();
    if (opts.incoming !== undefined) this.incoming = new Incoming(this, opts.incoming);
    if (this.memory) this.startWorkload();
  }

  /** A status machine wired to the events capability and the bus. */
  newStatus(): StatusMachine {
    return new StatusMachine({ bus: this.bus, eventsEnabled: () => this.config.capabilities.events });
  }

  /** Starts listening (QMP, and -incoming URI unless defer). */
  async start(qmpAddress: string): Promise<void> {
    await this.qmp.listen(qmpAddress);
    await this.incoming?.startFromCommandLine();
  }

  /**
   * QEMU's migration_is_running(): the OUTGOING migration runs. An incoming
   * one does not count — QEMU 7.2 accepts migrate-set-capabilities on a
   * destination in the middle of its (postcopy) load, and answers `migrate`
   * there with the run-state text.
   */
  migrationActive(): boolean {
    return this.outgoing?.busy() ?? false;
  }

  /** Creates the workload (when asked for) on the current memory and runs it if the VM runs. */
  startWorkload(): void {
    if (!this.opts.workload || !this.memory || this.workload) return;
    this.workload = new Workload(this.memory, this.opts.workload);
    if (this.runState === 'running') this.workload.resume();
  }

  /** vm_start: → running, RESUME. */
  vmStart(): void {
    if (this.runState === 'running') return;
    this.runState = 'running';
    if (!this.holdWorkload) this.workload?.resume();
    this.bus.emit('RESUME');
  }

  /** vm_stop: running → `state` with STOP; other states just change name when asked. */
  async vmStop(state: RunState = 'paused'): Promise<void> {
    if (this.runState === 'running') {
      await this.workload?.pause();
      this.runState = state;
      this.bus.emit('STOP');
    } else if (state === 'finish-migrate' || state === 'postmigrate') {
      this.runState = state;
    }
  }

  /** Switches to adopted RAM (incoming without --ram). */
  adoptMemory(blocks: readonly { idstr: string; usedLength: number; bytes: Uint8Array }[]): void {
    const mem = GuestMemory.create(this.hp, blocks.map((b) => ({ idstr: b.idstr, usedLength: b.usedLength })));
    blocks.forEach((b, i) => mem.blocks[i]!.bytes().set(b.bytes.subarray(0, b.usedLength)));
    this.memory = mem;
  }

  /** Writes RAM to --mem-path (no-op without it). */
  saveRam(): void {
    if (this.opts.memPath && this.memory) saveRamFile(this.memory, this.opts.memPath);
  }

  /** quit / fatal: tidy up and ask the process to exit. */
  async shutdown(code: number): Promise<void> {
    if (this.exiting) return;
    this.exiting = true;
    try {
      await this.workload?.pause();
      if (code === 0) this.saveRam();
    } finally {
      await this.workload?.close();
      await this.incoming?.close();
      await this.qmp.close();
      this.opts.onExit?.(code);
    }
  }

  private registerCommands(): void {
    const q = this.qmp;
    q.register('query-status', (args) => {
      visitNoArgs(args);
      return { status: this.runState, singlestep: false, running: this.runState === 'running' };
    });
    q.register('stop', async (args) => {
      visitNoArgs(args);
      if (this.runState === 'inmigrate') this.autostart = false;
      else await this.vmStop('paused');
    });
    q.register('cont', (args) => {
      visitNoArgs(args);
      if (this.runState === 'inmigrate') this.autostart = true;
      else this.vmStart();
    });
    q.register('quit', (args) => {
      visitNoArgs(args);
      this.bus.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
      setImmediate(() => void this.shutdown(0));
    });
    q.register('x-ram-digest', (args) => {
      visitNoArgs(args);
      return ramDigest(this.memory);
    });
    // Our extension: what the guest workload is doing (tests, demo).
    q.register('x-query-workload', (args) => {
      visitNoArgs(args);
      const w = this.workload;
      if (!w) return { present: false, running: false, visits: 0, 'cpu-throttle-percentage': 0, faults: 0, 'blocked-ms': 0, 'max-blocked-ms': 0 };
      const f = w.faultStats;
      const b = this.workloadBase;
      return {
        present: true,
        running: this.runState === 'running' && !this.holdWorkload,
        visits: (b.visits + w.visits) >>> 0,
        'cpu-throttle-percentage': w.throttle,
        // postcopy fault path: pages the workload waited for, and how long it was blocked
        faults: b.faults + f.faults,
        'blocked-ms': Math.round((b.blockedUs + f.blockedUs) / 1000),
        'max-blocked-ms': Math.round(Math.max(b.maxBlockedUs, f.maxBlockedUs) / 1000),
      };
    });
    q.register('query-migrate', (args) => {
      visitNoArgs(args);
      if (this.incoming && (this.incoming.started || !this.outgoing)) return this.incoming.queryMigrate();
      return this.outgoing?.queryMigrate() ?? {};
    });
    q.register('migrate', (args) => this.migrate(args));
    q.register('migrate_cancel', (args) => {
      visitNoArgs(args);
      this.outgoing?.cancel();
      this.incoming?.cancel();
    });
    q.register('migrate-continue', (args) => {
      const state = visitContinueArgs(args);
      const cur = this.outgoing?.current ?? 'none';
      if (cur !== state) throw new QmpError(MIGRATE_ERRORS.notExpectedState(cur));
      this.outgoing!.continue(state);
    });
    q.register('migrate-incoming', async (args) => {
      const uri = visitUriArgs(args);
      if (!this.incoming) throw new QmpError(MIGRATE_ERRORS.noIncomingOption);
      await this.incoming.migrateIncoming(uri);
    });
    q.register('migrate-start-postcopy', (args) => {
      visitNoArgs(args);
      const caps = this.config.capabilities;
      if (!caps['postcopy-ram'] && !caps['dirty-bitmaps']) throw new QmpError(MIGRATE_ERRORS.startPostcopyNotEnabled);
      const st = this.outgoing?.current ?? 'none';
      if (st === 'none') throw new QmpError(MIGRATE_ERRORS.startPostcopyIdle);
      // QEMU 7.2 accepts it after a migration ended (it only sets a flag nobody reads then);
      // with dirty-bitmaps alone there is no RAM postcopy to start.
      if (!isActiveStatus(st) || !caps['postcopy-ram']) return;
      this.outgoing!.startPostcopy();
    });
    q.register(
      'migrate-pause',
      (args) => {
        visitNoArgs(args);
        // QEMU looks at the outgoing migration first, then the incoming one.
        if (this.outgoing?.current === 'postcopy-active') this.outgoing.pause();
        else if (this.incoming?.status.status === 'postcopy-active') this.incoming.pause();
        else throw new QmpError(MIGRATE_ERRORS.pauseNotPostcopy);
      },
      { allowOob: true },
    );
    q.register(
      'migrate-recover',
      async (args) => {
        const uri = visitUriArgs(args);
        if (!this.incoming) throw new QmpError(MIGRATE_ERRORS.recoverNotPaused);
        await this.incoming.recover(uri);
      },
      { allowOob: true },
    );
  }

  private async migrate(args: QmpObject): Promise<void> {
    const a = visitMigrateArgs(args);
    if (a.resume) {
      // QEMU's migrate_prepare: the state first, then release-ram.
      if (this.outgoing?.current !== 'postcopy-paused') throw new QmpError(MIGRATE_ERRORS.resumeNotPaused);
      this.outgoing.resume(a.uri);
      return;
    }
    if (this.migrationActive()) throw new QmpError(MIGRATE_ERRORS.inProgress);
    if (this.runState === 'inmigrate') throw new QmpError(MIGRATE_ERRORS.waitingIncoming);
    if (this.runState === 'postmigrate') throw new QmpError(MIGRATE_ERRORS.pausedByPrevious);
    if (a.blk || a.inc) throw new QmpError('Block migration is not supported by this implementation');
    if (!this.memory) throw new QmpError('The VM has no RAM to migrate');
    this.outgoing = new Outgoing(this);
    this.outgoing.start(a.uri);
  }
}
