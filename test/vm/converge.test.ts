/**
 * Issue 3 §5: a heavy workload that does not converge without XBZRLE or
 * auto-converge, and does with them (postcopy vm → postcopy vm). The
 * destination is started with -S, so its RAM must equal the source's at stop
 * time; a FaultProxy between the two decodes every item and is the
 * independent witness the source's statistics are checked against. The last
 * test runs the same witness between two real QEMU 7.2 (test guest) to pin
 * down QEMU's own relations, ram.transferred in particular.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultProxy } from '../../src/proxy/proxy.js';
import type { ProxyItem } from '../../src/proxy/decoder.js';
import { DEFAULT_GUEST_PARAMS, diffPages, type GuestParams } from '../guest/check.js';
import { qemuAvailable, startGuestVm, waitMigrate, type GuestVm } from '../guest/vm.js';
import { listeningPort, startVm, waitStatus, type Digest, type VmProcess } from './helpers.js';
import { qemuRamTransferred } from '../../src/proxy/stats.js';

const MiB = 1 << 20;
const PAGE = 4096;
const RAM = '32M';
/** The guest writes at random places of a 16 MiB working set, 30000 times a second. */
const WSS = '16M';
const RATE = 30000;
const WSS_PAGES = (16 * MiB) / PAGE;
/** 32 MiB/s sends the 4096-page working set in ~0.5 s; the guest re-dirties ~97% of it meanwhile. */
const BANDWIDTH = 32 * MiB;
const DOWNTIME_MS = 50;

const procs: VmProcess[] = [];
const proxies: FaultProxy[] = [];
const guests: GuestVm[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.close();
  for (const g of guests.splice(0)) await g.destroy();
  for (const p of procs.splice(0)) await p.cleanup();
});
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Info = Record<string, unknown> & { status?: string; ram?: Record<string, number>; 'xbzrle-cache'?: Record<string, number> };

/** A source with the workload and an -S destination, both with the events capability. */
async function pair(bytes: number): Promise<{ src: VmProcess; dst: VmProcess; port: number }> {
  const [src, dst] = await Promise.all([
    startVm(['--machine', 'none', '--ram', RAM, '--workload', `pattern=rand,rate=${RATE},bytes=${bytes},wss=${WSS}`]),
    startVm(['--machine', 'none', '--ram', RAM, '--incoming', 'defer', '-S']),
  ]);
  procs.push(src, dst);
  for (const q of [src.qmp, dst.qmp]) {
    await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  }
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': BANDWIDTH, 'downtime-limit': DOWNTIME_MS });
  await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  // Let the worker start and touch the working set first (else the first pass finds zero pages and converges).
  for (let i = 0; i < 200; i++) {
    const w = await src.qmp.execute<{ visits: number }>('x-query-workload');
    if (w.visits >= 3 * WSS_PAGES) break;
    await sleep(25);
  }
  return { src, dst, port: await listeningPort(dst.qmp) };
}

/** A decoding relay in front of the destination; collects every main-stream item. */
async function witness(port: number): Promise<{ proxy: FaultProxy; items: ProxyItem[] }> {
  const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: `tcp:127.0.0.1:${port}` });
  await proxy.listen();
  proxies.push(proxy);
  const items: ProxyItem[] = [];
  proxy.on('item', (it) => {
    if (it.dir === 'main') items.push(it);
  });
  return { proxy, items };
}

/** Polls query-migrate until it leaves the running states; returns every sample. */
async function follow(src: VmProcess, timeoutMs: number): Promise<{ samples: Info[]; final: Info; ms: number }> {
  const t0 = performance.now();
  const samples: Info[] = [];
  for (;;) {
    const info = await src.qmp.execute<Info>('query-migrate');
    samples.push(info);
    if (info.status !== 'active' && info.status !== 'setup') return { samples, final: info, ms: performance.now() - t0 };
    if (performance.now() - t0 > timeoutMs) throw new Error(`did not converge in ${timeoutMs} ms: ${JSON.stringify(info)}`);
    await sleep(100);
  }
}

const count = (items: ProxyItem[], kind: string): number => items.reduce((n, i) => n + (i.kind === kind ? 1 : 0), 0);
const passes = (v: VmProcess): number => v.events.filter((e) => e.event === 'MIGRATION_PASS').length;

