/**
 * Postcopy under repeated link failures, postcopy vm → FaultProxy →
 * postcopy vm: ten cuts in a row (kill and reset in turn), each followed by
 * recovery, and a silent link (blackhole) that only the keepalive notices.
 * The migration completes with the destination's RAM equal to the source's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ProxyCut } from '../../src/proxy/proxy.js';
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

describe('postcopy vm → FaultProxy → postcopy vm, repeated failures (32 MiB)', () => {
  it('10 cuts in a row, each recovered: completed, RAM equal', async () => {
    // a slow background scan keeps postcopy going through all the cuts
    const d = await startDrill([], { postcopyBandwidth: 1 * MiB }, procs);
    drills.push(d);
    const cuts: ProxyCut[] = [];
    d.proxy.on('cut', (c) => cuts.push(c));
    await waitStatus(d.src.qmp, ['active']);
    await d.src.qmp.execute('migrate-start-postcopy');
    const t0 = performance.now();
    const rounds: number[] = [];
    for (let i = 0; i < 10; i++) {
      await bothActive(d);
      await sleep(100);
      const r0 = performance.now();
      const cut = d.proxy.cut(i % 2 === 0 ? 'kill' : 'reset');
      expect(cut, `cut #${i + 1}`).toBeDefined();
      await bothPaused(d);
      await recover(d);
      await bothActive(d);
      rounds.push(performance.now() - r0);
      const st = (await d.src.qmp.execute<Record<string, unknown>>('query-migrate')).status;
      expect(st, `still in postcopy after cut #${i + 1}`).toBe('postcopy-active');
    }
    // the rest at full speed: max-postcopy-bandwidth changed mid-postcopy reaches the source
    const remaining = ((await d.src.qmp.execute<{ ram: { remaining: number } }>('query-migrate')).ram.remaining);
    const tFast = performance.now();
    await d.src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    const { s, d: di } = await bothCompleted(d, 60_000);
    // at the old 1 MiB/s the rest would take remaining/1 MiB seconds; it must go at least twice as fast
    if (remaining > 8 * MiB) expect(performance.now() - tFast).toBeLessThan((remaining / MiB) * 1000 / 2);
    expect([s.status, di.status]).toEqual(['completed', 'completed']);
    expect(cuts).toHaveLength(10);
    expect(await d.dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await d.src.qmp.execute<Digest>('x-ram-digest'));
    const sev = migrationEvents(d.src.events);
    expect(sev.filter((e) => e === 'postcopy-paused')).toHaveLength(10);
    expect(sev.filter((e) => e === 'postcopy-recover')).toHaveLength(10);
    const dev = migrationEvents(d.dst.events);
    expect(dev.filter((e) => e === 'postcopy-paused')).toHaveLength(10);
    expect(dev.filter((e) => e === 'setup')).toHaveLength(11); // migrate-incoming + 10 × migrate-recover
    const w = await d.dst.qmp.execute<WorkloadInfo>('x-query-workload');
    expect(w.faults).toBeGreaterThan(0);
    rounds.sort((a, b) => a - b);
    console.log(
      `10 cuts: total ${(performance.now() - t0).toFixed(0)} ms; cut→recovered median ${rounds[5]!.toFixed(0)} ms, max ${rounds[9]!.toFixed(0)} ms; ` +
        `faults ${w.faults}, max blocked ${w['max-blocked-ms']} ms`,
    );
  }, 90_000);

  it('a silent link (blackhole): the keepalive pauses both sides, recovery completes', async () => {
    const d = await startDrill([], { postcopyBandwidth: 2 * MiB }, procs);
    drills.push(d);
    await waitStatus(d.src.qmp, ['active']);
    await d.src.qmp.execute('migrate-start-postcopy');
    await bothActive(d);
    await sleep(200);
    const t0 = performance.now();
    expect(d.proxy.cut('blackhole')).toBeDefined();
    await bothPaused(d, 20_000);
    const detect = performance.now() - t0;
    // KEEPALIVE_TIMEOUT_MS (5 s) of silence, not earlier
    expect(detect).toBeGreaterThan(4000);
    await recover(d);
    await d.src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    const { s, d: di } = await bothCompleted(d, 60_000);
    expect([s.status, di.status]).toEqual(['completed', 'completed']);
    expect(await d.dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await d.src.qmp.execute<Digest>('x-ram-digest'));
    console.log(`blackhole: both paused after ${detect.toFixed(0)} ms`);
  }, 60_000);
});
