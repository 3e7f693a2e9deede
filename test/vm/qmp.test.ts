/** QMP behaviour of a `postcopy vm` process: greeting, run states, events, configuration, state rules. */
import { afterEach, describe, expect, it } from 'vitest';
import { qmpError, startVm, waitStatus, type VmProcess } from './helpers.js';

const procs: VmProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});
async function vm(args: string[]): Promise<VmProcess> {
  const p = await startVm(args);
  procs.push(p);
  return p;
}

describe('postcopy vm over QMP', () => {
  it('greets like QEMU 7.2 and reports run states (-S prelaunch, cont → RESUME, stop → STOP)', async () => {
    const v = await vm(['--machine', 'none', '--ram', '16M', '-S']);
    expect(v.qmp.greeting.QMP.version.qemu).toEqual({ major: 7, minor: 2, micro: 0 });
    expect(v.qmp.greeting.QMP.capabilities).toEqual(['oob']);
    expect(await v.qmp.execute('query-status')).toEqual({ status: 'prelaunch', singlestep: false, running: false });
    // stop in prelaunch changes nothing and sends no event (QEMU's vm_stop only acts on a running VM)
    await v.qmp.execute('stop');
    expect(await v.qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
    await v.qmp.execute('cont');
    expect(await v.qmp.execute('query-status')).toEqual({ status: 'running', singlestep: false, running: true });
    await v.qmp.execute('stop');
    expect(await v.qmp.execute('query-status')).toEqual({ status: 'paused', singlestep: false, running: false });
    await new Promise((r) => setTimeout(r, 50));
    expect(v.events.map((e) => e.event)).toEqual(['RESUME', 'STOP']);
    expect(v.stdout()).toBe('');
  });

  it('round-trips capabilities and parameters, with QEMU texts for refusals', async () => {
    const v = await vm(['--ram', '8M']);
    await v.qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'xbzrle', state: true },
        { capability: 'events', state: true },
      ],
    });
    const caps = await v.qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
    expect(caps).toHaveLength(21);
    expect(caps.filter((c) => c.state).map((c) => c.capability)).toEqual(['xbzrle', 'events']);
    await v.qmp.execute('migrate-set-parameters', { 'downtime-limit': 123, 'xbzrle-cache-size': 1 << 20, 'max-bandwidth': 5 << 20 });
    const p = await v.qmp.execute<Record<string, unknown>>('query-migrate-parameters');
    expect(p['downtime-limit']).toBe(123);
    expect(p['xbzrle-cache-size']).toBe(1 << 20);
    expect(p['max-bandwidth']).toBe(5 << 20);
    expect(await qmpError(v.qmp, 'migrate-set-parameters', { 'xbzrle-cache-size': 5000 })).toBe(
      "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size",
    );
    expect(
      await qmpError(v.qmp, 'migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-preempt', state: true }] }),
    ).toMatch(/postcopy-preempt|Postcopy preempt requires postcopy-ram/);
  });

  it('refuses commands with QEMU 7.2 state-rule errors', async () => {
    const src = await vm(['--ram', '8M']);
    expect(await qmpError(src.qmp, 'migrate-incoming', { uri: 'tcp:127.0.0.1:0' })).toBe("'-incoming' was not specified on the command line");
    expect(await qmpError(src.qmp, 'migrate-start-postcopy')).toBe('Enable postcopy with migrate_set_capability before the start of migration');
    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
    expect(await qmpError(src.qmp, 'migrate-start-postcopy')).toBe('Postcopy must be started after migration has been started');
    expect(await qmpError(src.qmp, 'migrate-pause')).toBe('migrate-pause is currently only supported during postcopy-active state');
    expect(await qmpError(src.qmp, 'migrate', { uri: 'tcp:127.0.0.1:1', resume: true })).toBe('Cannot resume if there is no paused migration');
    expect(await qmpError(src.qmp, 'migrate', { uri: 'bogus:1' })).toBe("Parameter 'uri' expects a valid migration protocol");
    // the rejected protocol left the status in failed, as in QEMU 7.2
    expect(await qmpError(src.qmp, 'migrate-continue', { state: 'pre-switchover' })).toBe('Migration not in expected state: failed');
    expect(await qmpError(src.qmp, 'migrate')).toBe("Parameter 'uri' is missing");
    expect(await qmpError(src.qmp, 'no-such-command')).toBe('The command no-such-command has not been found');

    const dst = await vm(['--ram', '8M', '--incoming', 'defer']);
    expect(await dst.qmp.execute('query-status')).toEqual({ status: 'inmigrate', singlestep: false, running: false });
    expect(await dst.qmp.execute('query-migrate')).toEqual({});
    expect(await qmpError(dst.qmp, 'migrate', { uri: 'tcp:127.0.0.1:1' })).toBe('Guest is waiting for an incoming migration');
    await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const info = await dst.qmp.execute<Record<string, unknown>>('query-migrate');
    expect(info).toEqual({ 'socket-address': [{ port: expect.any(String), ipv4: true, host: '127.0.0.1', type: 'inet' }] });
    expect(await qmpError(dst.qmp, 'migrate-incoming', { uri: 'tcp:127.0.0.1:0' })).toBe('The incoming migration has already been started');
    // cont/stop while inmigrate only change autostart
    await dst.qmp.execute('cont');
    expect(await dst.qmp.execute('query-status')).toMatchObject({ status: 'inmigrate' });
    await new Promise((r) => setTimeout(r, 50));
    // migrate-incoming's setup event is sent without the events capability
    expect(dst.events.map((e) => [e.event, e.data])).toEqual([['MIGRATION', { status: 'setup' }]]);
  });

  it('migrate to a port nothing listens on: returns {}, then failed; the VM keeps running', async () => {
    const v = await vm(['--ram', '8M', '--workload', 'rate=1000']);
    await v.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1' });
    const info = await waitStatus(v.qmp, ['failed']);
    expect(info['error-desc']).toMatch(/Connection refused/);
    expect(await v.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    // a new migration may start after a failed one
    await v.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:1' });
    await waitStatus(v.qmp, ['failed']);
  });

  it('quit answers, sends SHUTDOWN and exits 0', async () => {
    const v = await vm(['--ram', '8M']);
    expect(await v.qmp.execute('quit')).toEqual({});
    expect(await v.exited).toBe(0);
    expect(v.events.map((e) => e.event)).toContain('SHUTDOWN');
  });
});
