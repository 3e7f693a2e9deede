/**
 * Incoming: the `-incoming` side of a SimVm. Listens on the command-line
 * URI or, with `defer`, on the one `migrate-incoming` gives; accepts one
 * channel and loads it with MigrationDestination. With local RAM (--ram)
 * the blocks must match; without, the source's RAM layout and machine type
 * are adopted. Device sections we have no model for are kept as opaque
 * bytes. After the load the run state follows globalstate/autostart; a
 * failed load ends the process with status 1, as QEMU does (SPEC §1.8).
 *
 * Postcopy (postcopy-ram): at RUN ('postcopyRun') the run state is applied
 * and the workload starts with every page touch going through the fault
 * path (FaultBridge → dest.ensure()); migrate-pause shuts the input,
 * migrate-recover listens on a new URI and hands the one accepted channel
 * to dest.recover() (SPEC §7.2).
 *
 * postcopy-preempt (SPEC §6.5): the listener waits for a second connection,
 * the preempt channel, before anything is loaded (QEMU 7.2 does; with exec:
 * or fd:, which give one channel, it waits forever, as QEMU does), and
 * PreemptDestination reads it. migrate-recover's listener likewise takes two
 * connections before the handshake, the second one being the new preempt
 * channel.
 */
import type { Duplex } from 'node:stream';
import { QmpError } from '../errors.js';
import { listen, type Listener } from '../transport/listen.js';
import type { Channel } from '../transport/channel.js';
import { engineBlocks } from '../engine/memory-guest.js';
import { MigrationDestination, type DestinationOptions } from '../destination/destination.js';
import { PreemptDestination } from '../preempt/destination.js';
import { plainBlockAllocator } from '../destination/ram-loader.js';
import { MIGRATE_ERRORS } from '../control/migrate-args.js';
import { isActiveStatus, type StatusMachine } from '../control/status.js';
import { QEMU_VM_FILE_MAGIC } from '../wire/constants.js';
import type { RunState, SimVm } from './vm.js';
import { FaultBridge } from './fault-bridge.js';
import { Workload } from './workload.js';
import { GuestMemory } from '../memory/guest-memory.js';
import type { EngineRamBlock } from '../engine/ports.js';

/** Header bytes before the machine name: magic, version, CONFIGURATION, be32 length. */
const CONFIG_NAME_AT = 13;
const MAX_MACHINE_NAME = 256;

/** Reads exactly `n` bytes from a paused-mode readable; undefined at end of stream. */
async function readExactly(s: Duplex, n: number): Promise<Buffer | undefined> {
  const parts: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const chunk = s.read() as Buffer | null;
    if (chunk === null) {
      if (s.readableEnded || s.destroyed) break;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          s.off('readable', done);
          s.off('end', done);
          s.off('close', done);
          resolve();
        };
        s.on('readable', done);
        s.on('end', done);
        s.on('close', done);
      });
      continue;
    }
    parts.push(chunk);
    have += chunk.length;
  }
  const all = Buffer.concat(parts);
  if (all.length > n) s.unshift(all.subarray(n));
  if (all.length < n) {
    if (all.length > 0) s.unshift(all);
    return undefined;
  }
  return all.subarray(0, n);
}

/**
 * Peeks the machine type name of the configuration section and puts every
 * byte back. Undefined when the stream does not start like a migration stream.
 */
export async function peekMachineName(s: Duplex): Promise<string | undefined> {
  const head = await readExactly(s, CONFIG_NAME_AT);
  if (!head) return undefined;
  const len = head.readUInt32BE(9);
  if (head.readUInt32BE(0) !== QEMU_VM_FILE_MAGIC || len > MAX_MACHINE_NAME) {
    s.unshift(head);
    return undefined;
  }
  const name = await readExactly(s, len);
  if (name) s.unshift(name);
  s.unshift(head);
  return name?.toString('latin1');
}

