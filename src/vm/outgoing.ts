/**
 * Outgoing: one `migrate` of a SimVm. Connects the URI (a failure shows up
 * as `failed` in query-migrate, as in QEMU 7.2, not as a QMP error), runs
 * MigrationSource over the VM's GuestMemory with the QMP capabilities and
 * parameters, stops the VM at switchover (STOP, finish-migrate) and leaves
 * it in postmigrate after completion, or resumes it after cancel/failure.
 * Postcopy: migrate-start-postcopy, migrate-pause and migrate {resume:true}
 * (connect, then MigrationSource.resume() on the new channel).
 */
import { QmpError } from '../errors.js';
import { MIGRATE_ERRORS } from '../control/migrate-args.js';
import { connect } from '../transport/connect.js';
import { parseMigrationUri } from '../transport/uri.js';
import type { Channel } from '../transport/channel.js';
import { sourceGuestFromMemory } from '../engine/memory-guest.js';
import { MigrationSource } from '../source/source.js';
import type { SourceCapabilities, SourceParameters } from '../source/options.js';
import type { Capabilities } from '../control/capabilities.js';
import type { Parameters } from '../control/parameters.js';
import { isActiveStatus, type MigrationStatus, type StatusMachine } from '../control/status.js';
import { deviceSections } from './devices.js';
import type { RunState, SimVm } from './vm.js';

/** The engine's capabilities from the QMP record. */
export function sourceCapabilities(c: Capabilities): SourceCapabilities {
  return {
    xbzrle: c.xbzrle,
    autoConverge: c['auto-converge'],
    events: c.events,
    returnPath: c['return-path'],
    pauseBeforeSwitchover: c['pause-before-switchover'],
    postcopyRam: c['postcopy-ram'],
    releaseRam: c['release-ram'],
  };
}

