/**
 * Spawns real QEMU running the test guest, with its RAM in a shared file under
 * /dev/shm (so tests can read it), the serial port in a file and QMP on a unix
 * socket. Also waits on migration progress the way migration-test does.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildGuest } from './build.js';
import { guestAppend, type GuestParams } from './check.js';
import { MiniQmp } from './qmp.js';

/** The QEMU binary the interop tests run ($QEMU overrides). */
export const QEMU_BINARY = process.env['QEMU'] ?? '/usr/bin/qemu-system-x86_64';

/** True when {@link QEMU_BINARY} exists and runs. */
export function qemuAvailable(): boolean {
  if (!existsSync(QEMU_BINARY)) return false;
  return spawnSync(QEMU_BINARY, ['--version'], { timeout: 10_000 }).status === 0;
}

/** How to start one guest VM. */
export interface GuestVmOptions {
  /** Guest parameters (working set etc.). */
  params: GuestParams;
  /** Guest RAM in MiB (default 128). */
  ramMiB?: number;
  /** `-incoming` URI (e.g. `unix:/path` or `defer`): start as a migration destination. */
  incoming?: string;
  /** Start with the vCPU stopped (`-S`). */
  paused?: boolean;
  /** Extra QEMU arguments. */
  extraArgs?: string[];
}

/** A running QEMU with the test guest. */
export interface GuestVm {
  readonly process: ChildProcess;
  readonly qmp: MiniQmp;
  /** Scratch directory (sockets, serial log). */
  readonly dir: string;
  /** The file that is the guest's RAM (offset = guest-physical address below 4 GiB). */
  readonly memPath: string;
  /** The serial output so far. */
  serial(): string;
  /** The last `pass <q>` the guest printed, or 0. */
  lastReportedPass(): number;
  /** Wait until `test(serial())` holds. */
  waitSerial(test: (text: string) => boolean, timeoutMs?: number): Promise<string>;
  /** A copy of the RAM file. */
  readRam(): Uint8Array;
  /** Everything QEMU wrote on stderr. */
  stderr(): string;
  /** Kill QEMU (SIGKILL) and delete its files. */
  destroy(): Promise<void>;
}

let counter = 0;

/** Build the guest if needed and start QEMU with it; resolves once QMP is up. */
export async function startGuestVm(opts: GuestVmOptions): Promise<GuestVm> {
  const kernel = await buildGuest();
  const ramMiB = opts.ramMiB ?? 128;
  const dir = mkdtempSync(join(tmpdir(), 'postcopy-guest-'));
  const memPath = join('/dev/shm', `postcopy-guest-${process.pid}-${++counter}-${Date.now()}`);
  const serialPath = join(dir, 'serial.log');
  const qmpPath = join(dir, 'qmp.sock');
  const args = [
    '-M', 'pc,memory-backend=mem', '-m', `${ramMiB}M`, '-accel', 'tcg',
    '-object', `memory-backend-file,id=mem,size=${ramMiB}M,mem-path=${memPath},share=on`,
    '-display', 'none', '-nodefaults', '-no-user-config',
    '-kernel', kernel, '-append', guestAppend(opts.params),
    '-serial', `file:${serialPath}`, '-monitor', 'none',
    '-qmp', `unix:${qmpPath},server=on,wait=off`,
    ...(opts.paused ? ['-S'] : []),
    ...(opts.incoming ? ['-incoming', opts.incoming] : []),
    ...(opts.extraArgs ?? []),
  ];
  const proc = spawn(QEMU_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  let qmp: MiniQmp;
  try {
    qmp = await Promise.race([
      MiniQmp.connect(qmpPath),
      exited.then(() => {
        throw new Error(`QEMU exited at start (${proc.exitCode}): ${stderr.trim()}`);
      }),
    ]);
  } catch (e) {
    proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    rmSync(memPath, { force: true });
    throw e;
  }
  const serial = (): string => (existsSync(serialPath) ? readFileSync(serialPath, 'latin1') : '');
  return {
    process: proc,
    qmp,
    dir,
    memPath,
    serial,
    lastReportedPass() {
      const all = [...serial().matchAll(/^pass (\d+)$/gm)];
      return all.length ? Number(all[all.length - 1]![1]) : 0;
    },
    async waitSerial(test, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = serial();
        if (test(text)) return text;
        if (Date.now() > deadline) throw new Error(`serial output not as expected after ${timeoutMs} ms: ${JSON.stringify(text.slice(-300))}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    readRam: () => new Uint8Array(readFileSync(memPath)),
    stderr: () => stderr,
    async destroy() {
      qmp.close();
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
      rmSync(memPath, { force: true });
    },
  };
}

/** The parts of `query-migrate` the tests read. */
export interface MigrateInfo {
  status: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  ram?: { transferred: number; 'dirty-sync-count': number; 'postcopy-requests': number; [k: string]: unknown };
  'xbzrle-cache'?: { pages: number; bytes: number; 'cache-miss': number; overflow: number; [k: string]: unknown };
}

/** `query-migrate`. */
export function queryMigrate(vm: GuestVm): Promise<MigrateInfo> {
  return vm.qmp.execute<MigrateInfo>('query-migrate');
}

/** Poll `query-migrate` until `pred` holds; a `failed` status throws with QEMU's error-desc. */
export async function waitMigrate(
  vm: GuestVm,
  pred: (info: MigrateInfo) => boolean,
  timeoutMs = 60_000,
  what = 'migration condition',
): Promise<MigrateInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await queryMigrate(vm);
    if (pred(info)) return info;
    if (info.status === 'failed') throw new Error(`migration failed: ${info['error-desc'] ?? '(no error-desc)'}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last status ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Set migration capabilities by name. */
export function setCapabilities(vm: GuestVm, caps: Record<string, boolean>): Promise<unknown> {
  return vm.qmp.execute('migrate-set-capabilities', {
    capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
  });
}

/** `query-status` → the run state (e.g. running, paused, postmigrate, inmigrate). */
export async function runState(vm: GuestVm): Promise<string> {
  return (await vm.qmp.execute<{ status: string }>('query-status')).status;
}