export class Incoming {
  readonly status: StatusMachine;
  private listener: Listener | undefined;
  private dest: MigrationDestination | undefined;
  private channel: Channel | undefined;
  /** migrate-incoming was run (or -incoming had a URI). */
  started = false;
  /** RUN arrived: the VM was started by postcopy (the load continues). */
  private ranAtRun = false;
  private finished = false;
  /** migrate-recover's listener while it waits for the source. */
  private recoverListener: Listener | undefined;
  /** Serves the workload's faults during postcopy. */
  bridge: FaultBridge | undefined;
  /** Adopted blocks, each in its own GuestMemory in the VM's shared memory. */
  private readonly adoptedParts: GuestMemory[] = [];

  constructor(
    private readonly vm: SimVm,
    private readonly uri: string,
  ) {
    this.status = vm.newStatus();
  }

  /** True while a stream is being loaded. */
  busy(): boolean {
    return isActiveStatus(this.status.status);
  }

  /** Listens on the -incoming URI unless it is `defer`. */
  async startFromCommandLine(): Promise<void> {
    if (this.uri === 'defer') return;
    this.started = true;
    await this.listenOn(this.uri);
  }

  /** migrate-incoming. */
  async migrateIncoming(uri: string): Promise<void> {
    if (this.uri !== 'defer' || this.started) throw new QmpError(MIGRATE_ERRORS.incomingStarted);
    this.started = true;
    this.status.emitSetup();
    try {
      await this.listenOn(uri);
    } catch (e) {
      this.started = false;
      throw new QmpError(e instanceof Error ? e.message : String(e));
    }
  }

  private async listenOn(uri: string): Promise<void> {
    this.listener = await listen(uri);
    void this.acceptAndLoad(this.listener);
  }

  private async acceptAndLoad(l: Listener): Promise<void> {
    let ch: Channel;
    const vm = this.vm;
    // QEMU looks at the capability when the first connection comes in.
    let preempt: Channel | undefined;
    try {
      ch = await l.accept();
      if (vm.config.capabilities['postcopy-preempt']) preempt = await l.accept();
    } catch {
      return; // listener closed
    }
    // One connection per migration, two with postcopy-preempt (QEMU stops listening once it
    // has its channels; the address stays in query-migrate, and migrate-recover may listen on it again).
    void l.close().catch(() => undefined);
    this.channel = ch;
    const adopt = vm.memory === undefined;
    let machineName = vm.machineName;
    if (adopt) machineName = (await peekMachineName(ch)) ?? machineName;
    // An incoming VM's guest has not run: its RAM is all zero unless it came from --mem-path.
    const local = vm.memory ? engineBlocks(vm.memory, !vm.ramFromFile) : undefined;
    const options: DestinationOptions = {
      machineName,
      blocks: local,
      // Unknown device sections are kept opaque; RAM blocks must exist when we have local RAM.
      adopt: true,
      // Adopting for a guest that may run during postcopy: blocks in shared memory (copied again at
      // the end, so only then); otherwise plain memory.
      allocBlock: adopt
        ? vm.opts.workload && vm.config.capabilities['postcopy-ram']
          ? (idstr, usedLength, ramAddr) => this.allocAdopted(idstr, usedLength, ramAddr)
          : plainBlockAllocator
        : (idstr) => {
            throw new Error(`Unknown ramblock "${idstr}", cannot accept migration`);
          },
      autostart: true,
      postcopyRam: vm.config.capabilities['postcopy-ram'],
      postcopyBlocktime: vm.config.capabilities['postcopy-blocktime'],
      pageOps: vm.pageOps,
      status: this.status,
      // received bitmaps in the shared memory: the workload worker reads them (fault path)
      hotpath: vm.hp,
      faultPriority: vm.opts.faultPriority,
    };
    const dest = (this.dest = preempt ? new PreemptDestination(options) : new MigrationDestination(options));
    // A broken preempt channel pauses (or fails) the migration itself: nothing to do with the rejection.
    if (preempt && dest instanceof PreemptDestination) void dest.attachPreempt(preempt).catch(() => undefined);
    dest.once('postcopyRun', () => this.onPostcopyRun(dest));
    // QEMU starts the VM (RESUME) before it reports `completed`: act on the engine's 'runstate'
    // event, which comes after the load and before the status change.
    dest.on('runstate', () => {
      // At POSTCOPY_RUN the engine also reports the run state: 'postcopyRun' handles that one;
      // after a postcopy the rest is done once the load has resolved.
      const pc = dest.postcopyState;
      if (this.ranAtRun || pc === 'listening' || pc === 'running') return;
      void this.finishLoad(dest, adopt, machineName);
    });
    const status = await dest.load(ch);
    if (status === 'completed') await this.finishLoad(dest, adopt, machineName);
    else {
      const why = dest.queryMigrate()['error-desc'] ?? 'unknown error';
      process.stderr.write(`postcopy vm: ${why}\npostcopy vm: load of migration failed: Invalid argument\n`);
      await vm.shutdown(1);
    }
  }

