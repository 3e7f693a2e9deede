/**
 * Bench-only launchers for the migration benchmark: a real QEMU 7.2
 * (`-M none`, RAM in a /dev/shm file) and a `postcopy vm` process, each
 * driven over QMP. Every process and file made here is registered and
 * removed by {@link cleanupAll}, also on exit and on SIGINT/SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient, type QmpEvent } from '../../src/control/qmp-client.js';

/** The QEMU binary: $QEMU or /usr/bin/qemu-system-x86_64. */
export const qemuBinary = process.env['QEMU'] ?? '/usr/bin/qemu-system-x86_64';
/** bin/postcopy.js of this checkout (dist/bench/lib → ../../../bin). */
export const postcopyBin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/postcopy.js');

const children = new Set<ChildProcess>();
const files = new Set<string>();

/** Registers a path (file or directory) for removal at cleanup. */
export function tempPath(p: string): string {
  files.add(p);
  return p;
}

/** Kills every process started here (SIGKILL) and removes every registered path. */
export function cleanupAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
  for (const p of files) fs.rmSync(p, { recursive: true, force: true });
  files.clear();
}
process.once('exit', cleanupAll);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    cleanupAll();
    process.exit(130);
  });
}

/** A running peer (QEMU or postcopy vm) with a negotiated QMP session. */
export interface Peer {
  readonly name: string;
  readonly child: ChildProcess;
  readonly qmp: QmpClient;
  /** Resolves with the exit code when the process ends. */
  readonly exited: Promise<number | null>;
  stderr(): string;
  /** SIGKILL (or `signal`), wait for exit, close QMP. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** A private scratch directory (sockets), removed at cleanup. */
export const scratchDir = tempPath(fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-bench-')));
let seq = 0;

async function launch(name: string, cmd: string, args: string[], qmpPath: string, env?: NodeJS.ProcessEnv): Promise<Peer> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: env ?? process.env });
  children.add(child);
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (err.length < 1 << 16) err += d;
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      children.delete(child);
      resolve(code);
    });
    child.once('error', (e) => {
      err += `spawn error: ${e.message}\n`;
      resolve(-1);
    });
  });
  let qmp: QmpClient | undefined;
  const deadline = Date.now() + 20_000;
  while (!qmp) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${name} exited before QMP was up: ${err.trim()}`);
    }
    try {
      qmp = await QmpClient.connect({ path: qmpPath }, { timeoutMs: 5000 });
    } catch (e) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`${name}: QMP did not come up: ${(e as Error).message} ${err.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const client = qmp;
  let stopped: Promise<void> | undefined;
  return {
    name,
    child,
    qmp: client,
    exited,
    stderr: () => err,
    stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
      stopped ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        await exited;
        await client.close().catch(() => undefined);
      })();
      return stopped;
    },
  };
}

/** Options of {@link startQemu}. */
export interface QemuPeerOptions {
  ramBytes: number;
  /**
   * The RAM backing file (must exist with ramBytes bytes); without it, RAM is
   * anonymous (memory-backend-ram), which QEMU advises for huge pages.
   */
  memPath?: string;
  incoming?: string;
}

/** Starts `qemu-system-x86_64 -M none -m SIZE -S` with file-backed, shared RAM (or anonymous RAM). */
export function startQemu(o: QemuPeerOptions): Promise<Peer> {
  const qmpPath = path.join(scratchDir, `qemu-${++seq}.qmp`);
  const mb = `${o.ramBytes / (1 << 20)}M`;
  const args = [
    '-M', 'none,memory-backend=ram', '-m', mb, '-accel', 'tcg', '-display', 'none', '-nodefaults', '-S',
    '-object',
    o.memPath ? `memory-backend-file,id=ram,size=${o.ramBytes},mem-path=${o.memPath},share=on` : `memory-backend-ram,id=ram,size=${o.ramBytes}`,
    '-qmp', `unix:${qmpPath},server=on,wait=off`,
  ];
  if (o.incoming) args.push('-incoming', o.incoming);
  return launch(`qemu#${seq}`, qemuBinary, args, qmpPath);
}

/** Options of {@link startVm}. */
export interface VmPeerOptions {
  ramBytes: number;
  /** Load RAM from this file (postcopy vm writes RAM back there on a clean quit). */
  memPath?: string;
  incoming?: string;
  /** Directory for `node --cpu-prof` output (profile written on a clean exit). */
  cpuProfDir?: string;
  /** Keep guest RAM on 4 KiB pages (POSTCOPY_NO_THP=1). */
  noThp?: boolean;
}

/** Starts `node bin/postcopy.js vm --machine none --ram SIZE -S`. */
export function startVm(o: VmPeerOptions): Promise<Peer> {
  const qmpPath = path.join(scratchDir, `vm-${++seq}.qmp`);
  const node: string[] = [];
  if (o.cpuProfDir) node.push('--cpu-prof', `--cpu-prof-dir=${o.cpuProfDir}`);
  const mb = `${o.ramBytes / (1 << 20)}M`;
  const args = [...node, postcopyBin, 'vm', '--machine', 'none', '--ram', mb, '-S', '--qmp', `unix:${qmpPath}`];
  if (o.memPath) args.push('--mem-path', o.memPath);
  if (o.incoming) args.push('--incoming', o.incoming);
  const env = o.noThp ? { ...process.env, POSTCOPY_NO_THP: '1' } : undefined;
  return launch(`vm#${seq}`, process.execPath, args, qmpPath, env);
}

/** Creates `file` with `size` bytes from `fill(chunk, offset)` (4 MiB chunks); returns its SHA-256 (hex). */
export function writeRamFile(file: string, size: number, fill: (chunk: Buffer, offset: number) => void): string {
  tempPath(file);
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(Math.min(size, 4 << 20));
    for (let off = 0; off < size; off += chunk.length) {
      const c = chunk.subarray(0, Math.min(chunk.length, size - off));
      fill(c, off);
      h.update(c);
      let done = 0;
      while (done < c.length) done += fs.writeSync(fd, c, done, c.length - done, off + done);
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** SHA-256 (hex) of a file, read in 4 MiB chunks. */
export function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Waits for a MIGRATION event with `status` (or failed → error); returns the hrtime (ns) it arrived. */
export async function waitMigrationEvent(qmp: QmpClient, status: string, timeoutMs: number): Promise<bigint> {
  const ev: QmpEvent = await qmp.waitEvent(
    'MIGRATION',
    (e) => {
      const st = (e.data as { status?: string } | undefined)?.status;
      return st === status || st === 'failed';
    },
    timeoutMs,
  );
  const t = process.hrtime.bigint();
  if ((ev.data as { status?: string }).status === 'failed') throw new Error(`migration failed (MIGRATION event)`);
  return t;
}

/** query-migrate until `completed` with a non-zero total-time (QEMU shows 0 for a moment, SPEC §13). */
export async function finalInfo(qmp: QmpClient): Promise<Record<string, unknown>> {
  for (let i = 0; i < 200; i++) {
    const info = await qmp.execute<Record<string, unknown>>('query-migrate');
    if (info['status'] === 'failed') throw new Error(`migration failed: ${String(info['error-desc'])}`);
    if (info['status'] === 'completed' && Number(info['total-time'] ?? 0) > 0) return info;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('query-migrate never showed completed with a total-time');
}

export { procCounters, counterDelta, type ProcCounters } from './proc-stat.js';
