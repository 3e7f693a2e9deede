/**
 * Postcopy drills between two `postcopy vm` processes through FaultProxy:
 * one run per cut point the proxy offers in a postcopy migration, each
 * followed by recovery (a second one when the cut lands inside the recovery
 * handshake). Every recovered run completes with the destination's RAM
 * equal to the source's. Cuts before LISTEN are fatal for the destination
 * (exit 1) while the source, already switched, stays postcopy-paused and
 * stopped — the same cuts between two real QEMU 7.2 processes are the witness.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { QmpClient, QmpEvent } from '../../src/control/qmp-client.js';
import { FaultProxy } from '../../src/proxy/proxy.js';
import { hasQemu, startQemu } from '../interop/harness/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { ProxyCut } from '../../src/proxy/proxy.js';
import { parseCutOn, type CutMode } from '../../src/proxy/cut.js';
import type { Digest, VmProcess } from './helpers.js';
import { waitStatus } from './helpers.js';
import { bothCompleted, migrationEvents, MiB, sleep, type WorkloadInfo } from './postcopy-helpers.js';
import { bothActive, bothPaused, recover, startDrill, type Drill } from './drill-helpers.js';

const procs: VmProcess[] = [];
const drills: Drill[] = [];
afterEach(async () => {
  for (const d of drills.splice(0)) await d.close();
  for (const p of procs.splice(0)) await p.cleanup();
});

interface CutPoint {
  name: string;
  on: string;
  mode: CutMode;
  /** before LISTEN: the destination fails. */
  fatal?: boolean;
  /** The rule can only fire on a recovery connection: pause first with migrate-pause. */
  inRecovery?: boolean;
}

const CUT_POINTS: CutPoint[] = [
  { name: 'before the package (after PING 2)', on: 'main:PING:2', mode: 'kill', fatal: true },
  { name: 'inside the package', on: 'in-package', mode: 'reset', fatal: true },
  { name: 'after RUN', on: 'main:POSTCOPY_RUN', mode: 'kill' },
  { name: 'on a REQ_PAGES', on: 'rp:REQ_PAGES:3', mode: 'reset' },
  { name: 'on the first RECV_BITMAP', on: 'main:RECV_BITMAP', mode: 'kill', inRecovery: true },
  { name: 'on the RECV_BITMAP reply (mid-handshake)', on: 'rp:RECV_BITMAP', mode: 'reset', inRecovery: true },
  { name: 'on POSTCOPY_RESUME', on: 'main:POSTCOPY_RESUME', mode: 'kill', inRecovery: true },
  { name: 'on RESUME_ACK', on: 'rp:RESUME_ACK', mode: 'reset', inRecovery: true },
];

async function cutSeen(cuts: ProxyCut[], n: number, timeoutMs = 15_000): Promise<ProxyCut> {
  const end = Date.now() + timeoutMs;
  while (cuts.length < n) {
    if (Date.now() > end) throw new Error(`cut #${n} did not happen`);
    await sleep(10);
  }
  return cuts[n - 1]!;
}

interface FatalOutcome {
  dstExit: number | null;
  srcStatus: string;
  srcRunState: string;
  srcEvents: string[];
}

async function fatalOutcome(src: QmpClient, events: QmpEvent[], dstExited: Promise<number | null>): Promise<FatalOutcome> {
  const dstExit = await dstExited;
  const s = await waitStatus(src, ['postcopy-paused', 'failed'], 15_000);
  await sleep(300); // nothing else may follow
  return {
    dstExit,
    srcStatus: s.status as string,
    srcRunState: (await src.execute<{ status: string }>('query-status')).status,
    srcEvents: migrationEvents(events),
  };
}

