/** postcopy vm → postcopy vm precopy with a running workload, --mem-path, failures, the demo. */
import { spawn } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, listeningPort, startVm, waitStatus, type Digest, type VmProcess } from './helpers.js';

const MiB = 1 << 20;
const procs: VmProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});
async function vm(args: string[], dir?: string): Promise<VmProcess> {
  const p = await startVm(args, dir);
  procs.push(p);
  return p;
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('postcopy vm → postcopy vm', () => {
  it('live precopy with a running workload and XBZRLE: statistics > 0, RAM equal at stop time, events', async () => {
    const src = await vm(['--machine', 'none', '--ram', '32M', '--workload', 'pattern=hot,rate=40000,bytes=32,wss=4M']);
    const dst = await vm(['--machine', 'none', '--ram', '32M', '--incoming', 'defer']);
    for (const q of [src.qmp, dst.qmp]) {
      await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    }
    await src.qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'xbzrle', state: true },
        { capability: 'return-path', state: true },
      ],
    });
    // slow enough for several passes, so re-dirtied pages hit the XBZRLE cache
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB, 'downtime-limit': 20, 'xbzrle-cache-size': 8 * MiB });
    await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const port = await listeningPort(dst.qmp);
    await sleep(200);
    const visitsBefore = await src.qmp.execute<Digest>('x-ram-digest');
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    let xbzrle: Record<string, number> | undefined;
    let active: Record<string, unknown> | undefined;
    for (;;) {
      const info = await src.qmp.execute<Record<string, unknown>>('query-migrate');
      if (info['xbzrle-cache']) xbzrle = info['xbzrle-cache'] as Record<string, number>;
      if (info.status === 'active') active = info;
      if (info.status === 'completed' || info.status === 'failed') break;
      await sleep(50);
    }
    const done = await waitStatus(src.qmp, ['completed']);
    await waitStatus(dst.qmp, ['completed']);
    expect(active).toMatchObject({ status: 'active', ram: { 'page-size': 4096, total: 32 * MiB } });
    expect(xbzrle!.pages).toBeGreaterThan(0);
    expect(xbzrle!.bytes).toBeGreaterThan(0);
    expect((done.ram as Record<string, number>)['dirty-sync-count']).toBeGreaterThan(2);
    expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate', running: false });
    expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    // The source stopped at switchover; the destination has no workload: digests must agree.
    const a = await src.qmp.execute<Digest>('x-ram-digest');
    const b = await dst.qmp.execute<Digest>('x-ram-digest');
    expect(a.blocks).toEqual([{ idstr: 'ram', usedLength: 32 * MiB, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) }]);
    expect(b).toEqual(a);
    // the workload really ran: RAM changed since before the migration
    expect(a.blocks[0]!.sha256).not.toBe(visitsBefore.blocks[0]!.sha256);
    // a second migrate from postmigrate is refused like QEMU
    await expect(src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` })).rejects.toThrow(
      "Can't migrate the vm that was paused due to previous migration",
    );
    const sev = src.events.map((e) => (e.event === 'MIGRATION' ? `M:${(e.data as { status: string }).status}` : e.event));
    expect(sev.filter((e) => e.startsWith('M:'))).toEqual(['M:setup', 'M:active', 'M:completed']);
    expect(sev).toContain('STOP');
    expect(sev.filter((e) => e === 'MIGRATION_PASS').length).toBeGreaterThan(2);
    const dev = dst.events.map((e) => (e.event === 'MIGRATION' ? `M:${(e.data as { status: string }).status}` : e.event));
    // QEMU 7.2 starts the VM before it reports completed (checked against QEMU in test/interop/vm-drill.test.ts)
    expect(dev).toEqual(['M:setup', 'M:active', 'RESUME', 'M:completed']);
  });

  it('--mem-path: the source starts from the file; the destination writes its RAM back; -S destination ends paused', async () => {
    const dir = fs.mkdtempSync(path.join('/tmp', 'postcopy-vmt-'));
    const image = path.join(dir, 'src.ram');
    const content = Buffer.alloc(8 * MiB);
    randomFillSync(content.subarray(0, 2 * MiB));
    fs.writeFileSync(image, content);
    const out = path.join(dir, 'dst.ram');
    // The destination starts from a file of 0xaa: its RAM is not fresh, so the ZERO records (6 MiB of
    // the source is zero) must be written, not skipped as for a fresh VM's untouched pages.
    fs.writeFileSync(out, Buffer.alloc(8 * MiB, 0xaa));
    const src = await vm(['--ram', '8M', '--mem-path', image, '-S']);
    const dst = await vm(['--ram', '8M', '--mem-path', out, '--incoming', 'tcp:127.0.0.1:0', '-S']);
    const d = await src.qmp.execute<Digest>('x-ram-digest');
    expect(d.blocks[0]!.sha256).toBe(sha(content));
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    await waitStatus(src.qmp, ['completed']);
    await waitStatus(dst.qmp, ['completed']);
    // written back when the incoming migration completed
    for (let i = 0; i < 100 && sha(fs.readFileSync(out)) !== sha(content); i++) await sleep(20);
    expect(sha(fs.readFileSync(out))).toBe(sha(content));
    expect((await dst.qmp.execute<Digest>('x-ram-digest')).blocks[0]!.sha256).toBe(sha(content));
    // globalstate "prelaunch" from the -S source is applied
    expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
    // quit writes RAM back too: change it first by running a workload-free cont (no change) → same bytes
    fs.writeFileSync(out, Buffer.alloc(8 * MiB, 0xaa));
    await dst.qmp.execute('quit');
    expect(await dst.exited).toBe(0);
    expect(sha(fs.readFileSync(out))).toBe(sha(content));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a destination whose load fails exits with status 1 and says why on stderr', async () => {
    const src = await vm(['--ram', '8M']);
    const dst = await vm(['--ram', '16M', '--incoming', 'tcp:127.0.0.1:0']);
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    expect(await dst.exited).toBe(1);
    expect(dst.stderr()).toMatch(/Size mismatch|load of migration failed/);
    // Without a return path an 8 MiB source can send everything and complete before the
    // destination's failure reaches it (QEMU's rule: completed → postmigrate); when it sees
    // the broken connection first, it fails and the guest runs on.
    const info = await waitStatus(src.qmp, ['failed', 'completed']);
    const expected = info.status === 'failed' ? 'running' : 'postmigrate';
    expect(await src.qmp.execute('query-status')).toMatchObject({ status: expected });
  });

  it('an incoming VM without --ram adopts the layout; migrate_cancel on the source fails the destination', async () => {
    const src = await vm(['--ram', '64M', '--workload', 'pattern=rand,rate=max,bytes=4096']);
    const dst = await vm(['--incoming', 'tcp:127.0.0.1:0']);
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
    await waitStatus(src.qmp, ['active']);
    await sleep(200);
    await src.qmp.execute('migrate_cancel');
    await waitStatus(src.qmp, ['cancelled']);
    expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'running' });
    expect(await dst.exited).toBe(1);
  });
});

describe('postcopy demo', () => {
  it('migrates and verifies (exit 0, "RAM identical")', async () => {
    const child = spawn(process.execPath, [BIN, 'demo', '--ram', '64'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.resume();
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    expect(out).toMatch(/verify: RAM identical/);
    expect(out).toMatch(/total time\s+[\d.]+ s/);
    expect(code).toBe(0);
  }, 60_000);
});
