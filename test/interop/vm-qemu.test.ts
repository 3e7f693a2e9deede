/**
 * `postcopy vm` and the real qemu-system-x86_64 7.2 as peers, both driven
 * over QMP the same way: QEMU → postcopy vm (-M none and adopting -M pc)
 * and postcopy vm → QEMU, checked byte for byte.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { inspectStream } from '../../src/inspect/inspect.js';
import { captureStream, hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from './harness/index.js';
import { listeningPort, startVm, waitStatus, type Digest, type VmProcess } from '../vm/helpers.js';

const MiB = 1 << 20;
const qemus: QemuProcess[] = [];
const vms: VmProcess[] = [];
afterEach(async () => {
  for (const p of vms.splice(0)) await p.cleanup();
  for (const q of qemus.splice(0)) await q.cleanup();
});
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function qemu(opts: Parameters<typeof startQemu>[0]): Promise<QemuProcess> {
  const q = await startQemu(opts);
  qemus.push(q);
  return q;
}
async function vm(args: string[]): Promise<VmProcess> {
  const v = await startVm(args);
  vms.push(v);
  return v;
}
async function caps(q: { execute: (c: string, a?: Record<string, unknown>) => Promise<unknown> }, names: string[]): Promise<void> {
  await q.execute('migrate-set-capabilities', { capabilities: names.map((capability) => ({ capability, state: true })) });
}

describe.skipIf(!hasQemu)(`postcopy vm with real QEMU 7.2 ${qemuSkipReason}`, () => {
  it('(1) QEMU -M none -m 96M (random RAM) → adopting postcopy vm: RAM equal byte for byte, QEMU completed', async () => {
    const q = await qemu({ machine: 'none', memory: '96M', ramFill: 'random', paused: true });
    const v = await vm(['--incoming', 'tcp:127.0.0.1:0', '--mem-path', path.join('/tmp', `pcvm-${process.pid}-1.ram`)]);
    await caps(q.qmp, ['return-path', 'events']);
    await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(v.qmp)}` });
    await waitForStatus(q.qmp, 'completed', 60_000);
    await waitStatus(v.qmp, ['completed']);
    const ram = fs.readFileSync(q.ramPath!);
    const d = await v.qmp.execute<Digest>('x-ram-digest');
    expect(d.blocks).toEqual([{ idstr: 'ram', usedLength: 96 * MiB, sha256: sha(ram) }]);
    const file = path.join('/tmp', `pcvm-${process.pid}-1.ram`);
    expect(Buffer.compare(fs.readFileSync(file), ram)).toBe(0);
    fs.rmSync(file, { force: true });
    // a -S source sends globalstate "prelaunch": applied on our side
    expect(await v.qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
  }, 60_000);

  for (const xbzrle of [false, true]) {
    it(`(2) postcopy vm --machine none with a running workload → QEMU -M none -incoming defer${xbzrle ? ', XBZRLE' : ''}`, async () => {
      const q = await qemu({ machine: 'none', memory: '64M', ramFill: 'zero', paused: true, incoming: 'defer' });
      const v = await vm(['--machine', 'none', '--ram', '64M', '--workload', 'pattern=hot,rate=30000,bytes=16,wss=8M']);
      await caps(q.qmp, ['return-path']);
      await caps(v.qmp, xbzrle ? ['return-path', 'xbzrle', 'events'] : ['return-path', 'events']);
      await v.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB, 'downtime-limit': xbzrle ? 30 : 300, 'xbzrle-cache-size': 8 * MiB });
      await q.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
      const port = await listeningPort(q.qmp);
      await sleep(200);
      await v.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
      let x: Record<string, number> | undefined;
      for (;;) {
        const i = await v.qmp.execute<Record<string, unknown>>('query-migrate');
        if (i['xbzrle-cache']) x = i['xbzrle-cache'] as Record<string, number>;
        if (i.status === 'completed' || i.status === 'failed') break;
        await sleep(50);
      }
      const info = await waitStatus(v.qmp, ['completed']);
      const qi = await waitForStatus(q.qmp, 'completed', 20_000).catch(async () => q.qmp.execute<{ status?: string }>('query-migrate'));
      expect(qi.status).toBe('completed');
      expect(q.exitCode()).toBeUndefined();
      const d = await v.qmp.execute<Digest>('x-ram-digest');
      expect(d.blocks[0]!.sha256).toBe(sha(fs.readFileSync(q.ramPath!)));
      expect((info.ram as Record<string, number>)['dirty-sync-count']).toBeGreaterThan(1);
      if (xbzrle) expect(x!.pages).toBeGreaterThan(0);
      // our globalstate said "running"; QEMU was started with -S, so it stays paused (SPEC §1.8)
      expect(await q.qmp.execute('query-status')).toMatchObject({ status: 'paused' });
      expect(await v.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate' });
    }, 60_000);
  }

  it('(3) QEMU -M pc -m 128M -S → adopting postcopy vm: all nine RAM blocks equal; and back into a QEMU -M pc', async () => {
    // Two identical QEMUs: the first writes its stream to a file (inspect hashes every block), the
    // second migrates into postcopy vm. Same RAM file, same firmware → same blocks.
    const a = await qemu({ machine: 'pc', memory: '128M', ramFill: 'random', paused: true, nodefaults: false });
    const b = await qemu({ machine: 'pc', memory: '128M', ramFill: 'zero', paused: true, nodefaults: false });
    fs.copyFileSync(a.ramPath!, b.ramPath!);
    const file = await captureStream(a.qmp, { dir: a.dir });
    const inspected = await inspectStream(fs.createReadStream(file, { highWaterMark: MiB }));
    expect(inspected.ramBlocks).toHaveLength(9);
    const v = await vm(['--incoming', 'defer']);
    await v.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await b.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(v.qmp)}` });
    await waitForStatus(b.qmp, 'completed', 60_000);
    await waitStatus(v.qmp, ['completed']);
    const d = await v.qmp.execute<Digest>('x-ram-digest');
    expect(d.blocks).toEqual(inspected.ramBlocks.map((r) => ({ idstr: r.idstr, usedLength: r.usedLength, sha256: r.sha256 })));
    expect(d.blocks[0]).toMatchObject({ idstr: 'pc.ram', sha256: sha(fs.readFileSync(a.ramPath!)) });
    // ... and back: the adopted VM (machine pc-i440fx-7.2, opaque device sections) migrates into a QEMU -M pc.
    await b.cleanup();
    const c = await qemu({ machine: 'pc', memory: '128M', ramFill: 'zero', paused: true, nodefaults: false, incoming: 'defer' });
    await c.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await v.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(c.qmp)}` });
    await waitStatus(v.qmp, ['completed'], 60_000);
    let ci: { status?: string } = {};
    for (let i = 0; i < 200 && ci.status !== 'completed' && c.exitCode() === undefined; i++) {
      ci = await c.qmp.execute<{ status?: string }>('query-migrate');
      await sleep(25);
    }
    expect(c.stderr()).toBe('');
    expect(ci.status).toBe('completed');
    expect(sha(fs.readFileSync(c.ramPath!))).toBe(d.blocks[0]!.sha256);
    // globalstate "prelaunch" (the -S source's) came through our process unchanged in meaning
    expect(await c.qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
  }, 90_000);

  it('(4a) migrate to a port nothing listens on: failed with the same error-desc as QEMU, source keeps running', async () => {
    const q = await qemu({ machine: 'none', memory: '16M', paused: false });
    const v = await vm(['--ram', '16M', '--workload', 'rate=1000']);
    const qev: string[] = [];
    const vev: string[] = [];
    q.qmp.on('event', (e: { event: string; data: { status?: string } }) => e.event === 'MIGRATION' && qev.push(e.data.status!));
    v.qmp.on('event', (e: { event: string; data: { status?: string } }) => e.event === 'MIGRATION' && vev.push(e.data.status!));
    for (const c of [q.qmp, v.qmp]) {
      await caps(c, ['events']);
      expect(await c.execute('migrate', { uri: 'tcp:127.0.0.1:1' })).toEqual({});
    }
    const qi = await waitStatus(q.qmp, ['failed']);
    const vi = await waitStatus(v.qmp, ['failed']);
    expect(vi).toEqual(qi);
    await sleep(50);
    expect(vev).toEqual(qev);
    expect(await v.qmp.execute('query-status')).toEqual(await q.qmp.execute('query-status'));
  });

  it('(4b) cancel mid-way: postcopy vm → QEMU, QEMU destination fails and exits 1; QEMU → postcopy vm, ours exits 1', async () => {
    const q = await qemu({ machine: 'none', memory: '64M', ramFill: 'zero', paused: true, incoming: 'defer' });
    // 64 MiB of random RAM at 4 MiB/s: the first pass alone takes ~16 s, so the
    // cancel at 300 ms always lands mid-way (a zero-RAM source could finish first).
    const ramFile = path.join('/tmp', `pcvm-${process.pid}-4b.ram`);
    fs.writeFileSync(ramFile, randomBytes(64 * MiB));
    const v = await vm(['--machine', 'none', '--ram', '64M', '--mem-path', ramFile, '--workload', 'pattern=rand,rate=max,bytes=4096']);
    await v.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB });
    await q.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    await v.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(q.qmp)}` });
    await waitStatus(v.qmp, ['active']);
    await sleep(300);
    await v.qmp.execute('migrate_cancel');
    await waitStatus(v.qmp, ['cancelled']);
    expect((await q.exited).code).toBe(1);
    expect(await v.qmp.execute('query-status')).toMatchObject({ status: 'running' });

    const q2 = await qemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: false });
    const v2 = await vm(['--incoming', 'tcp:127.0.0.1:0']);
    await q2.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB });
    await q2.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(v2.qmp)}` });
    await waitStatus(q2.qmp, ['active']);
    await sleep(300);
    await q2.qmp.execute('migrate_cancel');
    await waitStatus(q2.qmp, ['cancelled']);
    expect(await v2.exited).toBe(1);
    fs.rmSync(ramFile, { force: true });
  }, 60_000);

  it('(4c) capability combinations QEMU rejects are rejected with the same text', async () => {
    const q = await qemu({ machine: 'none', memory: '16M' });
    const v = await vm(['--ram', '16M', '-S']);
    const combos: Array<Array<[string, boolean]>> = [
      [['postcopy-preempt', true]],
      [['postcopy-ram', true], ['x-ignore-shared', true]],
      [['zero-copy-send', true]],
      [['no-such-capability', true]],
    ];
    for (const combo of combos) {
      const args = { capabilities: combo.map(([capability, state]) => ({ capability, state })) };
      const qe = await q.qmp.execute('migrate-set-capabilities', args).then(() => 'ok', (e: Error) => e.message);
      const ve = await v.qmp.execute('migrate-set-capabilities', args).then(() => 'ok', (e: Error) => e.message);
      expect(qe).not.toBe('ok');
      expect(ve).toBe(qe);
    }
  });
});
