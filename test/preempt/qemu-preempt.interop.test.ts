/**
 * The postcopy-preempt channel against real QEMU 7.2 (-M none, 64 MiB RAM,
 * postcopy-ram + postcopy-preempt on QEMU's side):
 *  - QEMU source → our PreemptDestination: QEMU opens the second connection,
 *    serves our page requests on it (raw page records), ends it with EOS;
 *    the migration completes with RAM equal to QEMU's file.
 *  - our PreemptSource → QEMU destination: QEMU (which waits for both
 *    connections) faults pages (pmemsave of missing pages); we serve them on
 *    the preempt channel — from the main thread with plain guest RAM, from
 *    the urgent worker with shared RAM; QEMU completes with our RAM.
 */
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { PreemptDestination } from '../../src/preempt/destination.js';
import { PreemptSource } from '../../src/preempt/source.js';
import { nativeOs } from '../../src/native.js';
import { encodeGlobalState } from '../../src/destination/destination.js';
import { hasQemu, qemuSkipReason, sleep, startQemu, waitForStatus, type QemuProcess } from '../interop/harness/index.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';

const MiB = 1 << 20;
const TP = 4096;
const procs: QemuProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

const caps = (names: string[]) => ({ capabilities: names.map((capability) => ({ capability, state: true })) });

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
        const s = net.connect({ port, host: '127.0.0.1', noDelay: true }, () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (i > 100) throw e;
      await sleep(50);
    }
  }
}

describe.skipIf(!hasQemu)(`postcopy-preempt with QEMU 7.2 ${qemuSkipReason}`, () => {
  it('QEMU source → our destination: requested pages arrive on the second connection, EOS ends it, RAM equal', async () => {
    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: true });
    procs.push(q);
    const file = fs.readFileSync(q.ramPath!);
    const server = net.createServer({ noDelay: true });
    const conns: net.Socket[] = [];
    const both = new Promise<void>((r) =>
      server.on('connection', (c) => {
        conns.push(c);
        if (conns.length === 2) r();
      }),
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    await q.qmp.execute('migrate-set-capabilities', caps(['postcopy-ram', 'postcopy-preempt']));
    await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 << 20, 'max-postcopy-bandwidth': 4 << 20 });
    await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    await both;
    server.close();
    const dst = new PreemptDestination({ machineName: 'none', adopt: true, postcopyRam: true });
    // The first connection is the main channel, the second the preempt channel.
    const preempt = dst.attachPreempt(conns[1]!).then(() => 'eos', (e: unknown) => `error: ${(e as Error).message}`);
    const done = dst.load(conns[0]!);
    await sleep(200);
    await q.qmp.execute('migrate-start-postcopy');
    await once(dst, 'postcopyRun');
    let x = 777;
    let reads = 0;
    let bad = 0;
    const pages = (64 << 20) / TP;
    while (dst.status === 'postcopy-active' && reads < 200) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const p = (x >>> 8) % pages;
      const v = await dst.read('ram', p * TP, TP);
      if (Buffer.compare(Buffer.from(v.buffer, v.byteOffset, TP), file.subarray(p * TP, (p + 1) * TP)) !== 0) bad++;
      reads++;
    }
    await q.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    expect(await done).toBe('completed');
    expect(dst.error).toBeUndefined();
    const info = await waitForStatus(q.qmp, 'completed');
    expect(await preempt).toBe('eos');
    expect(bad).toBe(0);
    const st = dst.faultStats();
    expect(st.requests).toBeGreaterThan(20);
    // QEMU sent (nearly) every requested page on the preempt channel.
    expect(dst.preemptPages).toBeGreaterThan(st.requests / 2);
    expect(info.ram!['postcopy-requests']).toBeGreaterThanOrEqual(st.requests);
    expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), file)).toBe(0);
    console.log(`QEMU preempt → us: ${st.requests} requests, ${dst.preemptPages} pages on the preempt channel, p50 ${st.p50Us} µs p99 ${st.p99Us} µs`);
  }, 60_000);

  it.each(['plain', 'shared'] as const)('our source (%s guest RAM) → QEMU destination: QEMU faults are served on the preempt channel, QEMU completes with our RAM', async (memory) => {
    const port = await freePort();
    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'zero', incoming: 'defer' });
    procs.push(q);
    await q.qmp.execute('migrate-set-capabilities', caps(['postcopy-ram', 'postcopy-preempt']));
    await q.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
    // shared RAM: the requests are served by the source's urgent worker (preempt/urgent/)
    const g = new TestGuest([{ idstr: 'ram', size: 64 * MiB }], { shared: memory === 'shared' });
    fillRandom(g.blocks[0]!.bytes, 31);
    const src = new PreemptSource(g, { capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 64 * MiB, maxPostcopyBandwidth: 4 * MiB } });
    const main = await connect(port);
    src.setPreemptChannel(await connect(port));
    const switched = new Promise<void>((r) => src.once('switchover', () => r()));
    const devices = [{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState('running') }];
    const run = src.migrate(main, { machineName: 'none', devices });
    await sleep(100);
    src.startPostcopy();
    await switched;
    while (!src.returnPath!.pongs.includes(3)) await sleep(5);
    const ram = g.blocks[0]!.bytes;
    for (const addr of [60 * MiB, 47 * MiB + 8192, 63 * MiB, 50 * MiB + 4096 * 7]) {
      const out = `${q.dir}/pm-${addr}.bin`;
      await q.qmp.execute('pmemsave', { val: addr, size: 4096, filename: out });
      expect(Buffer.compare(fs.readFileSync(out), Buffer.from(ram.subarray(addr, addr + 4096)))).toBe(0);
    }
    expect(src.ramStats()['postcopy-requests']).toBeGreaterThanOrEqual(4);
    expect(src.preemptPages).toBeGreaterThanOrEqual(4);
    if (memory === 'shared' && nativeOs()) expect(src.urgentStats!.requests).toBe(src.ramStats()['postcopy-requests']);
    else expect(src.urgentStats).toBeUndefined();
    src.setParameters({ maxPostcopyBandwidth: 0 });
    expect(await run).toBe('completed');
    await waitForStatus(q.qmp, 'completed', 10_000);
    expect(Buffer.compare(Buffer.from(ram), fs.readFileSync(q.ramPath!))).toBe(0);
  }, 60_000);
});
