/**
 * The peers a test file starts — QEMU processes, `postcopy vm` processes and
 * FaultProxies — cleaned up after each test: proxies first (they hold both
 * ends of a link), then our VMs, then QEMU.
 */
import { afterEach } from 'vitest';
import type { FaultProxy } from '../../../src/proxy/proxy.js';
import type { VmProcess } from '../../vm/helpers.js';
import type { QemuProcess } from './qemu.js';

export interface TestPeers {
  qemus: QemuProcess[];
  vms: VmProcess[];
  proxies: FaultProxy[];
}

/** Lists to push started peers onto; emptied (and the peers stopped) after each test. */
export function peersCleanedAfterEach(): TestPeers {
  const peers: TestPeers = { qemus: [], vms: [], proxies: [] };
  afterEach(async () => {
    await Promise.all(peers.proxies.splice(0).map((p) => p.close()));
    for (const v of peers.vms.splice(0)) await v.cleanup();
    for (const q of peers.qemus.splice(0)) await q.cleanup();
  });
  return peers;
}
