/**
 * Postcopy pause and recovery of our MigrationSource against a real QEMU 7.2
 * destination, through a FaultProxy: (1) the link is reset while
 * postcopy-active → both sides postcopy-paused, migrate-recover on QEMU, our
 * resume() → both postcopy-active → completed, RAM equal; (2) the link is
 * black-holed → our keepalive pauses us (QEMU notices nothing and needs
 * migrate-pause), then the same recovery; (3) our migrate-pause (QEMU pauses
 * on the channel end, as with a QEMU source). Never cut inside the handshake
 * (SPEC §7.3: a QEMU 7.2 destination crashes).
 */
import fs from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { StatusMachine } from '../../src/control/status.js';
import { encodeGlobalState } from '../../src/destination/destination.js';
import { FaultProxy } from '../../src/proxy/proxy.js';
import type { CutMode } from '../../src/proxy/cut.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from '../interop/harness/index.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';

const MiB = 1 << 20;
const procs: QemuProcess[] = [];
const proxies: FaultProxy[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.close();
  for (const p of procs.splice(0)) await p.cleanup();
});

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
        const s = net.connect(port, '127.0.0.1', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const devices = () => [{ idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState('running') }];

async function drill(mode: CutMode | 'migrate-pause'): Promise<void> {
  const port = await freePort();
  const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'zero', incoming: 'defer' });
  procs.push(q);
  await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
  await q.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
  const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: `tcp:127.0.0.1:${port}`, decode: false });
  proxies.push(proxy);
  await proxy.listen();
  const proxyPort = Number(/:(\d+)$/.exec(proxy.uri)![1]);

  const g = new TestGuest([{ idstr: 'ram', size: 64 * MiB }]);
  fillRandom(g.blocks[0]!.bytes.subarray(0, 56 * MiB), 33);
  const status = new StatusMachine();
  const src = new MigrationSource(g, {
    status,
    capabilities: { postcopyRam: true },
    parameters: { maxBandwidth: 64 * MiB, maxPostcopyBandwidth: 24 * MiB },
    keepaliveIntervalMs: 100,
    keepaliveTimeoutMs: 600,
  });
  const paused: string[] = [];
  src.on('paused', (e: { reason: string }) => paused.push(e.reason));
  const switched = new Promise<void>((r) => src.once('switchover', () => r()));
  const run = src.migrate(await connect(proxyPort), { machineName: 'none', devices });
  await sleep(150);
  src.startPostcopy();
  await switched;
  await sleep(300); // postcopy pages flowing
  expect(src.status).toBe('postcopy-active');
  const cutAt = performance.now();
  if (mode === 'migrate-pause') src.pause();
  else proxy.cut(mode);
  for (let i = 0; i < 300 && src.status !== 'postcopy-paused'; i++) await sleep(10);
  expect(src.status).toBe('postcopy-paused');
  const pausedAfter = performance.now() - cutAt;
  if (mode === 'blackhole') {
    expect(paused[0]).toMatch(/return path silent/);
    expect(pausedAfter).toBeGreaterThan(300);
    // QEMU never notices a black hole: it stays postcopy-active until migrate-pause
    expect((await q.qmp.execute<{ status: string }>('query-migrate')).status).toBe('postcopy-active');
    await q.qmp.execute('migrate-pause');
  }
  await waitForStatus(q.qmp, 'postcopy-paused', 10_000);
  const rport = await freePort();
  await q.qmp.execute('migrate-recover', { uri: `tcp:127.0.0.1:${rport}` });
  await src.resume(await connect(rport));
  expect(src.status).toBe('postcopy-active');
  expect(await run).toBe('completed');
  expect(src.queryMigrate()['error-desc']).toBeUndefined();
  await waitForStatus(q.qmp, 'completed', 10_000);
  expect(status.history).toEqual(['setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed']);
  expect(src.returnPath!.shutValue).toBe(0);
  const file = fs.readFileSync(q.ramPath!);
  expect(Buffer.compare(Buffer.from(g.blocks[0]!.bytes), file)).toBe(0);
  console.log(`${mode}: paused ${pausedAfter.toFixed(0)} ms after the cut (${paused[0]}); total ${src.queryMigrate()['total-time']} ms`);
}

describe.skipIf(!hasQemu)(`postcopy pause + recovery against QEMU 7.2 ${qemuSkipReason}`, () => {
  it('link reset while postcopy-active: both paused, migrate-recover + resume, completed, RAM equal', () => drill('reset'), 30_000);
  it('migrate-pause on our source: QEMU sees the channel end and pauses too; recovery completes', () => drill('migrate-pause'), 30_000);
  it('link black-holed: our keepalive pauses, QEMU needs migrate-pause, then recovery completes', () => drill('blackhole'), 30_000);
});
