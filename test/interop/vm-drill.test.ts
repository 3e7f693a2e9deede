/**
 * One drill, four pairs: QEMU→QEMU, QEMU→postcopy vm, postcopy vm→QEMU and
 * postcopy vm→postcopy vm, driven by the same QMP commands. Every pair must
 * end the same way: source `completed` and `postmigrate`, destination
 * `completed` and `running`, the same MIGRATION/STOP/RESUME event sequences,
 * and the destination's RAM equal to the source image byte for byte.
 */
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { QmpClient, QmpEvent } from '../../src/control/qmp-client.js';
import { hasQemu, qemuSkipReason, startQemu, type QemuProcess } from './harness/index.js';
import { listeningPort, startVm, waitStatus, type Digest, type VmProcess } from '../vm/helpers.js';

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Kind = 'qemu' | 'postcopy';
interface Peer {
  qmp: QmpClient;
  events: QmpEvent[];
  ramSha(): Promise<string>;
  cleanup(): Promise<void>;
}

const image = path.join('/tmp', `postcopy-drill-${process.pid}.ram`);
afterAll(() => fs.rmSync(image, { force: true }));

async function peer(kind: Kind, role: 'source' | 'destination'): Promise<Peer> {
  if (kind === 'qemu') {
    const q: QemuProcess = await startQemu({
      machine: 'none',
      memory: `${SIZE / MiB}M`,
      paused: false,
      incoming: role === 'destination' ? 'defer' : undefined,
      ramFill: role === 'source' ? (c, off) => c.set(fs.readFileSync(image).subarray(off, off + c.length)) : 'zero',
    });
    const events: QmpEvent[] = [];
    q.qmp.on('event', (e: QmpEvent) => events.push(e));
    return { qmp: q.qmp, events, ramSha: async () => sha(fs.readFileSync(q.ramPath!)), cleanup: () => q.cleanup() };
  }
  const v: VmProcess = await startVm(
    role === 'source' ? ['--machine', 'none', '--ram', `${SIZE / MiB}M`, '--mem-path', image] : ['--machine', 'none', '--ram', `${SIZE / MiB}M`, '--incoming', 'defer'],
  );
  return {
    qmp: v.qmp,
    events: v.events,
    ramSha: async () => (await v.qmp.execute<Digest>('x-ram-digest')).blocks[0]!.sha256,
    cleanup: () => v.cleanup(),
  };
}

function summary(events: QmpEvent[]): string[] {
  return events
    .filter((e) => e.event !== 'MIGRATION_PASS')
    .map((e) => (e.event === 'MIGRATION' ? `MIGRATION ${(e.data as { status: string }).status}` : e.event));
}

describe.skipIf(!hasQemu)(`the same QMP drill on every pair ${qemuSkipReason}`, () => {
  const results = new Map<string, unknown>();
  const pairs: Array<[Kind, Kind]> = [
    ['qemu', 'qemu'],
    ['qemu', 'postcopy'],
    ['postcopy', 'qemu'],
    ['postcopy', 'postcopy'],
  ];
  for (const [s, d] of pairs) {
    it(`${s} → ${d}`, async () => {
      if (!fs.existsSync(image)) {
        const b = Buffer.alloc(SIZE);
        randomFillSync(b.subarray(0, SIZE / 2));
        fs.writeFileSync(image, b);
      }
      const src = await peer(s, 'source');
      const dst = await peer(d, 'destination');
      try {
        for (const p of [src, dst]) {
          await p.qmp.execute('migrate-set-capabilities', {
            capabilities: [
              { capability: 'events', state: true },
              { capability: 'return-path', state: true },
            ],
          });
        }
        await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 256 * MiB, 'downtime-limit': 300 });
        await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
        const port = await listeningPort(dst.qmp);
        expect(await src.qmp.execute('query-status')).toEqual({ status: 'running', singlestep: false, running: true });
        expect(await dst.qmp.execute('query-status')).toEqual({ status: 'inmigrate', singlestep: false, running: false });
        await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
        const sinfo = await waitStatus(src.qmp, ['completed'], 30_000);
        const dinfo = await waitStatus(dst.qmp, ['completed'], 30_000);
        await sleep(100);
        const outcome = {
          sourceKeys: Object.keys(sinfo).sort(),
          destinationInfo: Object.keys(dinfo).sort(),
          sourceStatus: await src.qmp.execute('query-status'),
          destinationStatus: await dst.qmp.execute('query-status'),
          sourceEvents: summary(src.events),
          destinationEvents: summary(dst.events),
          passes: src.events.some((e) => e.event === 'MIGRATION_PASS'),
        };
        results.set(`${s}→${d}`, outcome);
        expect(await dst.ramSha()).toBe(sha(fs.readFileSync(image)));
        expect(await src.ramSha()).toBe(sha(fs.readFileSync(image)));
        // every pair behaves as QEMU → QEMU did
        const reference = results.get('qemu→qemu');
        expect(reference).toBeDefined();
        expect(outcome).toEqual(reference);
      } finally {
        await src.cleanup();
        await dst.cleanup();
      }
    }, 60_000);
  }
});
