/** Shared pieces of the postcopy vm tests: a source/destination pair with postcopy on, and waits. */
import type { QmpClient, QmpEvent } from '../../src/control/qmp-client.js';
import { startVm, waitStatus, type VmProcess } from './helpers.js';

export const MiB = 1 << 20;
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface Pair {
  src: VmProcess;
  dst: VmProcess;
}

export interface PairOptions {
  ramMiB?: number;
  /** Source workload (default: random writes as fast as possible). */
  srcWorkload?: string;
  /** Destination workload (default: random reads). */
  dstWorkload?: string;
  /** Extra destination capabilities. */
  dstCaps?: string[];
  /** Extra source capabilities. */
  srcCaps?: string[];
  /** Where the destination listens (default tcp:127.0.0.1:0). */
  incoming?: string;
  /** Extra command-line arguments of each. */
  srcArgs?: string[];
  dstArgs?: string[];
}

async function caps(q: QmpClient, names: string[]): Promise<void> {
  await q.execute('migrate-set-capabilities', { capabilities: names.map((capability) => ({ capability, state: true })) });
}

/** Two `postcopy vm` processes with events + postcopy-ram on both sides; the destination listening. */
export async function postcopyPair(o: PairOptions = {}, track?: VmProcess[]): Promise<Pair> {
  const ram = `${o.ramMiB ?? 32}M`;
  const src = await startVm(['--ram', ram, '--workload', o.srcWorkload ?? 'pattern=rand,rate=max', ...(o.srcArgs ?? [])]);
  track?.push(src);
  const dst = await startVm(['--ram', ram, '--incoming', 'defer', '--workload', o.dstWorkload ?? 'mode=read,pattern=rand', ...(o.dstArgs ?? [])]);
  track?.push(dst);
  await caps(src.qmp, ['events', 'postcopy-ram', ...(o.srcCaps ?? [])]);
  await caps(dst.qmp, ['events', 'postcopy-ram', ...(o.dstCaps ?? [])]);
  await dst.qmp.execute('migrate-incoming', { uri: o.incoming ?? 'tcp:127.0.0.1:0' });
  return { src, dst };
}

/** MIGRATION statuses and STOP/RESUME, in order. */
export function migrationEvents(events: QmpEvent[]): string[] {
  return events
    .filter((e) => e.event === 'MIGRATION' || e.event === 'STOP' || e.event === 'RESUME')
    .map((e) => (e.event === 'MIGRATION' ? (e.data as { status: string }).status : e.event));
}

/** Waits until a MIGRATION event with `status` has been seen `n` times. */
export async function waitEvent(v: VmProcess, status: string, n = 1, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (migrationEvents(v.events).filter((s) => s === status).length < n) {
    if (Date.now() > end) throw new Error(`no MIGRATION ${status} #${n}; events: ${migrationEvents(v.events).join(',')}; stderr: ${v.stderr()}`);
    await sleep(10);
  }
}

/** Both sides completed; returns their query-migrate replies. */
export async function bothCompleted(p: Pair, timeoutMs = 30_000): Promise<{ s: Record<string, unknown>; d: Record<string, unknown> }> {
  const s = await waitStatus(p.src.qmp, ['completed', 'failed'], timeoutMs);
  const d = await waitStatus(p.dst.qmp, ['completed', 'failed'], timeoutMs);
  return { s, d };
}

export interface WorkloadInfo {
  present: boolean;
  running: boolean;
  visits: number;
  faults: number;
  'blocked-ms': number;
  'max-blocked-ms': number;
}

/** Waits until `v`'s workload has faulted at least `n` pages in (total); returns its x-query-workload. */
export async function faulted(v: VmProcess, n: number, timeoutMs = 20_000): Promise<WorkloadInfo> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const w = await v.qmp.execute<WorkloadInfo>('x-query-workload');
    if (w.faults >= n) return w;
    if (Date.now() > end) throw new Error(`only ${w.faults} faults`);
    await sleep(20);
  }
}