/** Completed: RAM equal at stop time (the -S destination stays paused), and the statistics against the wire. */
async function checkCompleted(src: VmProcess, dst: VmProcess, proxy: FaultProxy, items: ProxyItem[], final: Info): Promise<void> {
  expect(final.status).toBe('completed');
  await waitStatus(dst.qmp, ['completed']);
  expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate', running: false });
  // -S destination: the incoming globalstate "running" does not start it (no autostart)
  expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'paused', running: false });
  const a = await src.qmp.execute<Digest>('x-ram-digest');
  const b = await dst.qmp.execute<Digest>('x-ram-digest');
  expect(a.blocks[0]!.usedLength).toBe(32 * MiB);
  expect(b).toEqual(a);

  // The proxy has relayed (and decoded) everything once the destination completed.
  for (let i = 0; i < 100 && !items.some((x) => x.kind === 'VMDESCRIPTION'); i++) await sleep(20);
  const st = proxy.query();
  expect(st.decodeErrors).toEqual([]);
  expect(st.connections).toHaveLength(1);
  const ram = final.ram!;
  // ram.transferred counts what QEMU 7.2 counts — the RAM records plus 8 per PART (qemuRamTransferred,
  // proven against the real binary below) — recomputed here from what the proxy decoded on the wire;
  // the setup record, section headers, device state and vmdesc make the wire total larger.
  expect(ram.transferred).toBe(qemuRamTransferred(items));
  expect(ram.transferred).toBeLessThan(st.bytes.main);
  expect(ram['precopy-bytes'] + ram['downtime-bytes']).toBe(ram.transferred);
  // normal = PAGE records (XBZRLE overflows are sent as PAGE and counted there too), duplicate = ZERO records.
  expect(ram.normal).toBe(count(items, 'PAGE'));
  expect(ram['normal-bytes']).toBe(ram.normal * PAGE);
  expect(ram.duplicate).toBe(count(items, 'ZERO'));
  expect(ram.skipped).toBe(0);
  // Every page of RAM went at least once (first pass), as PAGE, ZERO or XBZRLE.
  const sent = new Set(items.filter((x) => x.kind === 'PAGE' || x.kind === 'ZERO' || x.kind === 'XBZRLE').map((x) => x.fields['offset']));
  expect(sent.size).toBe((32 * MiB) / PAGE);
  // Passes: one MIGRATION_PASS per bitmap sync, the last one (in the stop-and-copy) included.
  expect(passes(src)).toBe(ram['dirty-sync-count']);
  expect(count(items, 'PART')).toBeGreaterThanOrEqual(ram['dirty-sync-count'] - 1);
  // The destination reports only its status (SPEC §8.4): no statistics of its own to compare.
  const dInfo = await dst.qmp.execute<Info>('query-migrate');
  expect(dInfo.status).toBe('completed');
  expect(dInfo.ram).toBeUndefined();
}

