import { afterAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { QmpClient } from '../../../src/control/qmp-client.js';
import { QmpError } from '../../../src/errors.js';
import { captureStream, hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from './index.js';

const started: QemuProcess[] = [];
afterAll(async () => {
  for (const q of started) await q.cleanup();
});

describe.skipIf(!hasQemu)(`interop harness against real QEMU ${qemuSkipReason}`, () => {
  it('starts QEMU paused with file-backed random RAM, captures a stream, cleans up', async () => {
    const vm = await startQemu({ machine: 'none', memory: '2M', ramFill: 'random' });
    started.push(vm);
    const st = await vm.qmp.execute<{ status: string; running: boolean }>('query-status');
    expect(st).toMatchObject({ status: 'prelaunch', running: false });
    expect(fs.statSync(vm.ramPath!).size).toBe(2 << 20);
    const file = await captureStream(vm.qmp, { dir: vm.dir });
    const bytes = fs.readFileSync(file);
    expect(bytes.subarray(0, 8).toString('hex')).toBe('5145564d00000003');
    // 512 random pages: each record carries the 4 KiB page, so the stream is > 2 MiB.
    expect(bytes.length).toBeGreaterThan(2 << 20);
    const info = await waitForStatus(vm.qmp, 'completed');
    expect(info['total-time']).toBeGreaterThan(0);
    expect(info.ram?.['normal']).toBe(512);
    const ramPath = vm.ramPath!;
    const dir = vm.dir;
    await vm.cleanup();
    expect(vm.exitCode()).not.toBe(0);
    expect(fs.existsSync(ramPath)).toBe(false);
    expect(fs.existsSync(dir)).toBe(false);
  });

  it('waitForStatus fails fast with error-desc when the migration fails', async () => {
    const vm = await startQemu({ machine: 'none', memory: '2M' });
    started.push(vm);
    // SPEC §13: migrate to a dead URI returns success; the failure shows in query-migrate.
    await vm.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1' });
    const t0 = Date.now();
    await expect(waitForStatus(vm.qmp, 'completed', 20_000)).rejects.toThrow(/migration failed: .*refused/i);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('QmpClient on real QEMU: MIGRATION events in order, waitEvent, error classes, exec-oob', async () => {
    const vm = await startQemu({ machine: 'none', memory: '2M' });
    started.push(vm);
    const qmp = vm.qmp;
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const seen: string[] = [];
    const iter = (async () => {
      for await (const e of qmp.events()) {
        if (e.event !== 'MIGRATION') continue;
        seen.push(String(e.data['status']));
        if (e.data['status'] === 'completed') break;
      }
    })();
    const done = qmp.waitEvent('MIGRATION', (e) => e.data['status'] === 'completed', 20_000);
    const file = `${vm.dir}/ev.bin`;
    await qmp.execute('migrate', { uri: `exec:cat > ${file}` });
    const ev = await done;
    expect(ev.timestamp.seconds).toBeGreaterThan(0);
    await iter;
    expect(seen).toEqual(['setup', 'active', 'completed']);
    const err = await qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).klass).toBe('CommandNotFound');
    expect((err as QmpError).message).toBe('The command no-such-command has not been found');
    // SPEC §8.1 wording, through exec-oob on a fresh OOB-enabled session.
    await qmp.close();
    const oob = await QmpClient.connect(vm.qmpPath, { enable: ['oob'] });
    const e2 = await oob.execute('migrate-pause', undefined, { oob: true }).catch((e: unknown) => e);
    expect((e2 as QmpError).message).toBe('migrate-pause is currently only supported during postcopy-active state');
    await oob.close();
  });

  it('reports a QEMU that fails to start, with its stderr', async () => {
    await expect(startQemu({ machine: 'no-such-machine' })).rejects.toThrow(/exited with 1[\s\S]*no-such-machine/);
  });

  it('sees QEMU exit through `exited` and QMP close', async () => {
    const vm = await startQemu({ machine: 'none', memory: '2M' });
    started.push(vm);
    await vm.qmp.execute('quit');
    const { code } = await vm.exited;
    expect(code).toBe(0);
    await vm.qmp.closed;
    expect(vm.qmp.isConnected).toBe(false);
  });
});