/** The same cut between two QEMU 7.2 processes (-M none, 32 MiB of random RAM). */
async function qemuFatal(cp: CutPoint): Promise<FatalOutcome> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-qdrill-'));
  const src = await startQemu({ memory: '32M', paused: false, ramFill: 'random' });
  const dst = await startQemu({ memory: '32M', paused: false, incoming: 'defer' });
  const proxy = new FaultProxy({ listen: `unix:${path.join(dir, 'proxy.sock')}`, target: `unix:${path.join(dir, 'dst.sock')}`, cuts: [{ trigger: parseCutOn(cp.on), mode: cp.mode }] });
  try {
    const events: QmpEvent[] = [];
    src.qmp.on('event', (e: QmpEvent) => events.push(e));
    for (const q of [src.qmp, dst.qmp]) {
      await q.execute('migrate-set-capabilities', { capabilities: ['events', 'postcopy-ram'].map((capability) => ({ capability, state: true })) });
    }
    await dst.qmp.execute('migrate-incoming', { uri: `unix:${path.join(dir, 'dst.sock')}` });
    await proxy.listen();
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 << 20 });
    await src.qmp.execute('migrate', { uri: proxy.uri });
    await waitStatus(src.qmp, ['active']);
    await src.qmp.execute('migrate-start-postcopy');
    return await fatalOutcome(src.qmp, events, dst.exited.then((e) => e.code));
  } finally {
    await proxy.close();
    await src.cleanup();
    await dst.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('postcopy drills through FaultProxy (postcopy vm → postcopy vm, 32 MiB)', () => {
  for (const cp of CUT_POINTS) {
    it(`cut ${cp.name} [${cp.on}, ${cp.mode}] → ${cp.fatal ? 'destination fails' : 'recovery, completed, RAM equal'}`, async () => {
      const d = await startDrill([{ trigger: parseCutOn(cp.on), mode: cp.mode }], { postcopyBandwidth: 8 * MiB }, procs);
      drills.push(d);
      const cuts: ProxyCut[] = [];
      d.proxy.on('cut', (c) => cuts.push(c));
      const t0 = performance.now();
      await waitStatus(d.src.qmp, ['active']);
      await d.src.qmp.execute('migrate-start-postcopy');
      if (cp.fatal) {
        await cutSeen(cuts, 1);
        // any error before the postcopy state is RUNNING is fatal for the destination
        const ours = await fatalOutcome(d.src.qmp, d.src.events, d.dst.exited);
        expect(d.dst.stderr()).toMatch(/load of migration failed/);
        // the source had switched: stopped, waiting for a recovery that cannot come
        expect(ours).toEqual({
          dstExit: 1,
          srcStatus: 'postcopy-paused',
          srcRunState: 'finish-migrate',
          srcEvents: ['setup', 'active', 'postcopy-active', 'STOP', 'postcopy-paused'],
        });
        if (hasQemu) expect(await qemuFatal(cp)).toEqual(ours);
        return;
      }
      if (cp.inRecovery) {
        await bothActive(d);
        await sleep(200);
        await d.src.qmp.execute('migrate-pause');
        await bothPaused(d);
        await recover(d);
        await cutSeen(cuts, 1);
        // the cut inside the handshake: back to postcopy-paused on both sides, then a second recovery
        await bothPaused(d);
        await recover(d);
      } else {
        const cut = await cutSeen(cuts, 1);
        expect(cut.reason).toMatch(/^kind:/);
        await bothPaused(d);
        await recover(d);
      }
      const { s, dd } = await bothCompleted(d).then((r) => ({ s: r.s, dd: r.d }));
      expect([s.status, dd.status]).toEqual(['completed', 'completed']);
      expect(await d.dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await d.src.qmp.execute<Digest>('x-ram-digest'));
      expect(migrationEvents(d.src.events)).toContain('postcopy-recover');
      expect(cuts).toHaveLength(1);
      const w = await d.dst.qmp.execute<WorkloadInfo>('x-query-workload');
      expect(w.faults).toBeGreaterThan(0);
      console.log(`drill ${cp.on}/${cp.mode}: ${(performance.now() - t0).toFixed(0)} ms, faults ${w.faults}, requests ${(s.ram as Record<string, number>)['postcopy-requests']}`);
    }, 60_000);
  }
});
