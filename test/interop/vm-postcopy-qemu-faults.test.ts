/**
 * The postcopy fault path of `postcopy vm` against the real
 * qemu-system-x86_64 7.2 as the source (-M none 64M random RAM; our vm with
 * local RAM `--ram 64M`, so its read workload runs from POSTCOPY_RUN on and
 * faults every missing page through QEMU), with FaultProxy cutting the link on
 * our 3rd REQ_PAGES: both pause, the request QEMU never answered is re-sent
 * after RESUME_ACK (first with the block name, SPEC §6.4), the migration
 * completes with our RAM equal to QEMU's RAM file.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { ProxyItem } from '../../src/proxy/decoder.js';
import { parseCutOn } from '../../src/proxy/cut.js';
import { FaultProxy, type ProxyCut } from '../../src/proxy/proxy.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus } from './harness/index.js';
import { peersCleanedAfterEach } from './harness/peers.js';
import { listeningPort, startVm, waitStatus, type Digest } from '../vm/helpers.js';

const MiB = 1 << 20;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const { qemus, vms, proxies } = peersCleanedAfterEach();

interface WorkloadInfo {
  visits: number;
  faults: number;
  'blocked-ms': number;
  'max-blocked-ms': number;
}
const isRequest = (i: ProxyItem): boolean => i.dir === 'rp' && (i.kind === 'REQ_PAGES' || i.kind === 'REQ_PAGES_ID');

describe.skipIf(!hasQemu)(`QEMU 7.2 -M none → postcopy vm --ram 64M, read workload faulting through QEMU ${qemuSkipReason}`, () => {
  it.each(['kill', 'reset'] as const)('cut (%s) on our 3rd REQ_PAGES: both paused, the unanswered request re-sent after RESUME_ACK, completes, RAM equal', async (mode) => {
    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: false });
    qemus.push(q);
    const v = await startVm(['--machine', 'none', '--ram', '64M', '--incoming', 'tcp:127.0.0.1:0', '--workload', 'mode=read,pattern=rand,rate=max']);
    vms.push(v);
    for (const c of [q.qmp, v.qmp]) {
      await c.execute('migrate-set-capabilities', { capabilities: ['postcopy-ram', 'events'].map((capability) => ({ capability, state: true })) });
    }
    const direct = `tcp:127.0.0.1:${await listeningPort(v.qmp)}`;
    const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: direct, cuts: [{ trigger: parseCutOn('rp:REQ_PAGES:3'), mode }] });
    proxies.push(proxy);
    await proxy.listen();
    const items: Array<ProxyItem & { conn: number }> = [];
    const cuts: ProxyCut[] = [];
    proxy.on('item', (i, conn) => items.push({ ...i, conn }));
    // QEMU's own share of each fault: our request passing the proxy → the page passing back
    const askedAt = new Map<string, number>();
    const served: number[] = [];
    proxy.on('item', (i) => {
      if (isRequest(i)) askedAt.set(String(i.fields['start']), performance.now());
      const t = i.dir === 'main' && i.kind === 'PAGE' ? askedAt.get(String(i.fields['offset'])) : undefined;
      if (t !== undefined) {
        served.push(performance.now() - t);
        askedAt.delete(String(i.fields['offset']));
      }
    });
    proxy.on('cut', (c) => cuts.push(c));

    await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
    const t0 = performance.now();
    await q.qmp.execute('migrate', { uri: proxy.uri });
    await waitStatus(q.qmp, ['active']);
    await sleep(500);
    await q.qmp.execute('migrate-start-postcopy');
    await waitStatus(q.qmp, ['postcopy-paused'], 15_000);
    await waitStatus(v.qmp, ['postcopy-paused'], 15_000);
    const tPaused = performance.now() - t0;
    expect(cuts).toHaveLength(1);
    expect(cuts[0]!.item?.kind).toBe('REQ_PAGES');
    expect(cuts[0]!.late).toBe(0);
    // our reader waits for its page; it neither fails nor advances
    const w1 = await v.qmp.execute<WorkloadInfo>('x-query-workload');
    await sleep(300);
    const w2 = await v.qmp.execute<WorkloadInfo>('x-query-workload');
    expect(w2.visits).toBe(w1.visits);
    expect(w2.faults).toBeGreaterThanOrEqual(3);

    await v.qmp.execute('migrate-recover', { uri: direct });
    await q.qmp.execute('migrate', { uri: proxy.uri, resume: true });
    await waitStatus(q.qmp, ['postcopy-active', 'completed'], 15_000);
    const tRecovered = performance.now() - t0;
    await sleep(1000); // faults served over the new link, ahead of the 4 MiB/s background scan
    await q.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    const qi = await waitForStatus(q.qmp, 'completed', 30_000);
    const d = await waitStatus(v.qmp, ['completed']);
    const tDone = performance.now() - t0;
    const w3 = await v.qmp.execute<WorkloadInfo>('x-query-workload');

    expect((await v.qmp.execute<Digest>('x-ram-digest')).blocks).toEqual([{ idstr: 'ram', usedLength: 64 * MiB, sha256: sha(fs.readFileSync(q.ramPath!)) }]);
    expect(w3.visits).toBeGreaterThan(w2.visits);
    // every request we sent (both connections) is one QEMU counted
    const sent = items.filter(isRequest);
    expect(sent.length).toBeGreaterThan(3);
    expect(qi.ram!['postcopy-requests']).toBe(sent.length);
    // the first request of each connection names its block
    const c1 = sent.filter((i) => i.conn === 1);
    const c2 = items.filter((i) => i.conn === 2);
    expect(c1.map((i) => i.kind).slice(0, 3)).toEqual(['REQ_PAGES_ID', 'REQ_PAGES', 'REQ_PAGES']);
    const ack = c2.findIndex((i) => i.kind === 'RESUME_ACK');
    expect(ack).toBeGreaterThan(0);
    const resent = c2.slice(ack + 1).filter(isRequest);
    expect(resent[0]?.kind).toBe('REQ_PAGES_ID');
    expect(resent[0]?.fields['blockName']).toBe('ram');
    // the request the cut left unanswered (our single reader waits on exactly that page) goes first
    expect(resent[0]?.fields['start']).toBe(cuts[0]!.item!.fields['start']);
    expect(proxy.query().decodeErrors).toEqual([]);
    const lat = d['x-postcopy-fault-latency'] as Record<string, number>;
    expect(lat.count).toBeGreaterThan(0);
    expect(lat['p99-us']).toBeGreaterThanOrEqual(lat['p50-us']);
    // How much of a fault's latency is QEMU's (most: 7.2 serves a request at its next 100 ms
    // rate-limit window, QEMU→QEMU alike) is printed, not asserted: the proxy's request → page times
    // and our faults are not the same set (a page can arrive in the background first) and both move
    // with the machine's load.
    served.sort((a, b) => a - b);
    const qemuP50 = served[Math.floor(served.length / 2)]!;
    expect(served.length).toBeGreaterThan(3);
    console.log(
      `QEMU -M none → vm --ram, ${mode} cut on REQ_PAGES 3: paused ${tPaused.toFixed(0)} ms, recovered ${tRecovered.toFixed(0)} ms, done ${tDone.toFixed(0)} ms; ` +
        `requests ${c1.length} + ${sent.length - c1.length} (QEMU postcopy-requests ${qi.ram!['postcopy-requests']}), workload faults ${w3.faults}, ` +
        `blocked ${w3['blocked-ms']} ms (max ${w3['max-blocked-ms']}), fault latency p50 ${lat['p50-us']} µs p99 ${lat['p99-us']} µs max ${lat['max-us']} µs, ` +
        `of which QEMU (request → page at the proxy) p50 ${qemuP50.toFixed(1)} ms`,
    );
  }, 60_000);
});
