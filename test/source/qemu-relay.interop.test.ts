/**
 * QEMU A → our MigrationDestination (adopting) → our MigrationSource →
 * QEMU B: the state we received, device sections replayed opaquely, loads
 * in a real QEMU 7.2 with the same machine type.
 */
import fs from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationDestination, encodeGlobalState } from '../../src/destination/destination.js';
import { MigrationSource } from '../../src/source/source.js';
import type { SourceGuest } from '../../src/engine/ports.js';
import { hasQemu, qemuSkipReason, startQemu, type QemuProcess } from '../interop/harness/index.js';

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

async function connectRetry(port: number): Promise<net.Socket> {
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

async function pollIncoming(q: QemuProcess, want: string): Promise<string | undefined> {
  let st: string | undefined;
  for (let i = 0; i < 300 && st !== want && st !== 'failed'; i++) {
    st = (await q.qmp.execute<{ status?: string }>('query-migrate')).status;
    if (st !== want) await new Promise((r) => setTimeout(r, 20));
  }
  return st;
}

async function relay(machine: string, machineName: string, memory: string, ramFill?: 'random') {
  const a = await startQemu({ machine, memory, paused: true, nodefaults: machine === 'none', ...(ramFill ? { ramFill } : {}) });
  procs.push(a);
  const bPort = await freePort();
  const b = await startQemu({
    machine,
    memory,
    paused: true,
    nodefaults: machine === 'none',
    incoming: `tcp:127.0.0.1:${bPort}`,
    ...(ramFill ? { ramFill: 'zero' as const } : {}),
  });
  procs.push(b);
  // QEMU A → us
  const server = net.createServer();
  const conn = new Promise<net.Socket>((r) => server.once('connection', r));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const dst = new MigrationDestination({ machineName, adopt: true });
  await a.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
  await a.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}` });
  expect(await dst.load(await conn)).toBe('completed');
  server.close();
  // us → QEMU B, replaying the received device sections
  await b.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
  const guest: SourceGuest = { blocks: dst.blocks, syncDirty: () => 0, stop: () => undefined, resume: () => undefined };
  const src = new MigrationSource(guest, { capabilities: { returnPath: true }, parameters: { maxBandwidth: 1e12 } });
  const devices = [
    ...dst.devices.map((d) => ({ idstr: d.idstr, instanceId: d.instanceId, versionId: d.versionId, payload: d.payload })),
    { idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState(dst.globalState ?? 'running') },
  ];
  const status = await src.migrate(await connectRetry(bPort), { machineName, devices });
  expect(src.queryMigrate()['error-desc']).toBeUndefined();
  expect(status).toBe('completed');
  expect(src.returnPath!.shutValue).toBe(0);
  expect(await pollIncoming(b, 'completed')).toBe('completed');
  return { a, b, dst };
}

describe.skipIf(!hasQemu)(`QEMU → us → QEMU relay ${qemuSkipReason}`, () => {
  it('-M none: random RAM arrives in QEMU B byte for byte, run state kept', async () => {
    const { a, b } = await relay('none', 'none', '32M', 'random');
    expect(Buffer.compare(fs.readFileSync(a.ramPath!), fs.readFileSync(b.ramPath!))).toBe(0);
    expect((await b.qmp.execute<{ status: string }>('query-status')).status).toBe('prelaunch');
  });

  it('-M pc: QEMU B accepts every replayed device section', async () => {
    const { b, dst } = await relay('pc', 'pc-i440fx-7.2', '128M');
    expect(dst.devices.length).toBeGreaterThan(25);
    expect((await b.qmp.execute<{ status: string }>('query-status')).status).toBe('prelaunch');
  });
});
