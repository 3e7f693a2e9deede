/**
 * postcopy vm → postcopy vm in postcopy: QMP state rules of the postcopy
 * commands (QEMU 7.2's texts), a live postcopy with a writing source and a
 * reading destination whose every page goes through the fault path, and a
 * migrate-pause / migrate-recover / migrate resume=true round.
 */
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MIGRATE_ERRORS } from '../../src/control/migrate-args.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { listeningPort, qmpError, startVm, waitStatus, type Digest, type VmProcess } from './helpers.js';
import { bothCompleted, migrationEvents, MiB, postcopyPair, sleep, waitEvent, type WorkloadInfo } from './postcopy-helpers.js';

const procs: VmProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

describe('postcopy QMP state rules', () => {
  it('idle source, idle destination: QEMU 7.2 refusals', async () => {
    const src = await startVm(['--ram', '8M']);
    procs.push(src);
    const dst = await startVm(['--ram', '8M', '--incoming', 'defer']);
    procs.push(dst);
    expect(await qmpError(src.qmp, 'migrate-start-postcopy')).toBe(MIGRATE_ERRORS.startPostcopyNotEnabled);
    await src.qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'postcopy-ram', state: true },
        { capability: 'release-ram', state: true },
      ],
    });
    expect(await qmpError(src.qmp, 'migrate-start-postcopy')).toBe(MIGRATE_ERRORS.startPostcopyIdle);
    expect(await qmpError(src.qmp, 'migrate-pause')).toBe(MIGRATE_ERRORS.pauseNotPostcopy);
    // the state is checked before release-ram (QEMU's migrate_prepare)
    expect(await qmpError(src.qmp, 'migrate', { uri: 'tcp:127.0.0.1:1', resume: true })).toBe(MIGRATE_ERRORS.resumeNotPaused);
    expect(await qmpError(src.qmp, 'migrate-recover', { uri: 'tcp:127.0.0.1:0' })).toBe(MIGRATE_ERRORS.recoverNotPaused);
    expect(await qmpError(dst.qmp, 'migrate-recover', { uri: 'tcp:127.0.0.1:0' })).toBe(MIGRATE_ERRORS.recoverNotPaused);
    expect(await qmpError(dst.qmp, 'migrate-pause')).toBe(MIGRATE_ERRORS.pauseNotPostcopy);
    // migrate-pause and migrate-recover are allowed out of band (a second QMP client with oob)
    const oob = await QmpClient.connect(src.qmpPath, { enable: ['oob'] });
    try {
      await expect(oob.execute('migrate-pause', undefined, { oob: true })).rejects.toThrow(MIGRATE_ERRORS.pauseNotPostcopy);
      await expect(oob.execute('migrate-recover', { uri: 'tcp:127.0.0.1:0' }, { oob: true })).rejects.toThrow(MIGRATE_ERRORS.recoverNotPaused);
      await expect(oob.execute('migrate-start-postcopy', undefined, { oob: true })).rejects.toThrow(/does not support OOB|exec-oob/);
    } finally {
      await oob.close();
    }
    // argument checking comes first
    expect(await qmpError(dst.qmp, 'migrate-recover', {})).toBe("Parameter 'uri' is missing");
  });

  it('during precopy (active): pause, recover and resume are refused; start-postcopy needs postcopy-ram', async () => {
    const src = await startVm(['--ram', '32M', '--workload', 'pattern=rand,rate=max']);
    procs.push(src);
    const dst = await startVm(['--ram', '32M', '--incoming', 'defer']);
    procs.push(dst);
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB });
    await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    await waitStatus(src.qmp, ['active']);
    await waitStatus(dst.qmp, ['active']);
    expect(await qmpError(src.qmp, 'migrate-start-postcopy')).toBe(MIGRATE_ERRORS.startPostcopyNotEnabled);
    expect(await qmpError(src.qmp, 'migrate-pause')).toBe(MIGRATE_ERRORS.pauseNotPostcopy);
    expect(await qmpError(dst.qmp, 'migrate-pause')).toBe(MIGRATE_ERRORS.pauseNotPostcopy);
    expect(await qmpError(src.qmp, 'migrate', { uri: 'tcp:127.0.0.1:1', resume: true })).toBe(MIGRATE_ERRORS.resumeNotPaused);
    expect(await qmpError(dst.qmp, 'migrate-recover', { uri: 'tcp:127.0.0.1:0' })).toBe(MIGRATE_ERRORS.recoverNotPaused);
    expect(await qmpError(src.qmp, 'migrate', { uri: 'tcp:127.0.0.1:1' })).toBe(MIGRATE_ERRORS.inProgress);
    await src.qmp.execute('migrate_cancel');
    await waitStatus(src.qmp, ['cancelled']);
  });
});