  /**
   * POSTCOPY_RUN (QEMU's loadvm_postcopy_handle_run_bh): devices are in, the
   * run state is applied now and the workload runs, faulting pages in.
   */
  private onPostcopyRun(dest: MigrationDestination): void {
    const vm = this.vm;
    this.ranAtRun = true;
    this.takeDevices(dest);
    let mem = vm.memory;
    if (!mem && vm.opts.workload) {
      // Adopting: the guest runs on the largest adopted block, in shared memory since setup.
      mem = [...this.adoptedParts].sort((a, b) => b.totalBytes - a.totalBytes)[0];
      if (mem) vm.workload = new Workload(mem, vm.opts.workload);
    }
    const w = vm.workload;
    if (mem && w) {
      const idstr = mem.blocks[0]!.idstr;
      const bits = dest.received.get(idstr);
      if (bits && bits.buffer instanceof SharedArrayBuffer) {
        this.bridge = new FaultBridge(dest, [idstr]);
        w.attachFaults(this.bridge, bits.byteOffset);
      } else {
        // No shared received bitmap: the workload cannot fault; it waits for the end of the migration.
        process.stderr.write('postcopy vm: workload held until postcopy completes (no shared received bitmap)\n');
        vm.holdWorkload = true;
      }
    }
    this.applyRunState(dest);
  }

  private takeDevices(dest: MigrationDestination): void {
    if (dest.devices.length > 0) {
      this.vm.devices = dest.devices.map((d) => ({ idstr: d.idstr, instanceId: d.instanceId, versionId: d.versionId, payload: d.payload }));
    }
  }

  /**
   * An adopted block in the hot path's shared memory (its own one-block
   * GuestMemory), so a workload can run on it from POSTCOPY_RUN. Plain
   * memory for a block GuestMemory cannot lay out.
   */
  private allocAdopted(idstr: string, usedLength: number, ramAddr: number): EngineRamBlock {
    let part: GuestMemory;
    try {
      part = GuestMemory.create(this.vm.hp, [{ idstr, usedLength }]);
    } catch {
      return plainBlockAllocator(idstr, usedLength, ramAddr);
    }
    this.adoptedParts.push(part);
    return { idstr, usedLength, ramAddr, bytes: part.blocks[0]!.bytes(), zeroed: true };
  }

