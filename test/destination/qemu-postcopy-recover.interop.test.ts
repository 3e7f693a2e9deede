/**
 * Real QEMU 7.2 postcopy source → FaultProxy → our destination: the link is
 * cut (kill = FIN, reset = RST, or our migrate-pause) while postcopy runs; both sides go
 * postcopy-paused; a fault made while paused stays pending; recovery over a
 * new direct connection (QEMU `migrate {resume:true}`, our `recover()`) brings
 * both back to postcopy-active, the pending fault resolves, and the migration
 * completes with our RAM equal to QEMU's file (no page lost). The cut is never
 * inside the recovery handshake (SPEC §7.3).
 */
import fs from 'node:fs';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationDestination } from '../../src/destination/destination.js';
import type { FaultRecord } from '../../src/destination/faults.js';
import { FaultProxy } from '../../src/proxy/proxy.js';
import { hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from '../interop/harness/index.js';
import { listen } from './qemu-helpers.js';

const TP = 4096;
const PAGES = (64 << 20) / TP;
const procs: QemuProcess[] = [];
const proxies: FaultProxy[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.close();
  for (const p of procs.splice(0)) await p.cleanup();
});

describe.skipIf(!hasQemu)(`QEMU postcopy source, cut and recovered → our destination ${qemuSkipReason}`, () => {
  for (const mode of ['kill', 'reset', 'migrate-pause'] as const) {
    it(`${mode}: both sides pause, recover, faults made while paused resolve, RAM equal`, async () => {
      const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: true });
      procs.push(q);
      const file = fs.readFileSync(q.ramPath!);
      const first = await listen();
      const proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: `tcp:127.0.0.1:${first.port}`, decode: false });
      proxies.push(proxy);
      const uri = await proxy.listen();
      const dst = new MigrationDestination({ machineName: 'none', adopt: true, postcopyRam: true });
      const faults: FaultRecord[] = [];
      dst.on('fault', (f: FaultRecord) => faults.push(f));
      await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
      await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 << 20, 'max-postcopy-bandwidth': 4 << 20 });
      await q.qmp.execute('migrate', { uri });
      const done = dst.load(await first.conn);
      first.server.close();
      await new Promise((r) => setTimeout(r, 200));
      await q.qmp.execute('migrate-start-postcopy');
      await once(dst, 'postcopyRun');

      const check = (p: number, v: Uint8Array): boolean => Buffer.compare(Buffer.from(v.buffer, v.byteOffset, TP), file.subarray(p * TP, (p + 1) * TP)) === 0;
      let bad = 0;
      for (let i = 0; i < 20; i++) {
        const p = (i * 7919 + 13) % PAGES;
        if (!check(p, await dst.read('ram', p * TP, TP))) bad++;
      }
      expect(faults.length).toBeGreaterThan(0);

      // Cut while postcopy runs: both ends pause (never fail).
      const paused = once(dst, 'paused');
      if (mode === 'migrate-pause') {
        dst.pause(); // our migrate-pause: QEMU's source sees the channel shut
        expect(dst.status).toBe('postcopy-paused');
      } else expect(proxy.cut(mode)).toBeDefined();
      await paused;
      expect(dst.status).toBe('postcopy-paused');
      await waitForStatus(q.qmp, 'postcopy-paused', 10_000);

      // Faults while paused: no request, kept.
      const sent = faults.length;
      const missing: number[] = [];
      for (let p = PAGES - 1; missing.length < 3; p -= 97) if (!dst.isReceived('ram', p * TP)) missing.push(p);
      const waits = missing.map((p) => dst.read('ram', p * TP, TP).then((v) => check(p, v)));
      let settled = false;
      void Promise.all(waits).then(() => (settled = true));
      await new Promise((r) => setTimeout(r, 200));
      expect(settled).toBe(false);
      expect(faults.length).toBe(sent);
      expect(dst.outstandingFaults).toBeGreaterThanOrEqual(3);

      // Recovery over a fresh direct connection.
      const second = await listen();
      await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${second.port}`, resume: true });
      await dst.recover(await second.conn);
      second.server.close();
      expect(dst.status).toBe('postcopy-active');
      expect(dst.recvBitmaps).toEqual(['ram']);
      expect((await Promise.all(waits)).every(Boolean)).toBe(true);
      // re-sent after RESUME_ACK, the first naming the block
      const resent = faults.slice(sent);
      expect(resent.length).toBeGreaterThanOrEqual(3);
      expect(resent[0]!.withId).toBe(true);
      expect(resent.slice(1).every((f) => !f.withId)).toBe(true);
      await waitForStatus(q.qmp, ['postcopy-active', 'completed'], 10_000);

      for (let i = 0; i < 20; i++) {
        const p = (i * 104729 + 5) % PAGES;
        if (!check(p, await dst.read('ram', p * TP, TP))) bad++;
      }
      await q.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
      expect(await done).toBe('completed');
      expect(dst.error).toBeUndefined();
      await waitForStatus(q.qmp, 'completed', 10_000);
      expect(bad).toBe(0);
      expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), file)).toBe(0);
    }, 40_000);
  }
});