describe('convergence under a heavy workload (postcopy vm → postcopy vm, through a decoding proxy)', () => {
  it('baseline: 64-byte writes all over a 16 MiB working set do not converge at 32 MiB/s, 50 ms; cancel', async () => {
    const { src, dst, port } = await pair(64);
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const t0 = performance.now();
    let info: Info = {};
    let maxRemaining = 0;
    while (performance.now() - t0 < 20_000) {
      info = await src.qmp.execute<Info>('query-migrate');
      expect(info.status).toMatch(/^(setup|active)$/);
      if ((info.ram?.['dirty-sync-count'] ?? 0) >= 2) maxRemaining = Math.max(maxRemaining, info.ram!.remaining);
      if ((info.ram?.['dirty-sync-count'] ?? 0) >= 5 && performance.now() - t0 > 3000) break;
      await sleep(100);
    }
    const ram = info.ram!;
    console.log(`baseline: ${Math.round(performance.now() - t0)} ms, passes ${ram['dirty-sync-count']}, peak remaining ${maxRemaining}, transferred ${ram.transferred}, expected-downtime ${String(info['expected-downtime'])}`);
    expect(info.status).toBe('active');
    expect(ram['dirty-sync-count']).toBeGreaterThanOrEqual(5);
    // each pass starts far above the threshold (bandwidth × downtime-limit = 1.6 MiB): the guest re-dirties
    // most of the working set while one pass drains it (remaining is sampled anywhere in a pass, so use the peak)
    expect(maxRemaining).toBeGreaterThan(8 * MiB);
    await src.qmp.execute('migrate_cancel');
    await waitStatus(src.qmp, ['cancelled']);
    expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    const w1 = await src.qmp.execute<{ visits: number }>('x-query-workload');
    await sleep(200);
    const w2 = await src.qmp.execute<{ visits: number }>('x-query-workload');
    expect(w2.visits).toBeGreaterThan(w1.visits);
    void dst;
  }, 30_000);

  it('XBZRLE: the same workload converges; RAM equal at stop time; xbzrle-cache and ram statistics match the wire', async () => {
    const { src, dst, port } = await pair(64);
    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] });
    await src.qmp.execute('migrate-set-parameters', { 'xbzrle-cache-size': 32 * MiB });
    const { proxy, items } = await witness(port);
    await src.qmp.execute('migrate', { uri: proxy.uri });
    const { samples, final, ms } = await follow(src, 20_000);
    await checkCompleted(src, dst, proxy, items, final);
    const ram = final.ram!;
    const x = final['xbzrle-cache']!;
    const recs = items.filter((i) => i.kind === 'XBZRLE');
    const recBytes = recs.reduce((n, i) => n + (i.end - i.at - 8), 0);
    console.log(
      `xbzrle: ${Math.round(ms)} ms, passes ${ram['dirty-sync-count']}, transferred ${ram.transferred}, normal ${ram.normal}, duplicate ${ram.duplicate}, ` +
        `xbzrle ${JSON.stringify(x)}, records ${recs.length} (${recBytes} bytes − 8 each), samples ${samples.length}`,
    );
    expect(x['cache-size']).toBe(32 * MiB);
    expect(recs.length).toBeGreaterThan(0);
    // bytes grows by (record size − 8) per XBZRLE record and by 4096 per overflow (sent as PAGE)
    expect(x.bytes).toBe(recBytes + x.overflow * PAGE);
    // pages counts every cache hit: XBZRLE records, overflows, and unchanged pages (nothing sent)
    expect(x.pages).toBeGreaterThanOrEqual(recs.length + x.overflow);
    // a delta of length 0 sends nothing, so every record carries data
    expect(recs.every((r) => (r.fields['len'] as number) > 0)).toBe(true);
    // XBZRLE starts only after the first complete pass: the first record follows a PAGE/ZERO of every page
    const firstX = items.indexOf(recs[0]!);
    const before = new Set(items.slice(0, firstX).filter((i) => i.kind === 'PAGE' || i.kind === 'ZERO').map((i) => i.fields['offset']));
    expect(before.size).toBe((32 * MiB) / PAGE);
    // misses: each page of the working set enters the cache once (first pass after XBZRLE is on) — at most all RAM pages
    expect(x['cache-miss']).toBeGreaterThan(0);
    expect(x['cache-miss']).toBeLessThanOrEqual((32 * MiB) / PAGE);
  }, 40_000);

  it('auto-converge: full-page writes converge once the guest is throttled; RAM equal; ram statistics match the wire', async () => {
    const { src, dst, port } = await pair(4096);
    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'auto-converge', state: true }] });
    await src.qmp.execute('migrate-set-parameters', { 'cpu-throttle-initial': 30, 'cpu-throttle-increment': 20 });
    const { proxy, items } = await witness(port);
    await src.qmp.execute('migrate', { uri: proxy.uri });
    const { samples, final, ms } = await follow(src, 30_000);
    const active = samples.filter((s) => s.status === 'active');
    const throttles = active.map((s) => (s['cpu-throttle-percentage'] as number | undefined) ?? 0);
    console.log(`auto-converge: ${Math.round(ms)} ms, passes ${final.ram?.['dirty-sync-count']}, throttle ${[...new Set(throttles)].join('→')}, transferred ${final.ram?.transferred}`);
    await checkCompleted(src, dst, proxy, items, final);
    expect(final['xbzrle-cache']).toBeUndefined();
    expect(count(items, 'XBZRLE')).toBe(0);
    // cpu-throttle-initial, then + cpu-throttle-increment per trigger (capped by max-cpu-throttle 99). Unthrottled the
    // guest writes ~29000 full pages/s on a quiet host against 8192 pages/s of bandwidth, so 30% is usually not
    // enough and it rises (30→50→70 seen); on a loaded host the guest itself runs slower and 30% can suffice — how
    // far it climbs depends on the host, that it converged only once throttled does not.
    for (const t of throttles) expect([0, 30, 50, 70, 90, 99]).toContain(t);
    expect(throttles.at(-1)).toBeGreaterThanOrEqual(30);
    // without the throttle it did not converge: several passes went by unthrottled, still active
    const unthrottled = active.filter((s) => !s['cpu-throttle-percentage']);
    expect(Math.max(...unthrottled.map((s) => s.ram!['dirty-sync-count']))).toBeGreaterThanOrEqual(3);
    // throttle only rises during a migration (30, 50, 70, ...)
    for (let i = 1; i < throttles.length; i++) expect(throttles[i]!).toBeGreaterThanOrEqual(throttles[i - 1]!);
    // the throttle is lifted once the migration is over
    expect((await src.qmp.execute<{ 'cpu-throttle-percentage': number }>('x-query-workload'))['cpu-throttle-percentage']).toBe(0);
  }, 45_000);

  it.skipIf(!qemuAvailable())('real QEMU 7.2 (test guest) → proxy → QEMU -S: the same relations, and transferred = RAM records + 8 per PART', async () => {
    const params: GuestParams = { ...DEFAULT_GUEST_PARAMS, size: 16 * MiB, n: 16, report: 1 };
    const src = await startGuestVm({ params, ramMiB: 64 });
    guests.push(src);
    const dsock = join(src.dir, 'dst.sock');
    const dst = await startGuestVm({ params, ramMiB: 64, incoming: `unix:${dsock}`, paused: true });
    guests.push(dst);
    const proxy = new FaultProxy({ listen: `unix:${join(src.dir, 'proxy.sock')}`, target: `unix:${dsock}` });
    await proxy.listen();
    proxies.push(proxy);
    const items: ProxyItem[] = [];
    proxy.on('item', (it) => {
      if (it.dir === 'main') items.push(it);
    });
    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] });
    // 1 ms downtime: no convergence (threshold 4 pages), so XBZRLE (on from the 2nd pass) gets hits; then let it complete
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB, 'downtime-limit': 1, 'xbzrle-cache-size': 64 * MiB });
    await src.waitSerial(() => src.lastReportedPass() >= 1, 20_000);
    await src.qmp.execute('migrate', { uri: proxy.uri });
    await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 4 || i.status === 'completed' || i.status === 'failed', 30_000, '4 passes');
    await src.qmp.execute('migrate-set-parameters', { 'downtime-limit': 30_000 });
    await waitMigrate(src, (i) => i.status === 'completed' && (i['total-time'] ?? 0) > 0, 30_000, 'completed');
    const info = (await src.qmp.execute('query-migrate')) as Info;
    await waitMigrate(dst, (i) => i.status === 'completed', 10_000, 'destination completed');
    for (let i = 0; i < 100 && !items.some((x) => x.kind === 'VMDESCRIPTION'); i++) await sleep(50);
    const st = proxy.query();
    expect(st.decodeErrors).toEqual([]);
    const ram = info.ram!;
    const x = info['xbzrle-cache']!;
    const recs = items.filter((i) => i.kind === 'XBZRLE');
    const recBytes = recs.reduce((n, i) => n + (i.end - i.at - 8), 0);
    console.log(
      `qemu: passes ${ram['dirty-sync-count']}, transferred ${ram.transferred} (records+8/PART ${qemuRamTransferred(items)}, wire ${st.bytes.main}), ` +
        `normal ${ram.normal}/${count(items, 'PAGE')}, duplicate ${ram.duplicate}/${count(items, 'ZERO')}, xbzrle ${JSON.stringify(x)}, records ${recs.length} (${recBytes})`,
    );
    expect(ram.transferred).toBe(qemuRamTransferred(items));
    expect(ram['precopy-bytes'] + ram['downtime-bytes']).toBe(ram.transferred);
    expect(ram.normal).toBe(count(items, 'PAGE'));
    expect(ram.duplicate).toBe(count(items, 'ZERO'));
    expect(recs.length).toBeGreaterThan(0);
    expect(x.bytes).toBe(recBytes + x.overflow * PAGE);
    expect(x.pages).toBeGreaterThanOrEqual(recs.length + x.overflow);
    // RAM at stop time: the stopped source's RAM file against the paused destination's. Both ends
    // are QEMU and the proxy relays bytes unchanged (test/proxy/relay.test.ts proves that byte for
    // byte), so a difference here is QEMU's: SPEC §13, QEMU 7.2 TCG loses dirty pages written
    // through a cached TLB entry; the guest's invlpg narrows that window without closing it (a
    // full run saw 1 page of 16,384 differ once, inside the working set). A handful of pages is
    // reported as that; more means the stream itself went wrong, and fails.
    const a = src.readRam();
    const b = dst.readRam();
    const diff = diffPages(a, b, 0, a.length);
    const inSet = diffPages(a, b, params.start, params.size);
    const where = `${diff.pages} pages differ (${inSet.pages} in the working set 0x${params.start.toString(16)}+0x${params.size.toString(16)}), first at 0x${diff.firstAddress.toString(16)}`;
    if (diff.pages > 0) console.log(`QEMU → QEMU: ${where} — QEMU 7.2's TCG dirty-page loss (SPEC §13)`);
    expect(diff.pages, where).toBeLessThanOrEqual(4);
  }, 90_000);
});
