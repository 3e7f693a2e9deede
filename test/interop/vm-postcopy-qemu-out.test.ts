/**
 * Postcopy from `postcopy vm --machine none` (a write workload dirtying its
 * RAM) into the real qemu-system-x86_64 7.2 (-M none -incoming defer),
 * relayed and decoded by FaultProxy: QEMU accepts our switchover (discards,
 * the package, RUN), faults pages it reads (pmemsave) through our source,
 * completes with its RAM equal to ours at stop time; and the same with the
 * link cut mid-postcopy and recovered (QEMU migrate-recover, ours
 * migrate resume=true).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MIGRATE_ERRORS } from '../../src/control/migrate-args.js';
import type { CutMode } from '../../src/proxy/cut.js';
import type { ProxyItem } from '../../src/proxy/decoder.js';
import { FaultProxy, type ProxyCut } from '../../src/proxy/proxy.js';
import { hasQemu, qemuSkipReason, startQemu, type QemuProcess } from './harness/index.js';
import { peersCleanedAfterEach } from './harness/peers.js';
import { listeningPort, startVm, waitStatus, type Digest } from '../vm/helpers.js';

const MiB = 1 << 20;
const TP = 4096;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const { qemus, vms, proxies } = peersCleanedAfterEach();

type Info = Record<string, unknown> & { status?: string; ram?: Record<string, number> };
type Items = Array<ProxyItem & { conn: number }>;
const count = (items: Items, conn: number, dir: string, kind: string): number =>
  items.filter((i) => i.conn === conn && i.dir === dir && i.kind === kind).length;

/** MIGRATION statuses of a QMP event log, in order. */
const statuses = (events: Array<{ event: string; data?: unknown }>): string[] =>
  events.filter((e) => e.event === 'MIGRATION').map((e) => (e.data as { status: string }).status);

/** QEMU reads `n` scattered pages of its RAM (pmemsave): pages it has not received fault to our source. */
async function qemuReads(q: QemuProcess, n: number, seed: number): Promise<void> {
  const pages = q.ramSize / TP;
  const file = join(q.dir, 'peek.bin');
  for (let i = 0; i < n; i++) {
    const page = (seed + i * 7919) % pages;
    await q.qmp.execute('pmemsave', { val: page * TP, size: TP, filename: file });
  }
  fs.rmSync(file, { force: true });
}

