/**
 * Our MigrationSource → real QEMU 7.2 destination (-M none, file-backed
 * RAM), over loopback TCP with the return path (SHUT from QEMU).
 */
import fs from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { encodeGlobalState } from '../../src/destination/destination.js';
import { hasQemu, qemuSkipReason, startQemu, type QemuProcess } from '../interop/harness/index.js';
import { fillRandom, startDirtier, TestGuest } from '../engine/helpers.js';

const procs: QemuProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function connect(port: number): Promise<net.Socket> {
  for (let i = 0; ; i++) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

describe.skipIf(!hasQemu)(`our source → QEMU destination ${qemuSkipReason}`, () => {
  it('QEMU loads our precopy stream (random + zero pages, dirtying guest, XBZRLE) byte for byte', async () => {
    const port = await freePort();
    const q = await startQemu({ machine: 'none', memory: '16M', ramFill: 'zero', paused: true, incoming: `tcp:127.0.0.1:${port}` });
    procs.push(q);
    await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
    const g = new TestGuest([{ idstr: 'ram', size: 16 << 20 }]);
    fillRandom(g.blocks[0]!.bytes.subarray(0, 6 << 20), 11);
    const stop = startDirtier(g, { pagesPerTick: 4, intervalMs: 1, workingSet: 256 });
    const src = new MigrationSource(g, {
      capabilities: { returnPath: true, xbzrle: true, events: true },
      parameters: { maxBandwidth: 16 << 20, downtimeLimit: 5, xbzrleCacheSize: 1 << 20 },
    });
    // every pass also rewrites 64 pages until XBZRLE has had hits (deterministic on a loaded machine)
    let passes = 0;
    let dirtying = true;
    src.on('MIGRATION_PASS', () => {
      if (++passes >= 4 && src.xbzrleStats()!.pages > 0) {
        dirtying = false;
        stop();
      }
      if (dirtying && !g.stopped) for (let p = 0; p < 64; p++) g.write(0, p * 4096 + passes, Uint8Array.of(passes | 1));
    });
    const sock = await connect(port);
    const status = await src.migrate(sock, {
      machineName: 'none',
      devices: () => [{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState('running') }],
    });
    stop();
    expect(src.queryMigrate()['error-desc']).toBeUndefined();
    expect(status).toBe('completed');
    expect(src.returnPath!.shutValue).toBe(0);
    expect(src.returnPath!.pongs).toEqual([1]);
    // a destination's query-migrate has no total-time: poll it directly
    let info: { status?: string } = {};
    for (let i = 0; i < 200 && info.status !== 'completed'; i++) {
      info = await q.qmp.execute<{ status?: string }>('query-migrate');
      if (info.status !== 'completed') await new Promise((r) => setTimeout(r, 20));
    }
    expect(info.status).toBe('completed');
    const file = fs.readFileSync(q.ramPath!);
    expect(Buffer.compare(Buffer.from(g.blocks[0]!.bytes), file)).toBe(0);
    expect(src.xbzrleStats()!.pages).toBeGreaterThan(0);
    // globalstate "running" + a destination started with -S (no autostart) → paused (SPEC §1.8)
    const st = await q.qmp.execute<{ status: string }>('query-status');
    expect(st.status).toBe('paused');
  });

  it('QEMU rejects a wrong machine type with its message', async () => {
    const port = await freePort();
    const q = await startQemu({ machine: 'none', memory: '16M', paused: true, incoming: `tcp:127.0.0.1:${port}` });
    procs.push(q);
    const g = new TestGuest([{ idstr: 'ram', size: 16 << 20 }]);
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 1e12 } });
    const sock = await connect(port);
    const status = await src.migrate(sock, { machineName: 'pc-i440fx-7.2' });
    await q.exited;
    expect(q.stderr()).toMatch(/Machine type received is 'pc-i440fx-7.2' and local is 'none'/);
    expect(['completed', 'failed']).toContain(status);
  });
});
