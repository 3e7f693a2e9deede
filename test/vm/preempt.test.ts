/**
 * postcopy-preempt in `postcopy vm` (vm → vm): the capability rules with
 * QEMU 7.2's texts; a transport with one channel (exec:) fails the outgoing
 * migration from setup and leaves an incoming one waiting for its second
 * connection; a postcopy through FaultProxy where the requested pages travel
 * on the second connection (the proxy's per-connection byte counts and our
 * x-postcopy-preempt-pages agree), then a reset of the main connection →
 * both paused → migrate-recover + resume (two new connections) → completed,
 * RAM equal, requested pages on the new preempt connection.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultProxy } from '../../src/proxy/proxy.js';
import { listeningPort, qmpError, startVm, waitStatus, type Digest, type VmProcess } from './helpers.js';
import { bothCompleted, faulted, migrationEvents, MiB, postcopyPair, sleep, waitEvent, type WorkloadInfo } from './postcopy-helpers.js';
import { bothPaused, recover, type Drill } from './drill-helpers.js';
import { threadNices } from '../preempt/helpers.js';

const procs: VmProcess[] = [];
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  for (const p of procs.splice(0)) await p.cleanup();
});

const caps = (...c: Array<[string, boolean]>) => ({ capabilities: c.map(([capability, state]) => ({ capability, state })) });
const PREEMPT_NEEDS_SOCKET = 'Postcopy preempt is not supported as current migration stream does not support multi-channels.';

type Info = Record<string, unknown>;
const preemptPages = (i: Info): number => i['x-postcopy-preempt-pages'] as number;

describe('postcopy-preempt: capability and transport rules (QEMU 7.2 texts)', () => {
  it('needs postcopy-ram, not with compress; accepted with postcopy-ram, then postcopy-ram cannot go', async () => {
    const v = await startVm(['--ram', '8M', '-S']);
    procs.push(v);
    expect(await qmpError(v.qmp, 'migrate-set-capabilities', caps(['postcopy-preempt', true]))).toBe('Postcopy preempt requires postcopy-ram');
    expect(await qmpError(v.qmp, 'migrate-set-capabilities', caps(['postcopy-ram', true], ['compress', true], ['postcopy-preempt', true]))).toBe(
      'Postcopy preempt not compatible with compress',
    );
    await v.qmp.execute('migrate-set-capabilities', caps(['postcopy-ram', true], ['postcopy-preempt', true]));
    const list = await v.qmp.execute<Array<{ capability: string; state: boolean }>>('query-migrate-capabilities');
    expect(list.find((c) => c.capability === 'postcopy-preempt')?.state).toBe(true);
    expect(await qmpError(v.qmp, 'migrate-set-capabilities', caps(['postcopy-ram', false]))).toBe('Postcopy preempt requires postcopy-ram');
    // compress stays ours to refuse once the preempt rule is out of the way
    await v.qmp.execute('migrate-set-capabilities', caps(['postcopy-preempt', false]));
    expect(await qmpError(v.qmp, 'migrate-set-capabilities', caps(['compress', true]))).toBe("Capability 'compress' is not supported by this implementation");
  });

  it('exec: source fails from setup (no error-desc, the text on stderr); exec: destination waits for a second channel', async () => {
    const src = await startVm(['--ram', '8M', '-S']);
    procs.push(src);
    await src.qmp.execute('migrate-set-capabilities', caps(['events', true], ['postcopy-ram', true], ['postcopy-preempt', true]));
    const out = path.join(src.dir, 'out.bin');
    await src.qmp.execute('migrate', { uri: `exec:cat > ${out}` });
    const info = await waitStatus(src.qmp, ['failed']);
    expect(info).toEqual({ status: 'failed' });
    expect(migrationEvents(src.events)).toEqual(['setup', 'failed']);
    expect(src.stderr()).toContain(PREEMPT_NEEDS_SOCKET);
    expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });

    // a complete precopy stream in a file, loaded through exec: by a destination with preempt on
    // (no postcopy-ram: a return path would wait for a reader exec: does not have)
    await src.qmp.execute('migrate-set-capabilities', caps(['postcopy-preempt', false], ['postcopy-ram', false]));
    await src.qmp.execute('migrate', { uri: `exec:cat > ${out}` });
    await waitStatus(src.qmp, ['completed']);
    for (const preempt of [false, true]) {
      const dst = await startVm(['--ram', '8M', '--incoming', 'defer']);
      procs.push(dst);
      await dst.qmp.execute('migrate-set-capabilities', caps(['events', true], ['postcopy-ram', true], ['postcopy-preempt', preempt]));
      await dst.qmp.execute('migrate-incoming', { uri: `exec:cat ${out}` });
      if (!preempt) {
        await waitStatus(dst.qmp, ['completed']);
        continue;
      }
      // the one exec channel is taken as the main channel; the load waits for the preempt channel
      await sleep(500);
      expect(await dst.qmp.execute('query-migrate')).toEqual({});
      expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'inmigrate' });
      expect(migrationEvents(dst.events)).toEqual(['setup']);
    }
  });
});

interface ProxiedPair extends Drill {
  cleanup(): Promise<void>;
}

/** vm → FaultProxy → vm, postcopy-ram + postcopy-preempt on both (or not), migrating (precopy). */
async function proxiedPair(preempt: boolean): Promise<ProxiedPair> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-preempt-'));
  const dstUri = `unix:${path.join(dir, 'dst.sock')}`;
  const extra = preempt ? ['postcopy-preempt'] : [];
  const pair = await postcopyPair({ ramMiB: 32, incoming: dstUri, srcCaps: extra, dstCaps: extra }, procs);
  const proxy = new FaultProxy({ listen: `unix:${path.join(dir, 'proxy.sock')}`, target: dstUri });
  await proxy.listen();
  await pair.src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
  await pair.src.qmp.execute('migrate', { uri: proxy.uri });
  const cleanup = async (): Promise<void> => {
    await proxy.close();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  cleanups.push(cleanup);
  return { ...pair, proxy, dstUri, dir, close: cleanup, cleanup };
}

