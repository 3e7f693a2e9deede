/**
 * `inspect` on a real QEMU 7.2 postcopy stream: QEMU → (a TCP tee that records
 * the main stream) → QEMU, switched to postcopy while precopy is throttled.
 * The recording must decode with the PACKAGED blob's nested grammar, and the
 * rebuilt RAM must equal the source's backing file.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { vmdescFromCapture } from '../../src/inspect/devices.js';
import { inspectStream } from '../../src/inspect/inspect.js';
import type { InspectResult } from '../../src/inspect/types.js';
import { captureStream, hasQemu, qemuSkipReason, startQemu, waitForStatus, type QemuProcess } from './harness/index.js';

const vms: QemuProcess[] = [];
let tee: net.Server | undefined;
afterAll(async () => {
  tee?.close();
  for (const v of vms) await v.cleanup();
});

/** A TCP relay to `target` that appends everything the client sends to `file`. */
async function startTee(target: number, file: string): Promise<{ port: number; done: Promise<void> }> {
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const server = net.createServer((src) => {
    const out = fs.createWriteStream(file);
    const dst = net.connect(target, '127.0.0.1');
    src.on('data', (d) => out.write(d));
    src.pipe(dst);
    dst.pipe(src);
    const end = () => out.end(finish);
    src.on('close', end);
    src.on('error', () => dst.destroy());
    dst.on('error', () => src.destroy());
  });
  tee = server;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, done };
}

/** Options shared by source and destination. */
type VmOpts = Parameters<typeof startQemu>[0];

/**
 * Migrate `opts` QEMU → tee → QEMU with postcopy-ram, switching to postcopy
 * while precopy is throttled; returns the source and the recorded file.
 */
