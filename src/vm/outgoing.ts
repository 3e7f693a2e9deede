/**
 * Outgoing: one `migrate` of a SimVm. Connects the URI (a failure shows up
 * as `failed` in query-migrate, as in QEMU 7.2, not as a QMP error), runs
 * MigrationSource over the VM's GuestMemory with the QMP capabilities and
 * parameters, stops the VM at switchover (STOP, finish-migrate) and leaves
 * it in postmigrate after completion, or resumes it after cancel/failure.
 * Postcopy: migrate-start-postcopy, migrate-pause and migrate {resume:true}
 * (connect, then MigrationSource.resume() on the new channel).
 *
 * postcopy-preempt (SPEC §6.5): as QEMU 7.2, a second connection to the same
 * URI is opened right after the main one (and again after each resume's
 * main connection) and handed to PreemptSource; a transport that cannot
 * carry a second channel (exec:, fd:) fails the migration from setup.
 */
import { QmpError } from '../errors.js';
import { MIGRATE_ERRORS } from '../control/migrate-args.js';
import { connect } from '../transport/connect.js';
import { parseMigrationUri } from '../transport/uri.js';
import type { Channel } from '../transport/channel.js';
import { sourceGuestFromMemory } from '../engine/memory-guest.js';
import { MigrationSource } from '../source/source.js';
import { PreemptSource } from '../preempt/source.js';
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
  /** The connect of the preempt channel while it runs (postcopy-preempt). */
  private preemptConnecting: Promise<void> | undefined;
  /** Bumped per preempt connect and when a resume attempt fails: a late connect of an older one is dropped. */
  private preemptGen = 0;

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
      if (this.vm.config.capabilities['postcopy-preempt']) {
        const kind = parseMigrationUri(uri, 'outgoing').kind;
        if (kind !== 'tcp' && kind !== 'unix') {
          // QEMU 7.2 checks this once connected: setup → failed, the text on stderr only.
          process.stderr.write(`postcopy vm: ${PREEMPT_NEEDS_SOCKET}\n`);
          ch.destroy();
          this.connectError = '';
          this.emitSetupFailed();
          return 'failed';
        }
      }
      return this.run(ch, uri);
    })();
  }

  /**
   * Opens the preempt channel to `uri` in the background (QEMU connects it
   * once the main channel is up) and installs it on `src` — unless `stale()`
   * says that migration or resume attempt is over. A failed connect ends the
   * main channel with the error (the destination would wait for it forever).
   */
  private connectPreempt(src: PreemptSource, uri: string, main: Channel, usable: (s: MigrationStatus) => boolean): void {
    const gen = ++this.preemptGen;
    const stale = (): boolean => gen !== this.preemptGen || !usable(src.status);
    const p: Promise<void> = connect(uri)
      .then(
        (pc) => {
          if (stale()) pc.destroy();
          else src.setPreemptChannel(pc);
        },
        (e: unknown) => {
          if (!stale()) main.destroy(e instanceof Error ? e : new Error(String(e)));
        },
      )
      .finally(() => {
        if (this.preemptConnecting === p) this.preemptConnecting = undefined;
      });
    this.preemptConnecting = p;
  }

  /** QEMU went setup → failed before the engine started: the events it sent (events capability). */
  private emitSetupFailed(): void {
    if (!this.vm.config.capabilities.events) return;
    this.vm.bus.emit('MIGRATION', { status: 'setup' });
    this.vm.bus.emit('MIGRATION', { status: 'failed' });
  }

  private async run(ch: Channel, uri: string): Promise<MigrationStatus> {
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
    const opts = {
      capabilities: sourceCapabilities(vm.config.capabilities),
      parameters: sourceParameters(vm.config.parameters),
      pageOps: vm.pageOps,
      status: this.status,
    };
    const preempt = vm.config.capabilities['postcopy-preempt'];
    const src = (this.source = preempt ? new PreemptSource(guest, { ...opts, faultPriority: vm.opts.faultPriority }) : new MigrationSource(guest, opts));
    if (src instanceof PreemptSource) this.connectPreempt(src, uri, ch, isActiveStatus);
    src.on('MIGRATION_PASS', (d: { pass: number }) => vm.bus.emit('MIGRATION_PASS', { pass: d.pass }));
    if (this.postcopyAsked) this.startPostcopy();
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
    const src = this.source;
    if (!src) this.postcopyAsked = true;
    // With postcopy-preempt the switchover waits for the preempt channel (QEMU 7.2 does too).
    else if (this.preemptConnecting) void this.preemptConnecting.then(() => src.startPostcopy());
    else src.startPostcopy();
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
      // postcopy-preempt: a new preempt channel with each resume (the destination waits for both)
      if (src instanceof PreemptSource) this.connectPreempt(src, uri, ch, (s) => s === 'postcopy-recover' || s === 'postcopy-active');
      try {
        await src.resume(ch);
        this.resumeError = undefined;
      } catch (e) {
        this.preemptGen++;
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
    const info = (this.source?.queryMigrate() ?? {}) as Record<string, unknown>;
    // ours: requested pages that went on the preempt channel(s)
    if (this.source instanceof PreemptSource) info['x-postcopy-preempt-pages'] = this.source.preemptPages;
    return info;
  }
}

/** QEMU 7.2's text when postcopy-preempt meets a transport with one channel only (exec:, fd:). */
export const PREEMPT_NEEDS_SOCKET = 'Postcopy preempt is not supported as current migration stream does not support multi-channels.';
