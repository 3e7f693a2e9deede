/**
 * Our MigrationSource in postcopy → a real QEMU 7.2 destination (-M none,
 * 64 MiB file-backed RAM, postcopy-ram): precopy under a dirtying guest,
 * migrate-start-postcopy, the switchover (discards, package), postcopy pages
 * under max-postcopy-bandwidth with keepalive PINGs answered by QEMU, END +
 * EOF, SHUT 0; QEMU's RAM equals ours at stop time. Then pause by cutting
 * the connection while postcopy-active, migrate-recover on QEMU, resume().
 */
import fs from 'node:fs';
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationSource, type SwitchoverEvent } from '../../src/source/source.js';
import { StatusMachine } from '../../src/control/status.js';
import { encodeGlobalState } from '../../src/destination/destination.js';
import { KEEPALIVE_PING_VALUE } from '../../src/wire/constants.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from '../interop/harness/index.js';
import { fillRandom, startDirtier, TestGuest } from '../engine/helpers.js';

const MiB = 1 << 20;
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

const devices = () => [{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState('running') }];

async function qemuDestination(): Promise<{ q: QemuProcess; port: number }> {
  const port = await freePort();
  const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'zero', incoming: 'defer' });
  procs.push(q);
  await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
  await q.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
  return { q, port };
}

function randomGuest(seed: number): TestGuest {
  const g = new TestGuest([{ idstr: 'ram', size: 64 * MiB }]);
  fillRandom(g.blocks[0]!.bytes.subarray(0, 48 * MiB), seed);
  return g;
}