async function postcopyCapture(opts: VmOpts): Promise<{ src: QemuProcess; file: string }> {
  const src = await startQemu({ ...opts, ramFill: 'random' });
  vms.push(src);
  const dst = await startQemu({ ...opts, incoming: 'defer' });
  vms.push(dst);
  const caps = { capabilities: [{ capability: 'postcopy-ram', state: true }, { capability: 'events', state: true }] };
  await src.qmp.execute('migrate-set-capabilities', caps);
  await dst.qmp.execute('migrate-set-capabilities', caps);
  await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const info = await dst.qmp.execute<{ 'socket-address': { port: string }[] }>('query-migrate');
  const port = Number(info['socket-address'][0]!.port);
  const file = path.join(src.dir, 'postcopy.bin');
  const relay = await startTee(port, file);
  // Slow precopy so that the switch happens with most pages still to send.
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 << 20 });
  await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${relay.port}` });
  await waitForStatus(src.qmp, 'active', 10_000);
  await new Promise((res) => setTimeout(res, 300));
  await src.qmp.execute('migrate-start-postcopy');
  await waitForStatus(src.qmp, 'completed', 60_000);
  await waitForStatus(dst.qmp, 'completed', 60_000);
  await src.qmp.execute('quit').catch(() => {});
  await relay.done;
  return { src, file };
}

describe.skipIf(!hasQemu)(`inspect on a real QEMU postcopy stream ${qemuSkipReason}`, () => {
  let r: InspectResult;
  let src: QemuProcess;
  let file: string;

  beforeAll(async () => {
    ({ src, file } = await postcopyCapture({ machine: 'none', memory: '32M' }));
    r = await inspectStream(fs.createReadStream(file));
  }, 120_000);

  it('decodes commands in QEMU order, the PACKAGED blob and its device sections', () => {
    const names = r.commands.map((c) => (c.name === 'PING' ? `PING(${String(c.args['value'])})` : c.name));
    // SPEC §1.5/§6.2: return path, ping 1, advise, ..., discards, package (LISTEN, devices, PING 3, RUN).
    expect(names.slice(0, 3)).toEqual(['OPEN_RETURN_PATH', 'PING(1)', 'POSTCOPY_ADVISE']);
    const pk = names.indexOf('PACKAGED');
    expect(pk).toBeGreaterThan(2);
    // Commands inside the package are listed right after PACKAGED; PING(4) follows it on the main stream.
    expect(names.slice(pk - 1)).toEqual(['PING(2)', 'PACKAGED', 'POSTCOPY_LISTEN', 'PING(3)', 'POSTCOPY_RUN', 'PING(4)']);
    expect(r.commands.filter((c) => c.packaged).map((c) => c.name)).toEqual(['POSTCOPY_LISTEN', 'PING', 'POSTCOPY_RUN']);
    expect(names.slice(3, pk - 1).every((n) => n === 'POSTCOPY_RAM_DISCARD')).toBe(true);
    expect(r.commands[2]!.args['ram']).toEqual({ pageSizeSummary: 4096, targetPageSize: 4096 });
    expect(r.packaged).toHaveLength(1);
    expect(r.devices.map((d) => [d.idstr, d.packaged, d.split])).toEqual([
      ['timer', true, 'footer-scan'],
      ['globalstate', true, 'footer-scan'],
    ]);
    expect(r.devices.map((d) => d.size)).toEqual([24, 104]);
    // The package holds exactly: LISTEN, the devices, PING 3, RUN.
    const inPkg = r.sections.filter((s) => s.packaged);
    expect(inPkg.reduce((n, s) => n + s.length, 0)).toBe(r.packaged[0]!.length);
  });

  it('rebuilds the RAM the source had, with postcopy pages after the package; EOF, no vmdesc', () => {
    expect(r.ramBlocks.map((b) => [b.idstr, b.usedLength])).toEqual([['ram', 32 << 20]]);
    expect(r.ramBlocks[0]!.sha256).toBe(createHash('sha256').update(fs.readFileSync(src.ramPath!)).digest('hex'));
    const pkgAt = r.packaged[0]!.offset;
    const after = r.sections.filter((s) => s.offset > pkgAt && s.idstr === 'ram');
    expect(after.reduce((n, s) => n + (s.pages?.normal ?? 0), 0)).toBeGreaterThan(0);
    expect(r.eof).toBe(true);
    expect(r.vmdesc).toBeNull();
    expect(r.totalBytes).toBe(fs.statSync(file).size);
    expect(r.warnings).toEqual([]);
  });
});

describe.skipIf(!hasQemu)(`inspect on a real QEMU -M pc postcopy package ${qemuSkipReason}`, () => {
  it('splits the 34 packaged device sections by footer scan exactly as the vmdesc of a precopy capture does', async () => {
    const opts: VmOpts = { machine: 'pc', memory: '128M', nodefaults: false, extraArgs: ['-serial', 'none'] };
    const { file } = await postcopyCapture(opts);
    const post = await inspectStream(fs.createReadStream(file));
    expect(post.packaged).toHaveLength(1);
    expect(post.devices.every((d) => d.packaged && d.split === 'footer-scan')).toBe(true);
    // The same machine, precopy into a file: its vmdesc says how long each device is.
    const vm = await startQemu(opts);
    vms.push(vm);
    const preFile = await captureStream(vm.qmp, { dir: vm.dir });
    const pre = await inspectStream(fs.createReadStream(preFile));
    const key = (d: InspectResult['devices'][number]) => `${d.idstr}(${d.instanceId}) v${d.versionId}: ${d.size}`;
    expect(post.devices.map(key)).toEqual(pre.devices.map(key));
    expect(post.devices).toHaveLength(34);
    expect(post.ramBlocks.map((b) => b.idstr)).toEqual(pre.ramBlocks.map((b) => b.idstr));
    // With that vmdesc, the packaged devices split field by field too.
    const withDesc = await inspectStream(fs.createReadStream(file), { vmdesc: vmdescFromCapture(fs.readFileSync(preFile)) });
    expect(withDesc.devices.every((d) => d.split === 'vmdesc' && d.fields !== undefined)).toBe(true);
    expect(withDesc.devices.map(key)).toEqual(pre.devices.map(key));
    const gs = withDesc.devices.find((d) => d.idstr === 'globalstate')!;
    expect(gs.fields![1]!.text).toBe('prelaunch');
  }, 180_000);
});
