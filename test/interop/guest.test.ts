/**
 * The test guest under real QEMU 7.2: it boots, its RAM is verifiable, and
 * QEMU→QEMU XBZRLE precopy and postcopy migrations of it keep memory intact
 * (checked byte for byte, since `completed` alone proves nothing: SPEC.md §13).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkGuestMemory, diffPages, DEFAULT_GUEST_PARAMS, guestStep, type GuestParams } from '../guest/check.js';
import {
  qemuAvailable,
  QEMU_BINARY,
  queryMigrate,
  runState,
  setCapabilities,
  startGuestVm,
  waitMigrate,
  type GuestVm,
} from '../guest/vm.js';

const haveQemu = qemuAvailable();
if (!haveQemu) console.warn(`SKIP test/interop/guest.test.ts: ${QEMU_BINARY} not found (install qemu-system-x86)`);

const PARAMS: GuestParams = { ...DEFAULT_GUEST_PARAMS, report: 4 };
const vms: GuestVm[] = [];
const start = async (opts: Parameters<typeof startGuestVm>[0]): Promise<GuestVm> => {
  const vm = await startGuestVm(opts);
  vms.push(vm);
  return vm;
};
const started = (text: string): boolean => /GUEST START [^\n]*\n/.test(text);
const passAtLeast = (vm: GuestVm, q: number) => (): boolean => vm.lastReportedPass() >= q;

afterEach(async () => {
  await Promise.all(vms.splice(0).map((vm) => vm.destroy()));
});

/** Bytes of the working set of page `index` (for "memory changes" checks). */
function pageHeader(ram: Uint8Array, params: GuestParams, index: number): number {
  return new DataView(ram.buffer, ram.byteOffset).getUint32(params.start + index * 4096, true);
}

/**
 * QEMU→QEMU precopy with XBZRLE on a unix socket, as migration-test does it:
 * non-converging limits until two more dirty-sync passes, then converge. The
 * destination is started with -S so that, once both sides are done, the two
 * RAM files must be identical.
 */
async function xbzrlePrecopy(params: GuestParams) {
  const src = await start({ params });
  const sock = join(src.dir, 'mig.sock');
  const dst = await start({ params, incoming: `unix:${sock}`, paused: true });
  // Let the guest run a few passes first (its TLB is warm, pages are being rewritten).
  // TCG under a loaded CI host can be several times slower: two report periods, generous time.
  await src.waitSerial(passAtLeast(src, 2 * params.report), 25_000);
  await setCapabilities(src, { xbzrle: true });
  await setCapabilities(dst, { xbzrle: true });
  await src.qmp.execute('migrate-set-parameters', {
    'xbzrle-cache-size': 32 << 20,
    'max-bandwidth': 30_000_000,
    'downtime-limit': 1,
  });
  const t0 = Date.now();
  await src.qmp.execute('migrate', { uri: `unix:${sock}` });
  // Two dirty-sync passes beyond the first, so XBZRLE has pages in its cache to encode against.
  const mid = await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 3, 50_000, 'dirty-sync-count >= 3');
  // A small working set can converge by itself: XBZRLE deltas of a few bytes fit the 1 ms budget.
  expect(['active', 'completed']).toContain(mid.status);
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1_000_000_000, 'downtime-limit': 30_000 });
  await waitMigrate(src, (i) => i.status === 'completed', 30_000, 'source completed');
  const info = await waitMigrate(src, (i) => (i['total-time'] ?? 0) > 0, 5_000, 'total-time');
  await waitMigrate(dst, (i) => i.status === 'completed', 10_000, 'destination completed');
  return { src, dst, info, elapsed: Date.now() - t0 };
}

/** QEMU's major version, from `--version`. */
function qemuMajor(): number {
  const out = spawnSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' }).stdout ?? '';
  return Number(/version (\d+)\./.exec(out)?.[1] ?? 0);
}

