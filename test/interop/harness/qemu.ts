/**
 * Start a real qemu-system-x86_64 for interop tests.
 *
 *   describe.skipIf(!hasQemu)(`... ${qemuSkipReason}`, () => { ... });
 *   const vm = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random' });
 *   await vm.qmp.execute('query-status');
 *   await vm.cleanup();
 *
 * Every process started here is killed and its temp files removed by
 * `cleanup()`, and as a last resort when the test process exits.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../../src/control/qmp-client.js';

/** Path of the QEMU binary: $QEMU, else the first qemu-system-x86_64 on PATH or in /usr/bin. */
export const qemuBinary: string | undefined = findQemu();
/** True when a QEMU binary was found. */
export const hasQemu = qemuBinary !== undefined;
/** Why interop tests are skipped ('' when they run). */
export const qemuSkipReason = hasQemu
  ? ''
  : '(SKIPPED: qemu-system-x86_64 not found; install it with scripts/install-qemu.sh or set $QEMU)';
if (!hasQemu) console.warn(`interop: ${qemuSkipReason}`);

function findQemu(): string | undefined {
  const env = process.env['QEMU'];
  if (env && fs.existsSync(env)) return env;
  const dirs = (process.env['PATH'] ?? '').split(path.delimiter).concat(['/usr/bin', '/usr/local/bin']);
  for (const d of dirs) {
    const p = path.join(d, 'qemu-system-x86_64');
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** How to fill a file-backed guest RAM before QEMU starts. */
export type RamFill =
  | 'zero'
  | 'random'
  /** Called per chunk: fill `chunk`, which covers file bytes [offset, offset+chunk.length). */
  | ((chunk: Buffer, offset: number) => void);

/** Options of {@link startQemu}. */
export interface QemuOptions {
  /** `-M` value (default `none`). */
  machine?: string;
  /** Guest RAM size as QEMU spells it (`64M`, `1G`; default `64M`). */
  memory?: string;
  /** Start paused with `-S` (default true). */
  paused?: boolean;
  /** `-incoming URI` (e.g. `defer`, `tcp:127.0.0.1:0`). */
  incoming?: string;
  /** Pass `-nodefaults` (default true). Without it, QEMU adds its default NIC, VGA, ports. */
  nodefaults?: boolean;
  /**
   * Back guest RAM with a file in /dev/shm (shared), pre-filled as asked.
   * The block keeps the machine's usual name (`ram` for `none`, `pc.ram` for pc).
   */
  ramFill?: RamFill;
  /** `-accel` (default `tcg`). */
  accel?: string;
  /** More command-line arguments. */
  extraArgs?: string[];
  /** Give up waiting for QMP after this long (default 15 s). */
  startTimeoutMs?: number;
}

/** A running QEMU. */
export interface QemuProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** A connected, negotiated QMP session. */
  readonly qmp: QmpClient;
  /** The QMP socket path (connect more clients to it if needed). */
  readonly qmpPath: string;
  /** A private temp directory, removed by cleanup(). */
  readonly dir: string;
  /** The RAM backing file when `ramFill` was given. */
  readonly ramPath: string | undefined;
  /** Bytes of guest RAM. */
  readonly ramSize: number;
  /** The full argument list. */
  readonly args: string[];
  /** Everything QEMU wrote to stderr so far. */
  stderr(): string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Exit status once exited, else undefined. */
  exitCode(): number | null | undefined;
  /** Kill (SIGKILL) if running, close QMP, remove temp files. Idempotent. */
  cleanup(): Promise<void>;
}

const live = new Set<ChildProcess>();
const tempPaths = new Set<string>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
  for (const p of tempPaths) fs.rmSync(p, { recursive: true, force: true });
});

/** Parse a QEMU size (`64M`, `2G`, `4096`, `1k`) into bytes. */
export function parseQemuSize(s: string): number {
  const m = /^(\d+)([kKmMgGtT]?)[bB]?$/.exec(s.trim());
  if (!m) throw new Error(`bad size '${s}'`);
  const mult = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30, t: 2 ** 40 }[m[2]!.toLowerCase()]!;
  // A bare number for -m means MiB, as QEMU reads it.
  return Number(m[1]) * (m[2] === '' ? 1 << 20 : mult);
}

/** The name QEMU gives the main RAM block of a machine type. */
export function defaultRamId(machine: string): string {
  return /^(none|$)/.test(machine) ? 'ram' : 'pc.ram';
}