describe.skipIf(!hasQemu)(`our postcopy source → QEMU 7.2 destination ${qemuSkipReason}`, () => {
  it('switchover, postcopy pages, keepalive PINGs, END+EOF, SHUT 0; QEMU completes with our RAM', async () => {
    const { q, port } = await qemuDestination();
    const g = randomGuest(21);
    const stopDirty = startDirtier(g, { pagesPerTick: 8, intervalMs: 1 });
    const status = new StatusMachine();
    const src = new MigrationSource(g, {
      status,
      capabilities: { postcopyRam: true },
      parameters: { maxBandwidth: 48 * MiB, maxPostcopyBandwidth: 96 * MiB },
      keepaliveIntervalMs: 50,
    });
    let sw: SwitchoverEvent | undefined;
    src.on('switchover', (e: SwitchoverEvent) => (sw = e));
    let atStop: Buffer | undefined;
    src.on('switchover', () => (atStop = Buffer.from(g.blocks[0]!.bytes)));
    const sock = await connect(port);
    const run = src.migrate(sock, { machineName: 'none', devices });
    await new Promise((r) => setTimeout(r, 300));
    expect(src.status).toBe('active');
    src.startPostcopy();
    const result = await run;
    stopDirty();
    expect(src.queryMigrate()['error-desc']).toBeUndefined();
    expect(result).toBe('completed');
    expect(status.history).toEqual(['setup', 'active', 'postcopy-active', 'completed']);
    expect(g.stopped).toBe(true); // the guest now runs on the destination
    expect(sw).toBeDefined();
    expect(sw!.discards.ranges).toBeGreaterThan(0);
    expect(sw!.discards.forced).toBe(false);
    // 300 ms at 48 MiB/s: most of the 64 MiB was still to be sent after the switch
    expect(sw!.discards.pages).toBeGreaterThan(4096);
    const rp = src.returnPath!;
    expect(rp.shutValue).toBe(0);
    expect(rp.pongs.slice(0, 1)).toEqual([1]);
    expect(rp.pongs.filter((v) => v >= 2 && v <= 4).sort()).toEqual([2, 3, 4]);
    expect(rp.pongs).toContain(KEEPALIVE_PING_VALUE);
    const info = await waitForStatus(q.qmp, 'completed', 10_000);
    expect(info.status).toBe('completed');
    const file = fs.readFileSync(q.ramPath!);
    expect(Buffer.compare(atStop!, file)).toBe(0);
    expect(Buffer.compare(Buffer.from(g.blocks[0]!.bytes), file)).toBe(0);
    const qi = src.queryMigrate();
    expect(qi.downtime).toBe(Math.round(sw!.downtimeMs));
    expect(qi.ram!['postcopy-bytes']).toBeGreaterThan(sw!.discards.pages * 4096 * 0.5);
    expect(qi.ram!['postcopy-requests']).toBe(0);
    console.log(
      `postcopy → QEMU: downtime ${sw!.downtimeMs.toFixed(2)} ms, ${sw!.discards.ranges} discard ranges / ${sw!.discards.pages} pages, ` +
        `package ${sw!.packageBytes} B, precopy ${qi.ram!['precopy-bytes']} B, postcopy ${qi.ram!['postcopy-bytes']} B, total ${qi['total-time']} ms`,
    );
  });

  it('QEMU faults (pmemsave of missing pages) are REQ_PAGES_ID/REQ_PAGES served ahead of a slow background scan', async () => {
    const { q, port } = await qemuDestination();
    const g = randomGuest(22);
    const src = new MigrationSource(g, {
      capabilities: { postcopyRam: true },
      parameters: { maxBandwidth: 64 * MiB, maxPostcopyBandwidth: 4 * MiB },
    });
    const switched = new Promise<void>((r) => src.once('switchover', () => r()));
    const run = src.migrate(await connect(port), { machineName: 'none', devices });
    await new Promise((r) => setTimeout(r, 100));
    src.startPostcopy();
    await switched;
    // LISTEN registers userfaultfd while QEMU parses the package: wait for PONG 3
    while (!src.returnPath!.pongs.includes(3)) await new Promise((r) => setTimeout(r, 5));
    const ram = g.blocks[0]!.bytes;
    const latencies: number[] = [];
    // 4 MiB/s would need ~10 s to reach these; 3 pages (one request each), then a 4-page range
    for (const [addr, size] of [[60 * MiB, 4096], [47 * MiB + 8192, 4096], [63 * MiB, 4096], [40 * MiB, 16384]] as const) {
      const out = `${q.dir}/pm-${addr}.bin`;
      const t0 = performance.now();
      await q.qmp.execute('pmemsave', { val: addr, size, filename: out });
      latencies.push(performance.now() - t0);
      expect(Buffer.compare(fs.readFileSync(out), Buffer.from(ram.subarray(addr, addr + size)))).toBe(0);
    }
    const requests = src.ramStats()['postcopy-requests'];
    // one per single page; the 4-page range needs 1..4 (locality may send its next pages before they fault)
    expect(requests).toBeGreaterThanOrEqual(4);
    expect(requests).toBeLessThanOrEqual(7);
    src.setParameters({ maxPostcopyBandwidth: 0 });
    expect(await run).toBe('completed');
    await waitForStatus(q.qmp, 'completed', 10_000);
    expect(Buffer.compare(Buffer.from(ram), fs.readFileSync(q.ramPath!))).toBe(0);
    expect(Math.max(...latencies)).toBeLessThan(1000);
    console.log(`QEMU faults: ${requests} requests, pmemsave latencies ${latencies.map((l) => l.toFixed(1)).join(', ')} ms`);
  });

  it('unthrottled postcopy: QEMU faults served in a few ms, the source never blocks its event loop long', async () => {
    const { q, port } = await qemuDestination();
    const g = randomGuest(23);
    fillRandom(g.blocks[0]!.bytes, 23);
    const src = new MigrationSource(g, { capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 64 * MiB } });
    const switched = new Promise<void>((r) => src.once('switchover', () => r()));
    const run = src.migrate(await connect(port), { machineName: 'none', devices });
    await new Promise((r) => setTimeout(r, 100));
    src.startPostcopy();
    await switched;
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    while (!src.returnPath!.pongs.includes(3)) await new Promise((r) => setTimeout(r, 1));
    const ram = g.blocks[0]!.bytes;
    const latencies: number[] = [];
    for (let k = 0; k < 12 && src.status === 'postcopy-active' && (src.ramStats().remaining ?? 0) > 16 * MiB; k++) {
      const addr = (63 - k * 2) * MiB + 4096 * k;
      const out = `${q.dir}/u-${k}.bin`;
      const t0 = performance.now();
      await q.qmp.execute('pmemsave', { val: addr, size: 4096, filename: out });
      latencies.push(performance.now() - t0);
      expect(Buffer.compare(fs.readFileSync(out), Buffer.from(ram.subarray(addr, addr + 4096)))).toBe(0);
    }
    expect(await run).toBe('completed');
    h.disable();
    await waitForStatus(q.qmp, 'completed', 10_000);
    expect(Buffer.compare(Buffer.from(ram), fs.readFileSync(q.ramPath!))).toBe(0);
    const gap = h.max / 1e6;
    latencies.sort((x, y) => x - y);
    console.log(`unthrottled: ${latencies.length} faults, pmemsave p50 ${latencies[latencies.length >> 1]?.toFixed(1)} max ${latencies.at(-1)?.toFixed(1)} ms; source event-loop max gap ${gap.toFixed(1)} ms`);
    expect(latencies.length).toBeGreaterThan(2);
    // Loose bounds: this machine's 2 CPUs are shared (QEMU, other test files); typical figures
    // alone are p50 5-12 ms and gaps 6-16 ms (precopy's 8 ms yield period shows ~30 ms gaps).
    expect(latencies[latencies.length >> 1]!).toBeLessThan(60);
    expect(gap).toBeLessThan(100);
  });

  it('postcopy-ram on but never started: ADVISE at the start, then plain precopy completion (EOF, vmdesc) is accepted', async () => {
    const { q, port } = await qemuDestination();
    const g = randomGuest(24);
    const src = new MigrationSource(g, { capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 1e12 } });
    let switched = false;
    src.on('switchover', () => (switched = true));
    expect(await src.migrate(await connect(port), { machineName: 'none', devices })).toBe('completed');
    expect(switched).toBe(false);
    expect(src.returnPath!.shutValue).toBe(0);
    expect(src.returnPath!.pongs).toEqual([1]);
    await waitForStatus(q.qmp, 'completed', 10_000);
    expect(Buffer.compare(Buffer.from(g.blocks[0]!.bytes), fs.readFileSync(q.ramPath!))).toBe(0);
    expect(g.stopped).toBe(true);
    expect(() => src.startPostcopy()).not.toThrow(); // harmless once ended
  });
});