describe('postcopy vm → postcopy vm with postcopy-preempt (through FaultProxy)', () => {
  it('requested pages go on the second connection; a main-channel reset pauses both; recovery opens two new connections; completed, RAM equal', async () => {
    const p = await proxiedPair(true);
    const { src, dst, proxy } = p;
    await waitStatus(src.qmp, ['active']);
    // both connections are up before the destination loads anything
    expect(proxy.query().connections.map((c) => c.conn)).toEqual([1, 2]);
    await src.qmp.execute('migrate-start-postcopy');
    await waitEvent(src, 'postcopy-active');
    await waitEvent(dst, 'postcopy-active');
    await faulted(dst, 20);
    const s1 = await src.qmp.execute<Info>('query-migrate');
    const d1 = await dst.qmp.execute<Info>('query-migrate');
    expect(preemptPages(s1)).toBeGreaterThan(0);
    expect(preemptPages(d1)).toBeGreaterThan(0);
    const [main1, pre1] = proxy.query().connections;
    // the preempt connection is one-way (no return path on it) and carried at least the placed pages
    expect(pre1!.bytes.rp).toBe(0);
    expect(pre1!.bytes.main).toBeGreaterThanOrEqual(preemptPages(d1) * 4096);
    expect(main1!.bytes.rp).toBeGreaterThan(0);

    // cut the main connection only
    proxy.cut('reset', 1);
    await bothPaused(p);
    // both ends dropped the preempt connection too (QEMU does)
    for (let i = 0; proxy.query().connections[1]!.state !== 'closed'; i++) {
      if (i > 500) throw new Error(`preempt connection still ${proxy.query().connections[1]!.state}`);
      await sleep(10);
    }
    const pausedPages = preemptPages(await dst.qmp.execute<Info>('query-migrate'));
    await recover(p);
    await waitStatus(src.qmp, ['postcopy-active', 'completed']);
    await waitStatus(dst.qmp, ['postcopy-active', 'completed']);
    expect(proxy.query().connections.map((c) => c.conn)).toEqual([1, 2, 3, 4]);
    // the reader keeps faulting after the recovery
    await faulted(dst, (await dst.qmp.execute<WorkloadInfo>('x-query-workload')).faults + 5);
    const { s, d } = await bothCompleted(p);
    expect([s.status, d.status]).toEqual(['completed', 'completed']);
    expect(await dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await src.qmp.execute<Digest>('x-ram-digest'));
    // the destination placed what the source wrote on preempt connections, except pages lost with the cut one
    // (their received bits stayed clear: the recovery's bitmap had them sent again)
    expect(preemptPages(d)).toBeLessThanOrEqual(preemptPages(s));
    expect(preemptPages(d)).toBeGreaterThan(pausedPages);
    const pre2 = proxy.query().connections[3]!;
    expect(pre2.bytes.rp).toBe(0);
    expect(pre2.bytes.main).toBeGreaterThanOrEqual((preemptPages(d) - pausedPages) * 4096);
    expect(migrationEvents(src.events).filter((e) => e !== 'STOP')).toEqual([
      'setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed',
    ]);
    const w = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
    const lat = d['x-postcopy-fault-latency'] as Record<string, number>;
    console.log(
      `preempt vm → vm: requests ${(s.ram as Record<string, number>)['postcopy-requests']}, preempt pages ${preemptPages(s)} ` +
        `(${pausedPages} before the cut), faults ${w.faults}, blocked ${w['blocked-ms']} ms (max ${w['max-blocked-ms']}), ` +
        `fault latency p50 ${lat['p50-us']} µs p99 ${lat['p99-us']} µs`,
    );
  }, 90_000);

  it('without the capability: one connection, no x-postcopy-preempt-pages (figures printed for comparison)', async () => {
    const p = await proxiedPair(false);
    const { src, dst, proxy } = p;
    await waitStatus(src.qmp, ['active']);
    await src.qmp.execute('migrate-start-postcopy');
    await waitEvent(dst, 'postcopy-active');
    await faulted(dst, 20);
    const { s, d } = await bothCompleted(p);
    expect([s.status, d.status]).toEqual(['completed', 'completed']);
    expect(await dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await src.qmp.execute<Digest>('x-ram-digest'));
    expect(proxy.query().connections).toHaveLength(1);
    expect(s).not.toHaveProperty('x-postcopy-preempt-pages');
    expect(d).not.toHaveProperty('x-postcopy-preempt-pages');
    const w = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
    const lat = d['x-postcopy-fault-latency'] as Record<string, number>;
    console.log(
      `no preempt vm → vm: requests ${(s.ram as Record<string, number>)['postcopy-requests']}, faults ${w.faults}, ` +
        `blocked ${w['blocked-ms']} ms (max ${w['max-blocked-ms']}), fault latency p50 ${lat['p50-us']} µs p99 ${lat['p99-us']} µs`,
    );
  }, 90_000);
});

