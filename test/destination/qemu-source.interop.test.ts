/**
 * Real QEMU 7.2 as the source, our MigrationDestination (adopting) as the
 * destination, over loopback TCP with QEMU's return path on.
 */
import fs from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationDestination } from '../../src/destination/destination.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from '../interop/harness/index.js';

const procs: QemuProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

async function listen(): Promise<{ server: net.Server; port: number; conn: Promise<net.Socket> }> {
  const server = net.createServer();
  const conn = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as net.AddressInfo).port, conn };
}

describe.skipIf(!hasQemu)(`QEMU source → our destination ${qemuSkipReason}`, () => {
  for (const xbzrle of [false, true]) {
    it(`receives -M none 64M random RAM byte for byte${xbzrle ? ' (xbzrle on)' : ''}`, async () => {
      const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: true });
      procs.push(q);
      const { server, port, conn } = await listen();
      const dst = new MigrationDestination({ machineName: 'none', adopt: true, autostart: true });
      await q.qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'return-path', state: true },
          { capability: 'xbzrle', state: xbzrle },
        ],
      });
      await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * 1024 * 1024 * 1024 });
      await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
      const sock = await conn;
      const status = await dst.load(sock);
      server.close();
      expect(dst.error).toBeUndefined();
      expect(status).toBe('completed');
      const info = await waitForStatus(q.qmp, 'completed');
      expect(info.status).toBe('completed');
      // layout adopted from the setup payload
      expect(dst.blocks.map((b) => [b.idstr, b.usedLength])).toEqual([['ram', 64 << 20]]);
      const file = fs.readFileSync(q.ramPath!);
      expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), file)).toBe(0);
      // every page record set its received bit
      const rb = dst.received.get('ram')!;
      expect(rb.every((w) => w === 0xffffffff)).toBe(true);
      // -S source: globalstate says prelaunch; timer kept opaque, delimited via vmdesc
      expect(dst.globalState).toBe('prelaunch');
      expect(dst.runState).toBe('prelaunch');
      expect(dst.devices.map((d) => [d.idstr, d.instanceId, d.versionId, d.payload.length])).toEqual([['timer', 0, 2, 24]]);
      expect(JSON.parse(dst.vmdesc!).devices.map((d: { name: string }) => d.name)).toEqual(['timer', 'globalstate']);
      expect(dst.pings).toEqual([1]);
      const ram = info.ram!;
      expect(ram['normal']).toBe(dst.pageCounts.normal);
    });
  }

  it('receives a -M pc stream: 9 RAM blocks adopted, ~30 device sections split opaquely via the vmdesc', async () => {
    const q = await startQemu({ machine: 'pc', memory: '128M', paused: true, nodefaults: false });
    procs.push(q);
    const { server, port, conn } = await listen();
    const dst = new MigrationDestination({ machineName: 'pc-i440fx-7.2', adopt: true });
    await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
    await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const status = await dst.load(await conn);
    server.close();
    expect(dst.error).toBeUndefined();
    expect(status).toBe('completed');
    expect(dst.blocks[0]).toMatchObject({ idstr: 'pc.ram', usedLength: 128 << 20 });
    expect(dst.blocks.map((b) => b.idstr)).toContain('/rom@etc/acpi/rsdp');
    const vm = JSON.parse(dst.vmdesc!) as { devices: { name: string; instance_id: number }[] };
    // every vmdesc device except globalstate is kept, in order, with its instance id
    expect(dst.devices.map((d) => [d.idstr, d.instanceId])).toEqual(
      vm.devices.filter((d) => d.name !== 'globalstate').map((d) => [d.name, d.instance_id]),
    );
    expect(dst.devices.length).toBeGreaterThan(25);
    expect(dst.devices[0]!.idstr).toBe('timer');
    expect(dst.runState).toBe('prelaunch');
    // QEMU's BIOS/option ROM blocks arrive with their content
    const bios = dst.blocks.find((b) => b.idstr === 'pc.bios')!;
    expect(bios.bytes.some((x) => x !== 0)).toBe(true);
  });

  it('fails with QEMU\'s message on a RAM size mismatch and QEMU sees the failure', async () => {
    const q = await startQemu({ machine: 'none', memory: '64M', paused: true });
    procs.push(q);
    const { server, port, conn } = await listen();
    const dst = new MigrationDestination({
      machineName: 'none',
      blocks: [{ idstr: 'ram', usedLength: 32 << 20, ramAddr: 0, bytes: new Uint8Array(32 << 20) }],
    });
    await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
    await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const status = await dst.load(await conn);
    server.close();
    expect(status).toBe('failed');
    expect(dst.queryMigrate()['error-desc']).toBe('Size mismatch: ram: 0x4000000 != 0x2000000: Invalid argument');
    const info = await waitForStatus(q.qmp, 'failed');
    expect(info.status).toBe('failed');
  });
});