/** A QMP size as a JS number (2^64-1 and other huge values → MAX_SAFE_INTEGER). */
function sizeNumber(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

/** The engine's parameters from the QMP record (max-bandwidth 2^64-1 → unlimited). */
export function sourceParameters(p: Parameters): SourceParameters {
  return {
    maxBandwidth: sizeNumber(p['max-bandwidth']),
    maxPostcopyBandwidth: sizeNumber(p['max-postcopy-bandwidth']),
    downtimeLimit: p['downtime-limit'],
    xbzrleCacheSize: p['xbzrle-cache-size'],
    cpuThrottleInitial: p['cpu-throttle-initial'],
    cpuThrottleIncrement: p['cpu-throttle-increment'],
    cpuThrottleTailslow: p['cpu-throttle-tailslow'],
    maxCpuThrottle: p['max-cpu-throttle'],
    throttleTriggerThreshold: p['throttle-trigger-threshold'],
  };
}

export class Outgoing {
  readonly status: StatusMachine;
  private source: MigrationSource | undefined;
  private connectError: string | undefined;
  private connecting: AbortController | undefined;
  private channel: Channel | undefined;
  /** Run state when the migration stopped the VM (what globalstate carries). */
  private stoppedFrom: RunState | undefined;
  /** Resolves with the final status. */
  done: Promise<MigrationStatus> = Promise.resolve('none');
  /** migrate-start-postcopy came while connecting: applied once the engine exists. */
  private postcopyAsked = false;
  /** The connect of a migrate {resume:true}. */
  private resuming: AbortController | undefined;
  /** Last error of a resume attempt (connect or handshake), kept for the report. */
  resumeError: string | undefined;

  constructor(private readonly vm: SimVm) {
    this.status = vm.newStatus();
  }

  /** Current status, `setup` while connecting. */
  get current(): MigrationStatus {
    if (this.connecting) return 'setup';
    if (this.connectError !== undefined) return 'failed';
    return this.status.status;
  }

  /** True while it runs. */
  busy(): boolean {
    return this.connecting !== undefined || isActiveStatus(this.status.status);
  }

  /** Validates the URI synchronously (QMP error), then runs in the background. */
  start(uri: string): void {
    try {
      parseMigrationUri(uri, 'outgoing');
    } catch (e) {
      // QEMU 7.2 has already entered setup and ends in failed, without an error-desc.
      this.connectError = '';
      this.emitSetupFailed();
      throw new QmpError(e instanceof Error ? e.message : String(e));
    }
    const ac = (this.connecting = new AbortController());
    this.done = (async (): Promise<MigrationStatus> => {
      let ch: Channel;
      try {
        ch = await connect(uri, ac.signal);
      } catch (e) {
        this.connecting = undefined;
        this.connectError = ac.signal.aborted ? undefined : e instanceof Error ? e.message : String(e);
        if (this.connectError === undefined) return 'cancelled';
        this.emitSetupFailed();
        return 'failed';
      }
      this.connecting = undefined;
      this.channel = ch;
      return this.run(ch);
    })();
  }

  /** QEMU went setup → failed before the engine started: the events it sent (events capability). */
  private emitSetupFailed(): void {
    if (!this.vm.config.capabilities.events) return;
    this.vm.bus.emit('MIGRATION', { status: 'setup' });
    this.vm.bus.emit('MIGRATION', { status: 'failed' });
  }

  private async run(ch: Channel): Promise<MigrationStatus> {
    const vm = this.vm;
    const mem = vm.memory!;
    const guest = sourceGuestFromMemory(mem, {
      stop: async () => {
        this.stoppedFrom = vm.runState;
        await vm.vmStop('finish-migrate');
      },
      resume: () => {
        if (this.stoppedFrom === 'running') vm.vmStart();
        else if (this.stoppedFrom) vm.runState = this.stoppedFrom;
        this.stoppedFrom = undefined;
      },
      setThrottle: (p) => vm.workload?.setThrottle(p),
    });
    const src = (this.source = new MigrationSource(guest, {
      capabilities: sourceCapabilities(vm.config.capabilities),
      parameters: sourceParameters(vm.config.parameters),
      pageOps: vm.pageOps,
      status: this.status,
    }));
    src.on('MIGRATION_PASS', (d: { pass: number }) => vm.bus.emit('MIGRATION_PASS', { pass: d.pass }));
    if (this.postcopyAsked) src.startPostcopy();
    const status = await src.migrate(ch, {
      machineName: vm.machineName,
      devices: () => deviceSections(vm.devices, this.stoppedFrom ?? vm.runState),
    });
    vm.workload?.setThrottle(0);
    if (status === 'completed') {
      vm.runState = 'postmigrate';
    }
    return status;
  }

  /** migrate-set-parameters during a migration. */
  applyParameters(): void {
    this.source?.setParameters(sourceParameters(this.vm.config.parameters));
  }

  /** migrate-start-postcopy (the caller checked capabilities and that a migration is running). */
  startPostcopy(): void {
    if (this.source) this.source.startPostcopy();
    else this.postcopyAsked = true;
  }

  /** migrate-pause: only postcopy-active; shuts the channel → postcopy-paused. */
  pause(): void {
    if (!this.source || this.current !== 'postcopy-active') throw new QmpError(MIGRATE_ERRORS.pauseNotPostcopy);
    try {
      this.source.pause();
    } catch (e) {
      throw new QmpError(e instanceof Error ? e.message : String(e));
    }
  }

  /**
   * migrate {uri, resume:true}: only postcopy-paused (release-ram refused);
   * connects in the background and runs the recovery handshake on the new
   * channel. A failed connect or handshake leaves it postcopy-paused (QEMU
   * only fails a migration from setup), so a later resume may succeed.
   */
  resume(uri: string): void {
    const src = this.source;
    if (!src || this.current !== 'postcopy-paused' || this.resuming) throw new QmpError(MIGRATE_ERRORS.resumeNotPaused);
    if (this.vm.config.capabilities['release-ram']) throw new QmpError(MIGRATE_ERRORS.resumeReleaseRam);
    try {
      parseMigrationUri(uri, 'outgoing');
    } catch (e) {
      throw new QmpError(e instanceof Error ? e.message : String(e));
    }
    const ac = (this.resuming = new AbortController());
    void (async () => {
      let ch: Channel;
      try {
        ch = await connect(uri, ac.signal);
      } catch (e) {
        this.resumeError = e instanceof Error ? e.message : String(e);
        return;
      } finally {
        this.resuming = undefined;
      }
      this.channel = ch;
      try {
        await src.resume(ch);
        this.resumeError = undefined;
      } catch (e) {
        this.resumeError = e instanceof Error ? e.message : String(e);
        ch.destroy();
      }
    })();
  }

  /** migrate_cancel. */
  cancel(): void {
    if (this.connecting) {
      this.connecting.abort();
      this.connecting = undefined;
      return;
    }
    this.source?.cancel();
  }

  /** migrate-continue (the caller checked the state). */
  continue(state: MigrationStatus): void {
    this.source?.continue(state);
  }

  /** query-migrate. */
  queryMigrate(): Record<string, unknown> {
    if (this.connecting) return { status: 'setup' };
    if (this.connectError === '') return { status: 'failed' };
    if (this.connectError !== undefined) return { status: 'failed', 'error-desc': this.connectError };
    return (this.source?.queryMigrate() ?? {}) as Record<string, unknown>;
  }
}
