/**
 * Real QEMU 7.2 as a postcopy source (-M none 64M random RAM), our
 * MigrationDestination (adopting, postcopy-ram on) over loopback TCP: the
 * switchover is triggered early, our fault API reads random pages from RUN
 * on (QEMU serves our REQ_PAGES: its postcopy-requests count them), the
 * migration completes and our RAM equals QEMU's RAM file.
 */
import fs from 'node:fs';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationDestination } from '../../src/destination/destination.js';
import type { FaultRecord } from '../../src/destination/faults.js';
import { listen } from './qemu-helpers.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus, sleep, type QemuProcess } from '../interop/harness/index.js';

const TP = 4096;
const procs: QemuProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

/** Deterministic page picker. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}

describe.skipIf(!hasQemu)(`QEMU postcopy source → our destination ${qemuSkipReason}`, () => {
  it('serves our faults from RUN on, completes, RAM equal, fault latency measured', async () => {
    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: true });
    procs.push(q);
    const file = fs.readFileSync(q.ramPath!);
    const { server, port, conn } = await listen();
    const dst = new MigrationDestination({ machineName: 'none', adopt: true, postcopyRam: true, postcopyBlocktime: true });
    await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
    // slow precopy and slow background postcopy: most pages arrive by request or late
    await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 << 20, 'max-postcopy-bandwidth': 4 << 20 });
    await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const done = dst.load(await conn);
    server.close();
    await sleep(300);
    await q.qmp.execute('migrate-start-postcopy');
    await once(dst, 'postcopyRun');
    expect(dst.status).toBe('postcopy-active');
    const faults: FaultRecord[] = [];
    dst.on('fault', (f: FaultRecord) => faults.push(f));

    const next = rng(12345);
    const pages = (64 << 20) / TP;
    let reads = 0;
    let bad = 0;
    let missingAtRead = 0;
    while (dst.status === 'postcopy-active' && reads < 300) {
      const p = next() % pages;
      if (!dst.isReceived('ram', p * TP)) missingAtRead++;
      const v = await dst.read('ram', p * TP, TP);
      if (Buffer.compare(Buffer.from(v.buffer, v.byteOffset, TP), file.subarray(p * TP, (p + 1) * TP)) !== 0) bad++;
      reads++;
    }
    // then let the background scan finish at full speed (QEMU applies it live)
    await q.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    expect(await done).toBe('completed');
    expect(dst.error).toBeUndefined();
    const info = await waitForStatus(q.qmp, 'completed');
    expect(bad).toBe(0);
    expect(missingAtRead).toBeGreaterThan(10);
    const st = dst.faultStats();
    // every request is one QEMU counted
    expect(faults.length).toBe(st.requests);
    expect(st.requests).toBeGreaterThan(10);
    expect(info.ram!['postcopy-requests']).toBeGreaterThanOrEqual(st.requests);
    expect(faults[0]!.withId).toBe(true);
    expect(faults.slice(1).every((f) => !f.withId && f.idstr === 'ram')).toBe(true);
    // latency: every requested page placed, plausible (µs, well under a second at p50)
    expect(st.count).toBe(st.requests);
    expect(st.p50Us).toBeGreaterThan(10);
    expect(st.p50Us).toBeLessThan(200_000);
    expect(st.p99Us).toBeGreaterThanOrEqual(st.p50Us);
    expect(st.maxUs).toBeGreaterThanOrEqual(st.p99Us);
    const qm = dst.queryMigrate();
    expect(qm['x-postcopy-fault-latency']!.count).toBe(st.count);
    expect(qm['postcopy-blocktime']).toBeGreaterThan(0);
    expect(qm['postcopy-vcpu-blocktime']).toEqual([qm['postcopy-blocktime']]);
    // the whole RAM, byte for byte
    expect(dst.blocks.map((b) => [b.idstr, b.usedLength])).toEqual([['ram', 64 << 20]]);
    expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), file)).toBe(0);
    expect(dst.postcopyState).toBe('end');
    expect(dst.pings.slice(0, 1)).toEqual([1]);
    expect(dst.pings.slice(1).sort()).toEqual([2, 3, 4]);
    expect(dst.devices.map((d) => d.idstr)).toEqual(['timer']);
    console.log(
      `QEMU postcopy → us: ${reads} reads, ${st.requests} requests (QEMU postcopy-requests ${String(info.ram!['postcopy-requests'])}), ` +
        `latency p50 ${st.p50Us} µs p99 ${st.p99Us} µs max ${st.maxUs} µs, blocktime ${qm['postcopy-blocktime']} ms`,
    );
  }, 40_000);
});