describe('postcopy vm → postcopy vm, postcopy', () => {
  it('write workload on the source, faulting reader on the destination: completed, RAM equal, requests and faults > 0', async () => {
    const p = await postcopyPair({ ramMiB: 64, dstCaps: ['postcopy-blocktime'] }, procs);
    const { src, dst } = p;
    // precopy slow enough to be switched mid-pass; the background scan after the switch slow enough to fault on
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'max-postcopy-bandwidth': 16 * MiB });
    const port = await listeningPort(dst.qmp);
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    await waitStatus(src.qmp, ['active']);
    await sleep(300);
    // before RUN the destination's guest does not run
    expect(await dst.qmp.execute<WorkloadInfo>('x-query-workload')).toMatchObject({ present: true, running: false, visits: 0, faults: 0 });
    expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'inmigrate' });
    const t0 = performance.now();
    await src.qmp.execute('migrate-start-postcopy');
    await waitEvent(src, 'postcopy-active');
    await waitEvent(dst, 'postcopy-active');
    const tSwitch = performance.now() - t0;
    // during postcopy: the source is stopped, the destination runs and faults
    const during = await src.qmp.execute<Record<string, unknown>>('query-migrate');
    expect(['postcopy-active', 'completed']).toContain(during.status);
    expect(await src.qmp.execute('query-status')).toMatchObject({ running: false });
    const { s, d } = await bothCompleted(p);
    const tDone = performance.now() - t0;
    expect(s.status).toBe('completed');
    expect(d.status).toBe('completed');
    // RAM: the destination only reads; the source stopped at the switchover
    const a = await src.qmp.execute<Digest>('x-ram-digest');
    const b = await dst.qmp.execute<Digest>('x-ram-digest');
    expect(b).toEqual(a);
    const ram = s.ram as Record<string, number>;
    expect(ram['postcopy-requests']).toBeGreaterThan(0);
    expect(ram['postcopy-bytes']).toBeGreaterThan(0);
    const w = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
    expect(w.faults).toBeGreaterThan(0);
    expect(w.visits).toBeGreaterThan(w.faults);
    expect(w.running).toBe(true);
    // QEMU's run states: source finish-migrate → postmigrate, destination running from RUN
    expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate', running: false });
    expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    expect(migrationEvents(src.events)).toEqual(['setup', 'active', 'postcopy-active', 'STOP', 'completed']);
    expect(migrationEvents(dst.events)).toEqual(['setup', 'active', 'postcopy-active', 'RESUME', 'completed']);
    // the destination's postcopy info: blocktime (capability on) and our fault latency
    expect(d['postcopy-blocktime']).toEqual(expect.any(Number));
    expect(d['postcopy-vcpu-blocktime']).toEqual([expect.any(Number)]);
    const lat = d['x-postcopy-fault-latency'] as Record<string, number>;
    expect(lat.count).toBeGreaterThan(0);
    expect(lat['p99-us']).toBeGreaterThanOrEqual(lat['p50-us']);
    console.log(
      `postcopy 64 MiB: switch ${tSwitch.toFixed(0)} ms, done ${tDone.toFixed(0)} ms after migrate-start-postcopy; ` +
        `requests ${ram['postcopy-requests']}, faults ${w.faults}, blocked ${w['blocked-ms']} ms (max ${w['max-blocked-ms']}), ` +
        `fault latency p50 ${lat['p50-us']} µs p99 ${lat['p99-us']} µs, blocktime ${String(d['postcopy-blocktime'])} ms`,
    );
  }, 60_000);
});