  /** After a successful load: adopt RAM and devices, write --mem-path, apply the run state (unless RUN did). */
  private async finishLoad(dest: MigrationDestination, adopt: boolean, machineName: string): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    const vm = this.vm;
    // A workload that ran on an adopted block during postcopy: stop it (no write in flight) before the copy.
    const early = adopt && vm.workload && vm.memory === undefined ? vm.workload : undefined;
    if (early) {
      early.detachFaults();
      await early.pause();
      // from here to the new workload nothing awaits: x-query-workload always sees one of the two
      const f = early.faultStats;
      vm.workloadBase = { visits: early.visits, faults: f.faults, blockedUs: f.blockedUs, maxBlockedUs: f.maxBlockedUs };
      vm.workload = undefined;
      void early.close();
    }
    if (adopt) {
      vm.adoptMemory(dest.blocks);
      vm.machineName = machineName;
    }
    this.takeDevices(dest);
    // every page is here: the workload stops checking the received bitmap
    vm.workload?.detachFaults();
    vm.holdWorkload = false;
    vm.saveRam();
    if (this.ranAtRun) {
      vm.startWorkload();
      if (vm.runState === 'running') vm.workload?.resume();
      return;
    }
    vm.startWorkload();
    this.applyRunState(dest);
  }

  /** globalstate "running" (or none) → autostart decides; any other state is applied. */
  private applyRunState(dest: MigrationDestination): void {
    const vm = this.vm;
    const gs = dest.globalState;
    if (gs === undefined || gs === 'running') {
      if (vm.autostart) vm.vmStart();
      else vm.runState = 'paused';
    } else {
      vm.runState = gs as RunState;
    }
  }

  /** migrate_cancel on the destination: QEMU 7.2 ignores it here (the source cancels). */
  cancel(): void {}

  /** migrate-pause on the destination: only postcopy-active; shuts the input → postcopy-paused. */
  pause(): void {
    if (this.status.status !== 'postcopy-active' || !this.dest) throw new QmpError(MIGRATE_ERRORS.pauseNotPostcopy);
    try {
      this.dest.pause();
    } catch (e) {
      throw new QmpError(e instanceof Error ? e.message : String(e));
    }
  }

  /**
   * migrate-recover {uri}: only in postcopy-paused. Emits MIGRATION setup
   * (the status stays postcopy-paused), drops a previous migrate-recover's
   * listener that has not been connected yet (QEMU 7.2 lets the user retry),
   * listens, and gives the one accepted connection to dest.recover(). A
   * failed handshake leaves it postcopy-paused for another migrate-recover.
   */
  async recover(uri: string): Promise<void> {
    const dest = this.dest;
    if (this.status.status !== 'postcopy-paused' || !dest) throw new QmpError(MIGRATE_ERRORS.recoverNotPaused);
    this.status.emitSetup();
    const old = this.recoverListener;
    this.recoverListener = undefined;
    await old?.close().catch(() => undefined);
    let l: Listener;
    try {
      l = await listen(uri);
    } catch (e) {
      throw new QmpError(e instanceof Error ? e.message : String(e));
    }
    this.recoverListener = l;
    void (async () => {
      try {
        const ch = await l.accept();
        // postcopy-preempt: the handshake waits for the new preempt channel too (QEMU 7.2 does)
        const preempt = dest instanceof PreemptDestination ? await l.accept().catch((e: unknown) => (ch.destroy(), Promise.reject(e))) : undefined;
        void l.close().catch(() => undefined);
        this.channel = ch;
        if (preempt && dest instanceof PreemptDestination) void dest.attachPreempt(preempt).catch(() => undefined);
        await dest.recover(ch);
      } catch {
        /* listener replaced or closed, or the handshake broke: back in postcopy-paused */
      } finally {
        if (this.recoverListener === l) this.recoverListener = undefined;
      }
    })();
  }

  /** query-migrate: the engine's (postcopy blocktime, x-postcopy-fault-latency), plus socket-address while listening. */
  queryMigrate(): Record<string, unknown> {
    const info: Record<string, unknown> = { ...(this.dest?.queryMigrate() ?? {}) };
    // ours: pages placed from the preempt channel(s)
    if (this.dest instanceof PreemptDestination) info['x-postcopy-preempt-pages'] = this.dest.preemptPages;
    const listening = this.recoverListener ?? this.listener;
    const addr = listening?.socketAddress;
    if (addr && this.status.status !== 'completed' && this.status.status !== 'failed') info['socket-address'] = addr;
    return info;
  }

  /** Stops listening. */
  async close(): Promise<void> {
    await this.recoverListener?.close().catch(() => undefined);
    await this.listener?.close();
  }
}
