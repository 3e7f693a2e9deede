/**
 * Real QEMU 7.2 → FaultProxy → real QEMU 7.2 with the test guest: the proxy
 * decodes a live precopy (item counts vs QEMU's own statistics) and a live
 * postcopy, cuts it (kill, reset) on the 3rd REQ_PAGES, and relays the
 * recovery; the migration completes with the guest's memory consistent.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkGuestMemory, DEFAULT_GUEST_PARAMS, type GuestParams } from '../guest/check.js';
import { qemuAvailable, QEMU_BINARY, queryMigrate, setCapabilities, startGuestVm, waitMigrate, type GuestVm } from '../guest/vm.js';
import { FaultProxy, type ProxyCut } from '../../src/proxy/proxy.js';
import type { ProxyItem } from '../../src/proxy/decoder.js';
import { parseCutOn } from '../../src/proxy/cut.js';
import { readRecordFile } from '../../src/proxy/record.js';

const haveQemu = qemuAvailable();
if (!haveQemu) console.warn(`SKIP test/interop/proxy-qemu.test.ts: ${QEMU_BINARY} not found (install qemu-system-x86)`);

const PARAMS: GuestParams = { ...DEFAULT_GUEST_PARAMS, report: 4 };
const vms: GuestVm[] = [];
const proxies: FaultProxy[] = [];
const start = async (opts: Parameters<typeof startGuestVm>[0]): Promise<GuestVm> => {
  const vm = await startGuestVm(opts);
  vms.push(vm);
  return vm;
};
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
  await Promise.all(vms.splice(0).map((vm) => vm.destroy()));
});

function collect(p: FaultProxy): Array<ProxyItem & { conn: number }> {
  const items: Array<ProxyItem & { conn: number }> = [];
  p.on('item', (i, conn) => items.push({ ...i, conn }));
  return items;
}
const count = (items: Array<ProxyItem & { conn: number }>, conn: number, dir: string, kind: string): number =>
  items.filter((i) => i.conn === conn && i.dir === dir && i.kind === kind).length;

describe.skipIf(!haveQemu)('QEMU 7.2 → proxy → QEMU 7.2', () => {
  it('precopy of the running test guest: decoded ZERO/PAGE records match query-migrate duplicate/normal', async () => {
    const src = await start({ params: PARAMS });
    const dsock = join(src.dir, 'dst.sock');
    const dst = await start({ params: PARAMS, incoming: `unix:${dsock}`, paused: true });
    const proxy = new FaultProxy({ listen: `unix:${join(src.dir, 'proxy.sock')}`, target: `unix:${dsock}`, record: join(src.dir, 'rec.mpk') });
    proxies.push(proxy);
    await proxy.listen();
    const items = collect(proxy);
    await src.waitSerial(() => src.lastReportedPass() >= 4, 10_000);
    // Converge at once: 30 s downtime budget, no bandwidth cap.
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1_000_000_000, 'downtime-limit': 30_000 });
    await src.qmp.execute('migrate', { uri: proxy.uri });
    await waitMigrate(src, (i) => i.status === 'completed', 60_000, 'source completed');
    const info = await waitMigrate(src, (i) => (i['total-time'] ?? 0) > 0, 5_000, 'total-time');
    await waitMigrate(dst, (i) => i.status === 'completed', 10_000, 'destination completed');
    const check = checkGuestMemory(dst.readRam(), PARAMS);
    expect(check.ok, check.detail).toBe(true);
    const t = Date.now();
    while (!items.some((i) => i.kind === 'VMDESCRIPTION') && Date.now() - t < 5000) await new Promise((r) => setTimeout(r, 50));
    const q = proxy.query();
    expect(q.decodeErrors).toEqual([]);
    const ram = info.ram as unknown as { duplicate: number; normal: number; transferred: number };
    const zero = q.items.main['ZERO'] ?? 0;
    const normal = q.items.main['PAGE'] ?? 0;
    console.log(`precopy via proxy: ZERO ${zero} / duplicate ${ram.duplicate}; PAGE ${normal} / normal ${ram.normal}; ` +
      `main ${q.bytes.main} bytes / transferred ${ram.transferred}; FULL ${q.items.main['FULL']}`);
    expect(zero).toBe(ram.duplicate);
    expect(normal).toBe(ram.normal);
    expect(q.items.main['HEADER']).toBe(1);
    expect(q.items.main['FULL']).toBeGreaterThan(10);
    expect(q.items.main['EOF']).toBe(1);
    expect(q.items.rp['SHUT']).toBe(undefined); // no return path without postcopy-ram/return-path
    // The record file holds the same items.
    await proxy.close();
    const recs = readRecordFile(join(src.dir, 'rec.mpk')).filter((r) => r.dir === 'main');
    expect(recs.filter((r) => r.kind === 'PAGE').length).toBe(normal);
  }, 120_000);

  it.each(['kill', 'reset', 'blackhole'] as const)(
    'postcopy, cut (%s) on the 3rd REQ_PAGES, both QEMUs pause, recovery through the proxy completes; memory consistent',
    async (mode) => {
      const params: GuestParams = { ...PARAMS, pattern: 'rand' };
      const src = await start({ params });
      const dsock = join(src.dir, 'dst.sock');
      const dst = await start({ params, incoming: `unix:${dsock}` });
      const proxy = new FaultProxy({
        listen: `unix:${join(src.dir, 'proxy.sock')}`,
        target: `unix:${dsock}`,
        cuts: [{ trigger: parseCutOn('rp:REQ_PAGES:3'), mode }],
      });
      proxies.push(proxy);
      await proxy.listen();
      const items = collect(proxy);
      const cuts: ProxyCut[] = [];
      proxy.on('cut', (c) => cuts.push(c));
      await src.waitSerial(() => src.lastReportedPass() >= 4, 10_000);
      await setCapabilities(src, { 'postcopy-ram': true });
      await setCapabilities(dst, { 'postcopy-ram': true });
      await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 30_000_000, 'downtime-limit': 1, 'max-postcopy-bandwidth': 4096 });
      await src.qmp.execute('migrate', { uri: proxy.uri });
      await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 2, 50_000, 'one pass');
      await src.qmp.execute('migrate-start-postcopy');
      if (mode === 'blackhole') {
        // SPEC §13: nobody notices a black-holed link; both sides need migrate-pause.
        const t = Date.now();
        while (cuts.length === 0 && Date.now() - t < 20_000) await new Promise((r) => setTimeout(r, 50));
        await new Promise((r) => setTimeout(r, 2000));
        expect((await queryMigrate(src)).status).toBe('postcopy-active');
        expect((await queryMigrate(dst)).status).toBe('postcopy-active');
        await src.qmp.execute('migrate-pause');
        await dst.qmp.execute('migrate-pause');
      }
      await waitMigrate(dst, (i) => i.status === 'postcopy-paused', 20_000, 'destination postcopy-paused');
      await waitMigrate(src, (i) => i.status === 'postcopy-paused', 20_000, 'source postcopy-paused');
      expect(cuts).toHaveLength(1);
      expect(cuts[0]!.item?.kind).toBe('REQ_PAGES');
      expect(cuts[0]!.late).toBe(0);

      // Recovery on the same destination path: the proxy's target stays valid.
      await dst.qmp.execute('migrate-recover', { uri: `unix:${dsock}` });
      await src.qmp.execute('migrate', { uri: proxy.uri, resume: true });
      await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
      await waitMigrate(src, (i) => i.status === 'completed', 60_000, 'source completed after recovery');
      await waitMigrate(dst, (i) => i.status === 'completed', 10_000, 'destination completed');
      const passLines = (t: string): number => t.match(/^pass \d+$/gm)?.length ?? 0;
      await dst.waitSerial((t) => passLines(t) >= 3, 15_000);
      await dst.qmp.execute('stop');
      const check = checkGuestMemory(dst.readRam(), params);
      expect(check.ok, check.detail).toBe(true);
      const info = await queryMigrate(src);

      // What the proxy saw on connection 1: the package, PONGs 1-4, page requests.
      const c1 = items.filter((i) => i.conn === 1);
      const pkgInner = c1.filter((i) => i.fields['packaged']).map((i) => i.kind);
      expect(pkgInner[0]).toBe('POSTCOPY_LISTEN');
      expect(pkgInner.slice(-2)).toEqual(['PING', 'POSTCOPY_RUN']);
      expect(pkgInner.filter((k) => k === 'FULL').length).toBeGreaterThan(10);
      // The split covers the whole blob: RUN is its last item and ends where the blob ends.
      const pkg = c1.find((i) => i.kind === 'PACKAGED')!;
      const inner = c1.filter((i) => i.fields['packaged']);
      expect(inner[0]!.at).toBe(pkg.end);
      expect(inner[inner.length - 1]!.end).toBe(pkg.end + (pkg.fields['length'] as number));
      const idstrs = inner.filter((i) => i.kind === 'FULL').map((i) => `${i.fields['idstr']}/${i.fields['instanceId']}`);
      expect(new Set(idstrs).size).toBe(idstrs.length);
      const pongs = c1.filter((i) => i.dir === 'rp' && i.kind === 'PONG').map((i) => i.fields['value']);
      expect([...pongs].sort()).toEqual([1, 2, 3, 4]);
      expect(count(items, 1, 'rp', 'REQ_PAGES_ID')).toBeGreaterThanOrEqual(1);
      expect(count(items, 1, 'rp', 'REQ_PAGES')).toBe(3);
      // Connection 2, the 7.2 recovery channel: no header, bitmaps, resume.
      const c2 = items.filter((i) => i.conn === 2);
      expect(c2[0]!.kind).toBe('RECV_BITMAP');
      expect(count(items, 2, 'main', 'HEADER')).toBe(0);
      const blocks = count(items, 2, 'main', 'RECV_BITMAP');
      expect(blocks).toBeGreaterThanOrEqual(2);
      expect(count(items, 2, 'rp', 'RECV_BITMAP')).toBe(blocks);
      expect(count(items, 2, 'rp', 'RECV_BITMAP_DATA')).toBe(blocks);
      expect(count(items, 2, 'main', 'POSTCOPY_RESUME')).toBe(1);
      expect(count(items, 2, 'rp', 'RESUME_ACK')).toBe(1);
      expect(count(items, 2, 'main', 'EOF')).toBe(1);
      expect(count(items, 2, 'rp', 'SHUT')).toBe(1);
      // The guest RAM block is named after its memory backend ('mem'): the largest bitmap.
      const bitmaps = c2.filter((i) => i.kind === 'RECV_BITMAP_DATA');
      const ram = bitmaps.reduce((a, b) => ((b.fields['size'] as number) > (a.fields['size'] as number) ? b : a));
      expect(ram.fields['blockName']).toBe('mem');
      expect(ram.fields['size']).toBe((128 << 20) / 4096 / 8);
      // Pages the destination already had: most of RAM, not all of it (the cut left some in flight).
      expect(ram.fields['setBits']).toBeGreaterThan(0);
      expect(ram.fields['setBits']).toBeLessThan((128 << 20) / 4096);
      const q = proxy.query();
      expect(q.decodeErrors).toEqual([]);
      console.log(
        `postcopy ${mode} cut: conn1 main ${q.connections[0]!.bytes.main} B, REQ_PAGES_ID ${count(items, 1, 'rp', 'REQ_PAGES_ID')}; ` +
          `recovery: ${blocks} bitmaps (${bitmaps.map((b) => b.fields['blockName']).join(' ')}), mem ${ram.fields['setBits']} pages received of ${(ram.fields['size'] as number) * 8}; ` +
          `conn2 REQ_PAGES(_ID) ${count(items, 2, 'rp', 'REQ_PAGES') + count(items, 2, 'rp', 'REQ_PAGES_ID')}, ` +
          `postcopy-requests ${info.ram?.['postcopy-requests']}; ${check.detail}`,
      );
    },
    180_000,
  );

  it('cut in the middle of the PACKAGED blob: the QEMU destination fails and exits, the source pauses', async () => {
    const params: GuestParams = { ...PARAMS, pattern: 'rand' };
    const src = await start({ params });
    const dsock = join(src.dir, 'dst.sock');
    const dst = await start({ params, incoming: `unix:${dsock}` });
    const proxy = new FaultProxy({ listen: `unix:${join(src.dir, 'proxy.sock')}`, target: `unix:${dsock}`, cuts: [{ trigger: parseCutOn('in-package'), mode: 'kill' }] });
    proxies.push(proxy);
    await proxy.listen();
    const items = collect(proxy);
    const cuts: ProxyCut[] = [];
    proxy.on('cut', (c) => cuts.push(c));
    await src.waitSerial(() => src.lastReportedPass() >= 4, 10_000);
    await setCapabilities(src, { 'postcopy-ram': true });
    await setCapabilities(dst, { 'postcopy-ram': true });
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 30_000_000, 'downtime-limit': 1 });
    await src.qmp.execute('migrate', { uri: proxy.uri });
    await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 2, 50_000, 'one pass');
    await src.qmp.execute('migrate-start-postcopy');
    const exited = new Promise<number | null>((r) => dst.process.once('exit', (code) => r(code)));
    const code = await exited;
    const pkg = items.find((i) => i.kind === 'PACKAGED')!;
    expect(cuts[0]!.relayed.main).toBe(pkg.end + Math.floor((pkg.fields['length'] as number) / 2));
    expect(cuts[0]!.late).toBe(0);
    expect(items.some((i) => i.kind === 'POSTCOPY_LISTEN')).toBe(true);
    // Before RUNNING every load error is fatal for a QEMU destination (SPEC §6.3).
    expect(code).toBe(1);
    const half = Math.floor((pkg.fields['length'] as number) / 2);
    expect(dst.stderr()).toContain(`CMD_PACKAGED: Buffer receive fail ret=${half} length=${pkg.fields['length']}`);
    const st = await waitMigrate(src, (i) => i.status !== 'postcopy-active', 20_000, 'source leaves postcopy-active').catch((e: Error) => ({ status: e.message }));
    console.log(`in-package cut: destination exit ${code}; source ${JSON.stringify(st.status)}; destination stderr: ${dst.stderr().trim().split('\n').slice(-2).join(' | ')}`);
    expect(st.status).toBe('postcopy-paused');
  }, 120_000);
});