describe.skipIf(!haveQemu)('test guest under QEMU 7.2', () => {
  it('boots, reports progress, and its stopped RAM passes the checker', async () => {
    const vm = await start({ params: PARAMS });
    const t0 = Date.now();
    await vm.waitSerial(started, 10_000);
    expect(vm.serial()).toMatch(/GUEST START start=0x00200000 pages=25088 n=16 rate=max pattern=seq/);
    await vm.waitSerial(() => vm.lastReportedPass() >= 4, 10_000);
    const bootToPass4 = Date.now() - t0;

    const running = vm.readRam();
    await new Promise((r) => setTimeout(r, 200));
    await vm.qmp.execute('stop');
    const a = vm.readRam();
    const check = checkGuestMemory(a, PARAMS);
    expect(check.ok, check.detail).toBe(true);
    expect(check.pass).toBeGreaterThanOrEqual(4);
    // Stopped means stopped: the image does not change any more.
    await new Promise((r) => setTimeout(r, 300));
    expect(Buffer.compare(vm.readRam(), a)).toBe(0);
    // And it was changing while running: thousands of pages rewritten in 200 ms.
    expect(diffPages(running, a, PARAMS.start, PARAMS.size).pages).toBeGreaterThan(1000);

    await vm.qmp.execute('cont');
    await vm.waitSerial(() => vm.lastReportedPass() >= check.pass + 4, 10_000);
    await vm.qmp.execute('stop');
    const b = vm.readRam();
    const again = checkGuestMemory(b, PARAMS);
    expect(again.ok, again.detail).toBe(true);
    expect(again.pass).toBeGreaterThan(check.pass);
    console.log(`guest boot→pass 4: ${bootToPass4} ms; ${check.detail}`);
  });

  it('random visit order and a rate limit: checker holds, progress follows the rate', async () => {
    const params: GuestParams = { ...PARAMS, size: 4 << 20, n: 64, rate: 20_000, pattern: 'rand', report: 1 };
    const vm = await start({ params });
    await vm.waitSerial(started, 10_000);
    // The guest and the checker agree on the visit order.
    expect(vm.serial()).toContain(`pages=1024 n=64 rate=20000 pattern=rand step=${guestStep(params)} flush=all`);
    await vm.waitSerial(() => vm.lastReportedPass() >= 2, 10_000);
    const p0 = vm.lastReportedPass();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 2_000));
    const rate = ((vm.lastReportedPass() - p0) * 1024 * 1000) / (Date.now() - t0);
    await vm.qmp.execute('stop');
    const check = checkGuestMemory(vm.readRam(), params);
    expect(check.ok, check.detail).toBe(true);
    // 20 000 pages/s requested; allow for a slow shared host but not for "max".
    expect(rate).toBeGreaterThan(5_000);
    expect(rate).toBeLessThan(26_000);
    console.log(`rate-limited guest: ${rate.toFixed(0)} pages/s (asked 20000); ${check.detail}`);
  });

  it.each([
    ['98 MiB seq', PARAMS, true],
    // A working set small enough to live in the softmmu TLB: the case the invlpg is for.
    // It converges within a sync or two of raising the limits, so XBZRLE may have had
    // nothing to encode yet: its counters are not asserted here.
    ['512 KiB rand', { ...PARAMS, size: 512 << 10, n: 64, pattern: 'rand', report: 1024 } satisfies GuestParams, false],
  ])('QEMU→QEMU XBZRLE precopy (%s): memory identical on both sides and consistent', async (_name, PARAMS, xbzrleUsed) => {
    const { src, dst, info, elapsed } = await xbzrlePrecopy(PARAMS);
    if (xbzrleUsed) {
      expect(info['xbzrle-cache']?.pages ?? 0).toBeGreaterThan(0);
      expect(info['xbzrle-cache']?.bytes ?? 0).toBeGreaterThan(0);
    }
    expect(await runState(src)).toBe('postmigrate');
    const a = src.readRam();
    const b = dst.readRam();
    const diff = diffPages(a, b, PARAMS.start, PARAMS.size);
    expect(diff, `first differing page 0x${diff.firstAddress.toString(16)}`).toEqual({ pages: 0, firstAddress: -1 });
    const check = checkGuestMemory(b, PARAMS);
    expect(check.ok, check.detail).toBe(true);
    // All of RAM, not just the working set (stack, globals, BIOS data).
    const whole = diffPages(a, b, 0, a.length);
    expect(whole.pages, `first differing page 0x${whole.firstAddress.toString(16)}`).toBe(0);

    // The guest carries on at the destination from where it stopped.
    await dst.qmp.execute('cont');
    const before = check.pass;
    await dst.waitSerial((t) => /^pass \d+$/m.test(t) && dst.lastReportedPass() >= before + 2, 20_000);
    await dst.qmp.execute('stop');
    const after = checkGuestMemory(dst.readRam(), PARAMS);
    expect(after.ok, after.detail).toBe(true);
    expect(after.pass).toBeGreaterThan(before);
    console.log(
      `xbzrle precopy ${_name}: ${elapsed} ms, dirty-sync-count ${info.ram?.['dirty-sync-count']}, ` +
        `xbzrle pages ${info['xbzrle-cache']?.pages} bytes ${info['xbzrle-cache']?.bytes}, ` +
        `downtime ${info.downtime} ms; ${check.detail}`,
    );
  });

  it('QEMU→QEMU postcopy: completes, serves page requests, destination memory consistent and live', async () => {
    // Stride order: the guest touches pages far from where the source's sweep is, so it faults.
    const params: GuestParams = { ...PARAMS, pattern: 'rand' };
    const src = await start({ params });
    const sock = join(src.dir, 'mig.sock');
    const dst = await start({ params, incoming: `unix:${sock}` });
    await src.waitSerial(passAtLeast(src, 4), 10_000);
    await setCapabilities(src, { 'postcopy-ram': true });
    await setCapabilities(dst, { 'postcopy-ram': true });
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 30_000_000, 'downtime-limit': 1 });
    const t0 = Date.now();
    await src.qmp.execute('migrate', { uri: `unix:${sock}` });
    await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 2, 50_000, 'one pass');
    await src.qmp.execute('migrate-start-postcopy');
    await waitMigrate(src, (i) => i.status === 'postcopy-active' || i.status === 'completed', 10_000, 'postcopy-active');
    await dst.qmp.waitEvent('RESUME', 10_000);
    await waitMigrate(src, (i) => i.status === 'completed', 40_000, 'source completed');
    const info = await waitMigrate(src, (i) => (i['total-time'] ?? 0) > 0, 5_000, 'total-time');
    await waitMigrate(dst, (i) => i.status === 'completed', 10_000, 'destination completed');
    const elapsed = Date.now() - t0;
    expect(info.ram?.['postcopy-requests'] ?? 0).toBeGreaterThan(0);
    expect(await runState(dst)).toBe('running');

    // Destination keeps running the guest; then its memory must be consistent.
    const passLines = (t: string): number => t.match(/^pass \d+$/gm)?.length ?? 0;
    await dst.waitSerial((t) => passLines(t) >= 3, 15_000);
    const p0 = Number(/^pass (\d+)$/m.exec(dst.serial())![1]);
    const running = dst.readRam();
    await dst.qmp.execute('stop');
    const ram = dst.readRam();
    const check = checkGuestMemory(ram, params);
    expect(check.ok, check.detail).toBe(true);
    expect(pageHeader(ram, params, 0)).toBeGreaterThanOrEqual(pageHeader(running, params, 0));
    expect(check.pass).toBeGreaterThan(p0);
    console.log(
      `postcopy: ${elapsed} ms, postcopy-requests ${info.ram?.['postcopy-requests']}, ` +
        `dirty-sync-count ${info.ram?.['dirty-sync-count']}, downtime ${info.downtime} ms; ${check.detail}`,
    );
  });

  it('QEMU→QEMU postcopy with pause and recovery: destination memory consistent afterwards', async () => {
    const params: GuestParams = { ...PARAMS, pattern: 'rand' };
    const src = await start({ params });
    const sock = join(src.dir, 'mig.sock');
    const sock2 = join(src.dir, 'recover.sock');
    const dst = await start({ params, incoming: `unix:${sock}` });
    await src.waitSerial(passAtLeast(src, 4), 10_000);
    await setCapabilities(src, { 'postcopy-ram': true });
    await setCapabilities(dst, { 'postcopy-ram': true });
    // As migration-test: a trickle of postcopy bandwidth so the pause lands mid-postcopy.
    await src.qmp.execute('migrate-set-parameters', {
      'max-bandwidth': 30_000_000,
      'downtime-limit': 1,
      'max-postcopy-bandwidth': 4096,
    });
    await src.qmp.execute('migrate', { uri: `unix:${sock}` });
    await waitMigrate(src, (i) => (i.ram?.['dirty-sync-count'] ?? 0) >= 2, 50_000, 'one pass');
    await src.qmp.execute('migrate-start-postcopy');
    await waitMigrate(src, (i) => i.status === 'postcopy-active', 10_000, 'postcopy-active');
    await dst.qmp.waitEvent('RESUME', 10_000);
    await new Promise((r) => setTimeout(r, 300)); // the guest faults at the destination meanwhile

    await src.qmp.execute('migrate-pause');
    await waitMigrate(dst, (i) => i.status === 'postcopy-paused', 10_000, 'destination postcopy-paused');
    await waitMigrate(src, (i) => i.status === 'postcopy-paused', 10_000, 'source postcopy-paused');
    await dst.qmp.execute('migrate-recover', { uri: `unix:${sock2}` });
    await src.qmp.execute('migrate', { uri: `unix:${sock2}`, resume: true });
    await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
    await waitMigrate(src, (i) => i.status === 'completed', 40_000, 'source completed after recovery');
    const info = await waitMigrate(src, (i) => (i['total-time'] ?? 0) > 0, 5_000, 'total-time');
    await waitMigrate(dst, (i) => i.status === 'completed', 10_000, 'destination completed');

    const passLines = (t: string): number => t.match(/^pass \d+$/gm)?.length ?? 0;
    await dst.waitSerial((t) => passLines(t) >= 3, 15_000);
    await dst.qmp.execute('stop');
    const check = checkGuestMemory(dst.readRam(), params);
    expect(check.ok, check.detail).toBe(true);
    console.log(`postcopy recovery: postcopy-requests ${info.ram?.['postcopy-requests']}; ${check.detail}`);
  });

  it('negative control: without invlpg the same migration loses dirty pages (QEMU < 9 TCG bug), and the checks see it', async () => {
    // 128 pages stay in the softmmu TLB, so writes go through cached entries.
    // The loss is likely but not certain in one run (about 7 runs in 10 in trials), so try up to 6 times.
    const params: GuestParams = { ...PARAMS, size: 512 << 10, report: 1024, flush: 'none' };
    const buggy = qemuMajor() < 9;
    let caught = 0;
    for (let attempt = 1; attempt <= 6 && caught === 0; attempt++) {
      const { src, dst } = await xbzrlePrecopy(params);
      const a = src.readRam();
      const b = dst.readRam();
      const diff = diffPages(a, b, params.start, params.size);
      const check = checkGuestMemory(b, params);
      console.log(`flush=none attempt ${attempt}: ${diff.pages} of 128 working-set pages differ; destination: ${check.detail}`);
      expect(checkGuestMemory(a, params).ok).toBe(true); // the source itself is always consistent
      if (diff.pages > 0 || !check.ok) caught++;
      // A stale destination is stale against the source, never identical: the two checks agree.
      expect(diff.pages > 0).toBe(!check.ok || diff.pages > 0);
      await Promise.all(vms.splice(0).map((vm) => vm.destroy()));
    }
    expect(caught > 0).toBe(buggy);
  }, 120_000);
});
