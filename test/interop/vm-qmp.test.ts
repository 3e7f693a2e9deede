/**
 * The same QMP requests to a real QEMU 7.2 (-M none) and to `postcopy vm`
 * in the same state must get the same replies (return values and error
 * texts), except for fields that identify the process (ports).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { QmpClient } from '../../src/control/qmp-client.js';
import { hasQemu, qemuSkipReason, startQemu, type QemuProcess } from './harness/index.js';
import { startVm, type VmProcess } from '../vm/helpers.js';

const qemus: QemuProcess[] = [];
const vms: VmProcess[] = [];
afterEach(async () => {
  for (const p of vms.splice(0)) await p.cleanup();
  for (const q of qemus.splice(0)) await q.cleanup();
});

type Req = [string, Record<string, unknown>?];

async function replies(qmp: QmpClient, reqs: Req[]): Promise<unknown[]> {
  const out: unknown[] = [];
  for (const [cmd, args] of reqs) {
    out.push(
      await qmp.execute(cmd, args).then(
        (r) => JSON.parse(JSON.stringify(r).replace(/"port":"\d+"/g, '"port":"N"')) as unknown,
        (e: Error) => ({ error: e.message }),
      ),
    );
  }
  return out;
}

describe.skipIf(!hasQemu)(`QMP replies equal to QEMU 7.2's ${qemuSkipReason}`, () => {
  it('idle source (-S): status, refusals, configuration queries', async () => {
    const q = await startQemu({ machine: 'none', memory: '16M', paused: true });
    qemus.push(q);
    const v = await startVm(['--machine', 'none', '--ram', '16M', '-S']);
    vms.push(v);
    const reqs: Req[] = [
      ['query-status'],
      ['query-migrate'],
      ['migrate-start-postcopy'],
      ['migrate-pause'],
      ['migrate-recover', { uri: 'tcp:127.0.0.1:1' }],
      ['migrate', { uri: 'tcp:127.0.0.1:1', resume: true }],
      ['migrate', { uri: 'bogus:x' }],
      // QEMU 7.2 has already moved setup → failed when it rejects the protocol
      ['query-migrate'],
      ['migrate', {}],
      ['migrate-continue', { state: 'pre-switchover' }],
      ['migrate-continue', { state: 'nonsense' }],
      ['migrate-incoming', { uri: 'tcp:127.0.0.1:0' }],
      ['migrate_cancel'],
      ['migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] }],
      ['migrate-start-postcopy'],
      // postcopy commands outside postcopy: the state is checked before release-ram
      ['migrate-set-capabilities', { capabilities: [{ capability: 'release-ram', state: true }] }],
      ['migrate', { uri: 'tcp:127.0.0.1:1', resume: true }],
      ['migrate-pause'],
      ['migrate-recover', { uri: 'tcp:127.0.0.1:0' }],
      ['migrate-recover', {}],
      ['query-migrate-capabilities'],
      ['migrate-set-parameters', { 'downtime-limit': 2000001 }],
      ['migrate-set-parameters', { 'max-bandwidth': 1000000, 'xbzrle-cache-size': 1048576 }],
      ['query-migrate-parameters'],
      ['stop'],
      ['query-status'],
      ['cont'],
      ['query-status'],
      ['stop'],
      ['query-status'],
    ];
    expect(await replies(v.qmp, reqs)).toEqual(await replies(q.qmp, reqs));
  });

  it('incoming defer: inmigrate, migrate-incoming once, cont/stop only change autostart', async () => {
    const q = await startQemu({ machine: 'none', memory: '16M', paused: true, incoming: 'defer' });
    qemus.push(q);
    const v = await startVm(['--machine', 'none', '--ram', '16M', '-S', '--incoming', 'defer']);
    vms.push(v);
    const reqs: Req[] = [
      ['query-status'],
      ['query-migrate'],
      ['migrate', { uri: 'tcp:127.0.0.1:1' }],
      ['cont'],
      ['query-status'],
      ['stop'],
      ['migrate-pause'],
      ['migrate-recover', { uri: 'tcp:127.0.0.1:0' }],
      ['migrate-start-postcopy'],
      ['migrate-incoming', { uri: 'tcp:127.0.0.1:0' }],
      ['query-migrate'],
      ['migrate-pause'],
      ['migrate-recover', { uri: 'tcp:127.0.0.1:0' }],
      ['migrate', { uri: 'tcp:127.0.0.1:1', resume: true }],
      ['migrate-incoming', { uri: 'tcp:127.0.0.1:0' }],
      ['migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] }],
      ['query-status'],
    ];
    expect(await replies(v.qmp, reqs)).toEqual(await replies(q.qmp, reqs));
  });
});
