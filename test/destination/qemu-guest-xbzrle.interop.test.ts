/**
 * A running guest under QEMU 7.2 (the team's test guest, dirtying memory)
 * migrates with XBZRLE into our adopting destination: our in-place XBZRLE
 * decoding against QEMU's encoder, checked byte for byte against the
 * stopped source's RAM file.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationDestination } from '../../src/destination/destination.js';
import { checkGuestMemory, diffPages, DEFAULT_GUEST_PARAMS, type GuestParams } from '../guest/check.js';
import { qemuAvailable, setCapabilities, startGuestVm, waitMigrate, runState, type GuestVm } from '../guest/vm.js';

const vms: GuestVm[] = [];
afterEach(async () => {
  await Promise.all(vms.splice(0).map((vm) => vm.destroy()));
});

describe.skipIf(!qemuAvailable())('running QEMU guest → our destination (XBZRLE)', () => {
  it('decodes QEMU XBZRLE deltas in place: RAM equal to the stopped source, guest checker passes', async () => {
    const params: GuestParams = { ...DEFAULT_GUEST_PARAMS, report: 4 };
    const src = await startGuestVm({ params });
    vms.push(src);
    await src.waitSerial(() => src.lastReportedPass() >= 4, 15_000);
    const server = net.createServer();
    const conn = new Promise<net.Socket>((r) => server.once('connection', r));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const dst = new MigrationDestination({ machineName: 'pc-i440fx-7.2', adopt: true });
    await setCapabilities(src, { xbzrle: true, 'return-path': true });
    await src.qmp.execute('migrate-set-parameters', { 'xbzrle-cache-size': 32 << 20, 'max-bandwidth': 30_000_000, 'downtime-limit': 1 });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}` });
    const loading = dst.load(await conn);
    await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 3 || i.status === 'completed', 50_000, 'dirty-sync-count >= 3');
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1_000_000_000, 'downtime-limit': 30_000 });
    expect(await loading).toBe('completed');
    server.close();
    const info = await waitMigrate(src, (i) => i.status === 'completed' && (i['total-time'] ?? 0) > 0, 20_000, 'source completed');
    expect(await runState(src)).toBe('postmigrate');
    expect(info['xbzrle-cache']?.pages ?? 0).toBeGreaterThan(0);
    expect(dst.pageCounts.xbzrle).toBeGreaterThan(0);
    // with memory-backend=mem the main RAM block is called after the backend: 'mem'
    const ram = dst.blocks.find((b) => b.idstr === 'mem')!.bytes;
    const a = src.readRam();
    const whole = diffPages(a, ram, 0, a.length);
    expect(whole.pages, `first differing page 0x${whole.firstAddress.toString(16)}`).toBe(0);
    const check = checkGuestMemory(ram, params);
    expect(check.ok, check.detail).toBe(true);
    expect(dst.runState).toBe('running');
    console.log(`QEMU guest → us: xbzrle records ${dst.pageCounts.xbzrle}, normal ${dst.pageCounts.normal}, zero ${dst.pageCounts.zero}; ${check.detail}`);
  }, 90_000);
});