/** Create a file of `size` bytes filled as asked (fast: 4 MiB chunks). */
export function fillFile(file: string, size: number, fill: RamFill): void {
  const fd = fs.openSync(file, 'w');
  try {
    if (fill === 'zero') {
      fs.ftruncateSync(fd, size);
      return;
    }
    const chunk = Buffer.allocUnsafe(Math.min(size, 4 << 20));
    for (let off = 0; off < size; off += chunk.length) {
      const c = chunk.subarray(0, Math.min(chunk.length, size - off));
      if (fill === 'random') randomFillSync(c);
      else {
        c.fill(0);
        fill(c, off);
      }
      let done = 0;
      while (done < c.length) done += fs.writeSync(fd, c, done, c.length - done, off + done);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Spawn QEMU with a QMP socket and wait until QMP answers. */
export async function startQemu(opts: QemuOptions = {}): Promise<QemuProcess> {
  if (!qemuBinary) throw new Error(`qemu-system-x86_64 not found ${qemuSkipReason}`);
  const machine = opts.machine ?? 'none';
  const memory = opts.memory ?? '64M';
  const ramSize = parseQemuSize(memory);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-qemu-'));
  tempPaths.add(dir);
  const qmpPath = path.join(dir, 'qmp.sock');
  let ramPath: string | undefined;
  const machineArg = [machine];
  const args: string[] = [];
  if (opts.ramFill !== undefined) {
    ramPath = `/dev/shm/postcopy-ram-${process.pid}-${randomBytes(6).toString('hex')}`;
    tempPaths.add(ramPath);
    fillFile(ramPath, ramSize, opts.ramFill);
    const id = defaultRamId(machine);
    args.push('-object', `memory-backend-file,id=${id},size=${ramSize},mem-path=${ramPath},share=on`);
    machineArg.push(`memory-backend=${id}`);
  }
  args.unshift('-M', machineArg.join(','), '-m', memory, '-accel', opts.accel ?? 'tcg', '-display', 'none');
  if (opts.nodefaults ?? true) args.push('-nodefaults');
  if (opts.paused ?? true) args.push('-S');
  if (opts.incoming) args.push('-incoming', opts.incoming);
  args.push('-qmp', `unix:${qmpPath},server=on,wait=off`);
  args.push(...(opts.extraArgs ?? []));

  const child = spawn(qemuBinary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (stderr.length < 1 << 20) stderr += d;
  });
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
    child.once('error', (err) => {
      live.delete(child);
      stderr += `spawn error: ${err.message}\n`;
      exitInfo = { code: -1, signal: null };
      resolve(exitInfo);
    });
  });

  const removeTemps = (): void => {
    fs.rmSync(dir, { recursive: true, force: true });
    tempPaths.delete(dir);
    if (ramPath) {
      fs.rmSync(ramPath, { force: true });
      tempPaths.delete(ramPath);
    }
  };

  // Wait for the socket to appear, then connect (QEMU creates it before it runs).
  const deadline = Date.now() + (opts.startTimeoutMs ?? 15_000);
  let qmp: QmpClient | undefined;
  let lastErr: unknown;
  while (Date.now() < deadline && exitInfo === undefined) {
    if (fs.existsSync(qmpPath)) {
      try {
        qmp = await QmpClient.connect(qmpPath, { timeoutMs: Math.max(1000, deadline - Date.now()) });
        break;
      } catch (err) {
        lastErr = err;
      }
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  if (!qmp) {
    child.kill('SIGKILL');
    await exited;
    removeTemps();
    const why = exitInfo ? `exited with ${exitInfo.code ?? exitInfo.signal}` : `no QMP (${String(lastErr)})`;
    throw new Error(`QEMU ${why}: ${qemuBinary} ${args.join(' ')}\n${stderr}`);
  }
  const client = qmp;
  let cleaned: Promise<void> | undefined;
  return {
    child,
    pid: child.pid!,
    qmp: client,
    qmpPath,
    dir,
    ramPath,
    ramSize,
    args,
    stderr: () => stderr,
    exited,
    exitCode: () => exitInfo?.code,
    cleanup: () =>
      (cleaned ??= (async () => {
        if (exitInfo === undefined) child.kill('SIGKILL');
        await exited;
        await client.close();
        removeTemps();
      })()),
  };
}
