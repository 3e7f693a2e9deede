/** The workload worker: runs only while the VM runs; auto-converge throttling slows it. */
import { afterEach, expect, it } from 'vitest';
import { startVm, waitStatus, type VmProcess } from './helpers.js';

const MiB = 1 << 20;
const procs: VmProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
interface W {
  present: boolean;
  running: boolean;
  visits: number;
  'cpu-throttle-percentage': number;
}

async function rate(v: VmProcess, ms = 400): Promise<number> {
  const a = await v.qmp.execute<W>('x-query-workload');
  const t0 = performance.now();
  await sleep(ms);
  const b = await v.qmp.execute<W>('x-query-workload');
  return ((b.visits - a.visits) >>> 0) / ((performance.now() - t0) / 1000);
}

it('runs only in the running state: -S prelaunch, cont, stop', async () => {
  const v = await startVm(['--ram', '8M', '-S', '--workload', 'pattern=seq,rate=20000,bytes=8']);
  procs.push(v);
  expect(await rate(v, 200)).toBe(0);
  await v.qmp.execute('cont');
  const r = await rate(v);
  expect(r).toBeGreaterThan(5000);
  expect(r).toBeLessThan(30000);
  await v.qmp.execute('stop');
  expect(await rate(v, 200)).toBe(0);
});

it('auto-converge: cpu-throttle-percentage from the source slows the worker, and is lifted after cancel', async () => {
  const v = await startVm(['--ram', '16M', '--workload', 'pattern=rand,rate=200000,bytes=64,wss=8M']);
  const d = await startVm(['--ram', '16M', '--incoming', 'tcp:127.0.0.1:0']);
  procs.push(v, d);
  const base = await rate(v);
  expect(base).toBeGreaterThan(20000);
  await v.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'auto-converge', state: true }] });
  await v.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB, 'cpu-throttle-initial': 60 });
  const info = await d.qmp.execute<{ 'socket-address': { port: string }[] }>('query-migrate');
  await v.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${info['socket-address'][0]!.port}` });
  let pct = 0;
  for (let i = 0; i < 100 && pct === 0; i++) {
    const m = await v.qmp.execute<{ 'cpu-throttle-percentage'?: number }>('query-migrate');
    pct = m['cpu-throttle-percentage'] ?? 0;
    if (pct === 0) await sleep(100);
  }
  expect(pct).toBeGreaterThanOrEqual(60);
  const w = await v.qmp.execute<W>('x-query-workload');
  expect(w['cpu-throttle-percentage']).toBeGreaterThanOrEqual(60);
  const throttled = await rate(v);
  expect(throttled).toBeLessThan(base * 0.7);
  await v.qmp.execute('migrate_cancel');
  await waitStatus(v.qmp, ['cancelled']);
  expect((await v.qmp.execute<W>('x-query-workload'))['cpu-throttle-percentage']).toBe(0);
}, 30_000);

it('an incoming VM runs its workload after the migration when the run state says running', async () => {
  const src = await startVm(['--ram', '8M']);
  const dst = await startVm(['--ram', '8M', '--incoming', 'tcp:127.0.0.1:0', '--workload', 'rate=20000']);
  const dstPaused = await startVm(['--ram', '8M', '--incoming', 'tcp:127.0.0.1:0', '--workload', 'rate=20000', '-S']);
  const src2 = await startVm(['--ram', '8M']);
  procs.push(src, dst, dstPaused, src2);
  expect(await rate(dst, 200)).toBe(0);
  for (const [s, d] of [
    [src, dst],
    [src2, dstPaused],
  ] as const) {
    const info = await d.qmp.execute<{ 'socket-address': { port: string }[] }>('query-migrate');
    await s.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${info['socket-address'][0]!.port}` });
    await waitStatus(d.qmp, ['completed']);
  }
  expect(await rate(dst)).toBeGreaterThan(5000);
  // -S destination: globalstate "running" but no autostart → paused, workload idle until cont
  expect(await dstPaused.qmp.execute('query-status')).toMatchObject({ status: 'paused' });
  expect(await rate(dstPaused, 200)).toBe(0);
  await dstPaused.qmp.execute('cont');
  expect(await rate(dstPaused)).toBeGreaterThan(5000);
}, 30_000);