async function vmToQemu(cut?: CutMode): Promise<void> {
  const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'zero', paused: false, incoming: 'defer' });
  qemus.push(q);
  const qEvents: Array<{ event: string; data?: unknown }> = [];
  q.qmp.on('event', (e: { event: string; data?: unknown }) => qEvents.push(e));
  const v = await startVm(['--machine', 'none', '--ram', '64M', '--workload', 'pattern=rand,rate=max,bytes=64']);
  vms.push(v);
  for (const c of [q.qmp, v.qmp]) {
    await c.execute('migrate-set-capabilities', { capabilities: ['postcopy-ram', 'events'].map((capability) => ({ capability, state: true })) });
  }
  await q.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const qport = await listeningPort(q.qmp);
  const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: `tcp:127.0.0.1:${qport}` });
  proxies.push(proxy);
  await proxy.listen();
  const items: Items = [];
  const cuts: ProxyCut[] = [];
  proxy.on('item', (i, conn) => items.push({ ...i, conn }));
  proxy.on('cut', (c) => cuts.push(c));

  // the workload is under way (its worker may start late on a loaded machine) ...
  for (let i = 0; i < 400 && (await v.qmp.execute<{ visits: number }>('x-query-workload')).visits < 50_000; i++) await sleep(25);
  expect((await v.qmp.execute<{ visits: number }>('x-query-workload')).visits).toBeGreaterThanOrEqual(50_000);
  // ... so precopy cannot converge (1 ms downtime at 32 MiB/s); a slow background scan after the switch
  await v.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB, 'downtime-limit': 1, 'max-postcopy-bandwidth': 4 * MiB });
  const t0 = performance.now();
  await v.qmp.execute('migrate', { uri: proxy.uri });
  await waitStatus(v.qmp, ['active']);
  await sleep(1000);
  await v.qmp.execute('migrate-start-postcopy');
  await waitStatus(v.qmp, ['postcopy-active']);
  // QEMU ran POSTCOPY_RUN: -incoming without -S autostarts, so RUN leaves it running
  for (let i = 0; i < 200 && (await q.qmp.execute<{ status: string }>('query-status')).status !== 'running'; i++) await sleep(25);
  expect(await q.qmp.execute('query-status')).toMatchObject({ status: 'running' });
  expect((await q.qmp.execute<Info>('query-migrate')).status).toBe('postcopy-active');
  const tSwitch = performance.now() - t0;
  // the source stopped at the switchover: its RAM is final from here on
  expect(await v.qmp.execute('query-status')).toMatchObject({ running: false });
  await qemuReads(q, 20, 1);

  let recovery = '';
  const viaProxy = cut === 'kill';
  if (cut) {
    const c = proxy.cut(cut);
    expect(c?.conn).toBe(1);
    const p0 = performance.now();
    await waitStatus(v.qmp, ['postcopy-paused'], 15_000);
    await waitStatus(q.qmp, ['postcopy-paused'], 15_000);
    const tPaused = performance.now() - p0;
    expect(q.exitCode()).toBeUndefined();
    if (viaProxy) {
      // QEMU listens again on its old port (its first listener closed once it had the channel), so
      // the proxy's target stays valid; ours resumes through a second proxy connection.
      await q.qmp.execute('migrate-recover', { uri: `tcp:127.0.0.1:${qport}` });
      await v.qmp.execute('migrate', { uri: proxy.uri, resume: true });
    } else {
      // a new URI: QEMU picks a port and reports it; ours resumes directly
      await q.qmp.execute('migrate-recover', { uri: 'tcp:127.0.0.1:0' });
      const again = await listeningPort(q.qmp);
      expect(again).not.toBe(qport);
      await v.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${again}`, resume: true });
    }
    await waitStatus(v.qmp, ['postcopy-active', 'completed'], 15_000);
    recovery = `${viaProxy ? 'through the proxy' : 'direct, new port'}: paused ${tPaused.toFixed(0)} ms after the cut, recovered ${(performance.now() - p0).toFixed(0)} ms after it; `;
    await qemuReads(q, 20, 2);
  }
  await v.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
  const s = await waitStatus(v.qmp, ['completed', 'failed'], 30_000);
  expect(s.status).toBe('completed');
  const qi = await waitStatus(q.qmp, ['completed', 'failed'], 15_000);
  const tDone = performance.now() - t0;
  expect(qi.status).toBe('completed');
  expect(q.exitCode()).toBeUndefined();
  // QEMU's only complaint: the pause (SPEC §7.1)
  expect(q.stderr()).toBe(cut ? 'qemu-system-x86_64: Detected IO failure for postcopy. Migration paused.\n' : '');

  // ours stays in postmigrate after a postcopy, and refuses another migration as QEMU does
  expect(await v.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate', running: false });
  await expect(v.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1' })).rejects.toThrow(MIGRATE_ERRORS.pausedByPrevious);

  // QEMU's RAM is ours at stop time, byte for byte
  const d = await v.qmp.execute<Digest>('x-ram-digest');
  expect(d.blocks).toEqual([{ idstr: 'ram', usedLength: 64 * MiB, sha256: sha(fs.readFileSync(q.ramPath!)) }]);

  // what QEMU accepted on the first connection: discards, then the package (LISTEN, devices, PING 3, RUN)
  const c1 = items.filter((i) => i.conn === 1);
  const discards = count(items, 1, 'main', 'POSTCOPY_RAM_DISCARD');
  expect(discards).toBeGreaterThan(0);
  const inner = c1.filter((i) => i.fields['packaged']).map((i) => i.kind);
  expect(inner[0]).toBe('POSTCOPY_LISTEN');
  expect(inner.slice(-2)).toEqual(['PING', 'POSTCOPY_RUN']);
  expect(c1.filter((i) => i.dir === 'rp' && i.kind === 'PONG').length).toBeGreaterThanOrEqual(4);
  const requests = c1.filter((i) => i.dir === 'rp' && (i.kind === 'REQ_PAGES' || i.kind === 'REQ_PAGES_ID')).length;
  const ram = s.ram as Record<string, number>;
  expect(requests).toBeGreaterThan(0);
  expect(ram['postcopy-requests']).toBeGreaterThanOrEqual(requests);
  expect(proxy.query().decodeErrors).toEqual([]);
  const qseq = statuses(qEvents).filter((st) => st !== 'setup');
  const vseq = statuses(v.events).filter((st) => st !== 'setup');
  if (cut) {
    expect(cuts).toHaveLength(1);
    expect(qseq).toEqual(['active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed']);
    expect(vseq).toEqual(['active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed']);
    expect(proxy.query().connections.length).toBe(viaProxy ? 2 : 1);
  } else {
    expect([count(items, 1, 'main', 'EOF'), count(items, 1, 'rp', 'SHUT')]).toEqual([1, 1]);
    expect(qseq).toEqual(['active', 'postcopy-active', 'completed']);
    expect(vseq).toEqual(['active', 'postcopy-active', 'completed']);
  }
  if (viaProxy) {
    const n = (dir: string, kind: string): number => count(items, 2, dir, kind);
    expect(n('main', 'HEADER')).toBe(0);
    expect([n('main', 'RECV_BITMAP'), n('rp', 'RECV_BITMAP_DATA'), n('main', 'POSTCOPY_RESUME'), n('rp', 'RESUME_ACK')]).toEqual([1, 1, 1, 1]);
    expect([n('main', 'EOF'), n('rp', 'SHUT')]).toEqual([1, 1]);
    // the cut was mid-postcopy: QEMU had part of RAM, and faulted the rest of its reads over the new link
    const bitmap = items.find((i) => i.conn === 2 && i.kind === 'RECV_BITMAP_DATA')!;
    expect(bitmap.fields['blockName']).toBe('ram');
    expect(bitmap.fields['setBits']).toBeGreaterThan(0);
    expect(bitmap.fields['setBits']).toBeLessThan((64 * MiB) / TP);
    expect(n('rp', 'REQ_PAGES') + n('rp', 'REQ_PAGES_ID')).toBeGreaterThan(0);
    recovery += `QEMU had ${String(bitmap.fields['setBits'])} of ${(64 * MiB) / TP} pages at the cut; `;
  }
  console.log(
    `vm → QEMU postcopy${cut ? ` (${cut} cut)` : ''}: switch ${tSwitch.toFixed(0)} ms, ${recovery}done ${tDone.toFixed(0)} ms; ` +
      `${discards} discard commands, requests conn1 ${requests} conn2 ${count(items, 2, 'rp', 'REQ_PAGES') + count(items, 2, 'rp', 'REQ_PAGES_ID')}, ` +
      `postcopy-requests ${ram['postcopy-requests']}, downtime ${String(s.downtime)} ms, precopy ${ram['precopy-bytes']} B postcopy ${ram['postcopy-bytes']} B`,
  );
}

describe.skipIf(!hasQemu)(`postcopy vm → QEMU 7.2 (-M none 64M), postcopy ${qemuSkipReason}`, () => {
  it('migrate-start-postcopy on ours: QEMU accepts discards and package, faults served, completes, RAM equal', async () => {
    await vmToQemu();
  }, 60_000);

  it.each(['kill', 'reset'] as const)('cut (%s) mid-postcopy: both paused, QEMU migrate-recover, ours resume=true (kill: same URI via the proxy; reset: new URI, direct), completes, RAM equal', async (mode) => {
    await vmToQemu(mode);
  }, 60_000);
});
