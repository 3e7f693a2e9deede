/** Spawn `postcopy vm` processes (built dist) for tests, with QMP connected. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, type QmpEvent } from '../../src/control/qmp-client.js';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const BIN = path.join(ROOT, 'bin/postcopy.js');

export interface VmProcess {
  child: ChildProcess;
  qmp: QmpClient;
  qmpPath: string;
  dir: string;
  events: QmpEvent[];
  stderr(): string;
  stdout(): string;
  exited: Promise<number | null>;
  cleanup(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Starts `postcopy vm ARGS --qmp unix:<tmp>` and connects QMP (events recorded). */
export async function startVm(args: string[], dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-vm-'))): Promise<VmProcess> {
  const qmpPath = path.join(dir, `qmp-${Math.random().toString(36).slice(2)}.sock`);
  const child = spawn(process.execPath, [BIN, 'vm', ...args, '--qmp', `unix:${qmpPath}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let err = '';
  let out = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<number | null>((r) =>
    child.once('exit', (code) => {
      live.delete(child);
      r(code);
    }),
  );
  let qmp: QmpClient | undefined;
  for (let i = 0; i < 400 && !qmp; i++) {
    if (child.exitCode !== null) break;
    try {
      if (fs.existsSync(qmpPath)) qmp = await QmpClient.connect(qmpPath, { timeoutMs: 2000 });
    } catch {
      /* retry */
    }
    if (!qmp) await new Promise((r) => setTimeout(r, 25));
  }
  if (!qmp) {
    child.kill('SIGKILL');
    throw new Error(`postcopy vm did not start: ${err}`);
  }
  const events: QmpEvent[] = [];
  qmp.on('event', (e: QmpEvent) => events.push(e));
  const q = qmp;
  return {
    child,
    qmp: q,
    qmpPath,
    dir,
    events,
    stderr: () => err,
    stdout: () => out,
    exited,
    cleanup: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
      await q.close().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls query-migrate until the status is one of `want`. */
export async function waitStatus(qmp: QmpClient, want: string[], timeoutMs = 20_000): Promise<Record<string, unknown>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<Record<string, unknown>>('query-migrate');
    const st = (info.status as string | undefined) ?? 'none';
    if (want.includes(st) && !(st === 'completed' && info['total-time'] === 0)) return info;
    if (Date.now() > end) throw new Error(`status ${st}, wanted ${want.join('|')}: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The port of a listening destination (query-migrate socket-address). */
export async function listeningPort(qmp: QmpClient): Promise<number> {
  const info = await qmp.execute<{ 'socket-address'?: { port: string }[] }>('query-migrate');
  const port = Number(info['socket-address']?.[0]?.port);
  if (!port) throw new Error(`no socket-address: ${JSON.stringify(info)}`);
  return port;
}

/** Expect a QMP command to fail; resolves to its error text. */
export async function qmpError(qmp: QmpClient, cmd: string, args?: Record<string, unknown>): Promise<string> {
  try {
    await qmp.execute(cmd, args);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error(`${cmd} succeeded`);
}

export type Digest = { blocks: { idstr: string; usedLength: number; sha256: string }[] };