describe('postcopy vm --fault-priority', () => {
  it.runIf(process.getuid?.() === 0)('runs the source\'s urgent worker and the destination\'s migration thread at it during postcopy, and puts the destination\'s back', async () => {
    const p = await postcopyPair({ ramMiB: 32, srcCaps: ['postcopy-preempt'], dstCaps: ['postcopy-preempt'], srcArgs: ['--fault-priority', '-4'], dstArgs: ['--fault-priority', '-4'] }, procs);
    const { src, dst } = p;
    const srcPid = src.child.pid!;
    const dstPid = dst.child.pid!;
    expect(threadNices(dstPid).get(dstPid)).toBe(0);
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    await waitStatus(src.qmp, ['active']);
    await src.qmp.execute('migrate-start-postcopy');
    await waitEvent(dst, 'postcopy-active');
    await faulted(dst, 20);
    expect(preemptPages(await src.qmp.execute<Info>('query-migrate'))).toBeGreaterThan(0);
    // destination: its main thread (it reads the channels and serves the workload's faults)
    expect(threadNices(dstPid).get(dstPid)).toBe(-4);
    // source: one thread, the urgent worker, not the main thread (it streams the background)
    const s = threadNices(srcPid);
    expect(s.get(srcPid)).toBe(0);
    expect([...s.values()].filter((n) => n === -4)).toHaveLength(1);
    const done = await bothCompleted(p);
    expect([done.s.status, done.d.status]).toEqual(['completed', 'completed']);
    expect(await dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await src.qmp.execute<Digest>('x-ram-digest'));
    expect(threadNices(dstPid).get(dstPid)).toBe(0);
  }, 60_000);
});