describe('migrate-pause → migrate-recover → migrate resume=true', () => {
  for (const side of ['source', 'destination'] as const) {
    it(`paused by migrate-pause on the ${side}: recovery completes with RAM equal`, async () => {
      const p = await postcopyPair({ ramMiB: 32 }, procs);
      const { src, dst } = p;
      await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
      await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
      await waitStatus(src.qmp, ['active']);
      await src.qmp.execute('migrate-start-postcopy');
      await waitEvent(src, 'postcopy-active');
      await waitEvent(dst, 'postcopy-active');
      await sleep(300);
      await (side === 'source' ? src : dst).qmp.execute('migrate-pause');
      await waitEvent(src, 'postcopy-paused');
      await waitEvent(dst, 'postcopy-paused');
      expect((await src.qmp.execute<Record<string, unknown>>('query-migrate')).status).toBe('postcopy-paused');
      expect((await dst.qmp.execute<Record<string, unknown>>('query-migrate')).status).toBe('postcopy-paused');
      // the destination's reader is blocked on its faults, not failed
      const w1 = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
      await sleep(200);
      const w2 = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
      expect(w2.visits).toBe(w1.visits);
      // a resume to a port nothing listens on: still postcopy-paused, the next try works
      await src.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1', resume: true });
      await sleep(100);
      expect((await src.qmp.execute<Record<string, unknown>>('query-migrate')).status).toBe('postcopy-paused');
      // a second migrate-recover replaces the first listener (QEMU 7.2 allows retries)
      await dst.qmp.execute('migrate-recover', { uri: 'tcp:127.0.0.1:0' });
      const first = await listeningPort(dst.qmp);
      await dst.qmp.execute('migrate-recover', { uri: 'tcp:127.0.0.1:0' });
      expect((await dst.qmp.execute<Record<string, unknown>>('query-migrate')).status).toBe('postcopy-paused');
      const port = await listeningPort(dst.qmp);
      if (port !== first) {
        // the replaced listener is gone: a resume to it is accepted but cannot connect
        await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${first}`, resume: true });
        await sleep(150);
        expect((await src.qmp.execute<Record<string, unknown>>('query-migrate')).status).toBe('postcopy-paused');
      }
      await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}`, resume: true });
      const { s, d } = await bothCompleted(p);
      expect([s.status, d.status]).toEqual(['completed', 'completed']);
      expect(await dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await src.qmp.execute<Digest>('x-ram-digest'));
      const w3 = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
      expect(w3.visits).toBeGreaterThan(w2.visits);
      // QEMU 7.2's captured sequences (SPEC §8.5)
      expect(migrationEvents(src.events).filter((e) => e !== 'STOP')).toEqual([
        'setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed',
      ]);
      expect(migrationEvents(dst.events).filter((e) => e !== 'RESUME')).toEqual([
        'setup', 'active', 'postcopy-active', 'postcopy-paused', 'setup', 'setup', 'postcopy-recover', 'postcopy-active', 'completed',
      ]);
    }, 60_000);
  }
});

