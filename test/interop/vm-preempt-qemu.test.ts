/**
 * postcopy-preempt between `postcopy vm` and the real qemu-system-x86_64 7.2
 * (-M none, RAM in a memory-backend-file), both directions, relayed by
 * FaultProxy so that each connection's bytes can be counted:
 *  - QEMU → vm --incoming (read workload faulting through QEMU): QEMU opens
 *    the second connection, our destination takes it as the preempt channel
 *    and places the requested pages from it; completed, RAM equal to QEMU's
 *    file. Once more with the main connection reset mid-postcopy: both pause,
 *    vm migrate-recover + QEMU migrate resume=true (QEMU opens two new
 *    connections; ours waits for both before the handshake), completed.
 *  - vm → QEMU -incoming (QEMU reads pages with pmemsave): we open the second
 *    connection, QEMU waits for it before loading, our source serves QEMU's
 *    requests on it; completed, QEMU's RAM file equal to ours.
 * The capability texts are checked against QEMU's own replies.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FaultProxy } from '../../src/proxy/proxy.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from './harness/index.js';
import { peersCleanedAfterEach } from './harness/peers.js';
import { listeningPort, startVm, waitStatus, type Digest, type VmProcess } from '../vm/helpers.js';
import { faulted, sleep, type WorkloadInfo } from '../vm/postcopy-helpers.js';

const MiB = 1 << 20;
const TP = 4096;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const { qemus, vms, proxies } = peersCleanedAfterEach();

type Info = Record<string, unknown> & { status?: string; ram?: Record<string, number> };
const CAPS = ['events', 'postcopy-ram', 'postcopy-preempt'];
const caps = (names: string[], state = true) => ({ capabilities: names.map((capability) => ({ capability, state })) });
const preemptPages = (i: Info): number => i['x-postcopy-preempt-pages'] as number;

describe.skipIf(!hasQemu)(`postcopy-preempt: postcopy vm ⇄ QEMU 7.2 -M none ${qemuSkipReason}`, () => {
  it('capability rules: the same refusals and texts as QEMU', async () => {
    const q = await startQemu({ machine: 'none', memory: '16M' });
    qemus.push(q);
    const v = await startVm(['--ram', '16M', '-S']);
    vms.push(v);
    const steps: Array<{ capabilities: Array<{ capability: string; state: boolean }> }> = [
      caps(['postcopy-preempt']),
      { capabilities: [...caps(['postcopy-ram', 'postcopy-preempt']).capabilities, { capability: 'compress', state: true }] },
      caps(['postcopy-ram', 'postcopy-preempt']),
      caps(['postcopy-ram'], false),
      caps(['postcopy-preempt', 'postcopy-ram'], false),
    ];
    const replies: string[][] = [];
    for (const s of steps) {
      const qe = await q.qmp.execute('migrate-set-capabilities', s).then(() => 'ok', (e: Error) => e.message);
      const ve = await v.qmp.execute('migrate-set-capabilities', s).then(() => 'ok', (e: Error) => e.message);
      replies.push([qe, ve]);
    }
    expect(replies.map(([qe]) => qe)).toEqual([
      'Postcopy preempt requires postcopy-ram',
      'Postcopy preempt not compatible with compress',
      'ok',
      'Postcopy preempt requires postcopy-ram',
      'ok',
    ]);
    for (const [qe, ve] of replies) expect(ve).toBe(qe);
  });

  it('exec: outgoing fails from setup without error-desc and the same text on stderr; exec: incoming waits (QEMU alike)', async () => {
    const q = await startQemu({ machine: 'none', memory: '16M' });
    qemus.push(q);
    const v = await startVm(['--ram', '16M', '-S']);
    vms.push(v);
    const outcome = async (c: QemuProcess['qmp'] | VmProcess['qmp'], dir: string): Promise<Info> => {
      await c.execute('migrate-set-capabilities', caps(CAPS));
      await c.execute('migrate', { uri: `exec:cat > ${join(dir, 'out.bin')}` });
      return waitStatus(c, ['failed']);
    };
    const qi = await outcome(q.qmp, q.dir);
    const vi = await outcome(v.qmp, v.dir);
    expect(qi).toEqual({ status: 'failed' });
    expect(vi).toEqual(qi);
    const text = 'Postcopy preempt is not supported as current migration stream does not support multi-channels.';
    expect(q.stderr()).toContain(text);
    expect(v.stderr()).toContain(text);

    // a precopy stream in a file, loaded with exec: by destinations with preempt on: both wait for a second channel
    await q.qmp.execute('migrate-set-capabilities', caps(['postcopy-preempt', 'postcopy-ram'], false));
    const file = join(q.dir, 'stream.bin');
    await q.qmp.execute('migrate', { uri: `exec:cat > ${file}` });
    await waitForStatus(q.qmp, 'completed');
    const qd = await startQemu({ machine: 'none', memory: '16M', incoming: 'defer' });
    qemus.push(qd);
    const vd = await startVm(['--ram', '16M', '--incoming', 'defer']);
    vms.push(vd);
    for (const c of [qd.qmp, vd.qmp]) {
      await c.execute('migrate-set-capabilities', caps(CAPS));
      await c.execute('migrate-incoming', { uri: `exec:cat ${file}` });
    }
    await sleep(1000);
    for (const c of [qd.qmp, vd.qmp]) {
      expect(await c.execute('query-migrate')).toEqual({});
      expect(await c.execute('query-status')).toMatchObject({ status: 'inmigrate' });
    }
  });

  it.each(['plain', 'reset cut'] as const)('QEMU → vm --incoming (%s): requested pages on the second connection, completed, RAM equal', async (mode) => {
    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: false });
    qemus.push(q);
    const v = await startVm(['--machine', 'none', '--ram', '64M', '--incoming', 'tcp:127.0.0.1:0', '--workload', 'mode=read,pattern=rand,rate=max']);
    vms.push(v);
    for (const c of [q.qmp, v.qmp]) await c.execute('migrate-set-capabilities', caps(CAPS));
    const direct = `tcp:127.0.0.1:${await listeningPort(v.qmp)}`;
    const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: direct });
    proxies.push(proxy);
    // the proxy decodes the preempt connections too: raw page records, then QEMU's EOS
    const preemptItems: Array<[number, string]> = [];
    proxy.on('item', (it: { kind: string; fields: Record<string, unknown> }, conn: number) => {
      if (it.fields['preempt'] === true) preemptItems.push([conn, it.kind]);
    });
    await proxy.listen();
    await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
    await q.qmp.execute('migrate', { uri: proxy.uri });
    await waitStatus(v.qmp, ['active']);
    // QEMU opened the second connection; ours started loading only with both
    expect(proxy.query().connections.map((c) => c.conn)).toEqual([1, 2]);
    await sleep(300);
    await q.qmp.execute('migrate-start-postcopy');
    await waitStatus(v.qmp, ['postcopy-active', 'completed']);
    await faulted(v, 10);
    let before = 0;
    if (mode === 'reset cut') {
      proxy.cut('reset', 1);
      await waitStatus(q.qmp, ['postcopy-paused'], 15_000);
      await waitStatus(v.qmp, ['postcopy-paused'], 15_000);
      before = preemptPages(await v.qmp.execute<Info>('query-migrate'));
      await v.qmp.execute('migrate-recover', { uri: direct });
      await q.qmp.execute('migrate', { uri: proxy.uri, resume: true });
      await waitStatus(v.qmp, ['postcopy-active', 'completed'], 15_000);
      // QEMU opened two new connections for the recovery
      expect(proxy.query().connections.map((c) => c.conn)).toEqual([1, 2, 3, 4]);
      const w = await v.qmp.execute<WorkloadInfo>('x-query-workload');
      await faulted(v, w.faults + 5);
    }
    await q.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    const qi = await waitForStatus(q.qmp, 'completed', 30_000);
    const d = await waitStatus(v.qmp, ['completed']);
    expect((await v.qmp.execute<Digest>('x-ram-digest')).blocks).toEqual([{ idstr: 'ram', usedLength: 64 * MiB, sha256: sha(fs.readFileSync(q.ramPath!)) }]);
    const w = await v.qmp.execute<WorkloadInfo>('x-query-workload');
    const pages = preemptPages(d);
    expect(pages).toBeGreaterThan(0);
    expect(qi.ram!['postcopy-requests']).toBeGreaterThan(0);
    const conns = proxy.query().connections;
    const preemptConns = mode === 'plain' ? [conns[1]!] : [conns[1]!, conns[3]!];
    // the preempt connections carry no return path and at least the pages placed from them
    for (const c of preemptConns) expect(c.bytes.rp).toBe(0);
    const preemptIds = preemptConns.map((c) => c.conn);
    expect(preemptItems.every(([conn]) => preemptIds.includes(conn))).toBe(true);
    expect(preemptItems.filter(([, kind]) => kind === 'PAGE' || kind === 'ZERO').length).toBeGreaterThanOrEqual(pages);
    expect(preemptItems.at(-1)).toEqual([preemptIds.at(-1), 'EOS']);
    expect(preemptConns.reduce((n, c) => n + c.bytes.main, 0)).toBeGreaterThanOrEqual(pages * TP);
    if (mode === 'reset cut') expect(pages).toBeGreaterThan(before);
    const lat = d['x-postcopy-fault-latency'] as Record<string, number>;
    console.log(
      `QEMU → vm preempt (${mode}): QEMU postcopy-requests ${qi.ram!['postcopy-requests']}, pages placed from preempt ${pages} (${before} before the cut), ` +
        `workload faults ${w.faults}, blocked ${w['blocked-ms']} ms (max ${w['max-blocked-ms']}), fault latency p50 ${lat['p50-us']} µs p99 ${lat['p99-us']} µs`,
    );
  }, 90_000);

  it('vm → QEMU -incoming: we open both connections, the faults QEMU makes are served on the second one, completed, RAM equal', async () => {
    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'zero', paused: false, incoming: 'defer' });
    qemus.push(q);
    const v = await startVm(['--machine', 'none', '--ram', '64M', '--workload', 'pattern=rand,rate=max,bytes=64']);
    vms.push(v);
    for (const c of [q.qmp, v.qmp]) await c.execute('migrate-set-capabilities', caps(CAPS));
    await q.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: `tcp:127.0.0.1:${await listeningPort(q.qmp)}` });
    proxies.push(proxy);
    await proxy.listen();
    for (let i = 0; i < 400 && (await v.qmp.execute<{ visits: number }>('x-query-workload')).visits < 50_000; i++) await sleep(25);
    // precopy cannot converge (1 ms downtime); a slow background scan after the switch
    await v.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'downtime-limit': 1, 'max-postcopy-bandwidth': 4 * MiB });
    await v.qmp.execute('migrate', { uri: proxy.uri });
    await waitStatus(v.qmp, ['active']);
    await waitStatus(q.qmp, ['active']);
    expect(proxy.query().connections.map((c) => c.conn)).toEqual([1, 2]);
    await sleep(500);
    await v.qmp.execute('migrate-start-postcopy');
    await waitStatus(q.qmp, ['postcopy-active']);
    // QEMU reads scattered pages: the ones it has not received fault to our source
    const pagesInRam = (64 * MiB) / TP;
    const peek = join(q.dir, 'peek.bin');
    for (let i = 0; i < 30; i++) await q.qmp.execute('pmemsave', { val: ((7 + i * 7919) % pagesInRam) * TP, size: TP, filename: peek });
    const during = await v.qmp.execute<Info>('query-migrate');
    await v.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    const s = (await waitStatus(v.qmp, ['completed'], 30_000)) as Info;
    await waitForStatus(q.qmp, 'completed', 30_000);
    expect((await v.qmp.execute<Digest>('x-ram-digest')).blocks).toEqual([{ idstr: 'ram', usedLength: 64 * MiB, sha256: sha(fs.readFileSync(q.ramPath!)) }]);
    expect(preemptPages(during)).toBeGreaterThan(0);
    expect(s.ram!['postcopy-requests']).toBeGreaterThan(0);
    const pre = proxy.query().connections[1]!;
    expect(pre.bytes.rp).toBe(0);
    expect(pre.bytes.main).toBeGreaterThanOrEqual(preemptPages(s) * TP);
    console.log(`vm → QEMU preempt: requests ${s.ram!['postcopy-requests']}, pages on the preempt channel ${preemptPages(s)}, preempt connection ${pre.bytes.main} bytes`);
  }, 90_000);
});