describe('release-ram and an adopting destination', () => {
  it('release-ram: sent RAM is released on the source; resume is refused while paused; the destination gets the image', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-rr-'));
    const image = path.join(dir, 'src.ram');
    const content = Buffer.alloc(16 * MiB);
    randomFillSync(content);
    fs.writeFileSync(image, content);
    const src = await startVm(['--ram', '16M', '--mem-path', image]);
    procs.push(src);
    // no --ram: the destination adopts the source's layout
    const dst = await startVm(['--incoming', 'defer']);
    procs.push(dst);
    for (const [q, caps] of [
      [src.qmp, ['events', 'postcopy-ram', 'release-ram']],
      [dst.qmp, ['events', 'postcopy-ram']],
    ] as const) {
      await q.execute('migrate-set-capabilities', { capabilities: caps.map((capability) => ({ capability, state: true })) });
    }
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
    await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    await waitStatus(src.qmp, ['active']);
    await src.qmp.execute('migrate-start-postcopy');
    await waitEvent(src, 'postcopy-active');
    await waitEvent(dst, 'postcopy-active');
    await src.qmp.execute('migrate-pause');
    await waitEvent(src, 'postcopy-paused');
    await waitEvent(dst, 'postcopy-paused');
    expect(await qmpError(src.qmp, 'migrate', { uri: 'tcp:127.0.0.1:1', resume: true })).toBe(MIGRATE_ERRORS.resumeReleaseRam);
    // QEMU's rule leaves this migration stuck; our test ends it by restarting both sides without release-ram
    await src.cleanup();
    await dst.cleanup();
    procs.length = 0;

    const src2 = await startVm(['--ram', '16M', '--mem-path', image]);
    procs.push(src2);
    const dst2 = await startVm(['--incoming', 'defer']);
    procs.push(dst2);
    await src2.qmp.execute('migrate-set-capabilities', { capabilities: ['postcopy-ram', 'release-ram'].map((capability) => ({ capability, state: true })) });
    await dst2.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
    await src2.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB, 'max-postcopy-bandwidth': 8 * MiB });
    await dst2.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await src2.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst2.qmp)}` });
    await waitStatus(src2.qmp, ['active']);
    await src2.qmp.execute('migrate-start-postcopy');
    await waitStatus(src2.qmp, ['completed'], 30_000);
    await waitStatus(dst2.qmp, ['completed'], 30_000);
    const sha = createHash('sha256').update(content).digest('hex');
    expect((await dst2.qmp.execute<Digest>('x-ram-digest')).blocks).toEqual([{ idstr: 'ram', usedLength: 16 * MiB, sha256: sha }]);
    // the source released what it sent in postcopy (zeroed): its RAM is no longer the image
    expect((await src2.qmp.execute<Digest>('x-ram-digest')).blocks[0]!.sha256).not.toBe(sha);
    fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('an adopting destination (no --ram) runs its reader from RUN on the adopted RAM: faults served, RAM equal', async () => {
    const src = await startVm(['--ram', '32M', '--workload', 'pattern=rand,rate=max']);
    procs.push(src);
    const dst = await startVm(['--incoming', 'defer', '--workload', 'mode=read,pattern=rand']);
    procs.push(dst);
    for (const q of [src.qmp, dst.qmp]) {
      await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
    }
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
    await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    await waitStatus(src.qmp, ['active']);
    await src.qmp.execute('migrate-start-postcopy');
    await waitStatus(dst.qmp, ['postcopy-active']);
    let during: WorkloadInfo | undefined;
    for (let i = 0; i < 100; i++) {
      during = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
      if (during.faults > 0) break;
      await sleep(20);
    }
    expect(during!.faults).toBeGreaterThan(0);
    const s = await waitStatus(src.qmp, ['completed'], 30_000);
    await waitStatus(dst.qmp, ['completed'], 30_000);
    expect((s.ram as Record<string, number>)['postcopy-requests']).toBeGreaterThan(0);
    expect(await dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await src.qmp.execute<Digest>('x-ram-digest'));
    // counters carry over to the workload that runs on the final memory
    const after = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
    expect(after.faults).toBeGreaterThanOrEqual(during!.faults);
    await sleep(200);
    expect((await dst.qmp.execute<WorkloadInfo>('x-query-workload')).visits).toBeGreaterThan(after.visits);
  }, 60_000);
});
