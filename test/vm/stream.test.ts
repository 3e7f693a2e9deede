/** What a `postcopy vm` source sends (inspected from exec:), and pause-before-switchover. */
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { inspectStream } from '../../src/inspect/inspect.js';
import { listeningPort, qmpError, startVm, waitStatus, type Digest, type VmProcess } from './helpers.js';

const MiB = 1 << 20;
const procs: VmProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

it('sends a -M none -nodefaults stream: configuration "none", block "ram", timer v2 (24 bytes), globalstate v1', async () => {
  const v = await startVm(['--machine', 'none', '--ram', '4M', '-S']);
  procs.push(v);
  const file = path.join(v.dir, 'stream.bin');
  await v.qmp.execute('migrate', { uri: `exec:cat > ${file}` });
  await waitStatus(v.qmp, ['completed']);
  for (let i = 0; i < 100 && !fs.existsSync(file); i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 100));
  const r = await inspectStream(fs.createReadStream(file));
  expect(r.configuration?.name).toBe('none');
  const d = await v.qmp.execute<Digest>('x-ram-digest');
  expect(r.ramBlocks.map((b) => [b.idstr, b.usedLength, b.sha256])).toEqual([['ram', 4 * MiB, d.blocks[0]!.sha256]]);
  // payload = item length - (type, id, idstr length byte, idstr, instance, version, footer)
  const full = r.sections.filter((s) => s.kind === 'full').map((s) => [s.idstr, s.versionId, s.length - (1 + 4 + 1 + s.idstr!.length + 4 + 4 + 5)]);
  expect(full).toEqual([
    ['timer', 2, 24],
    ['globalstate', 1, 104],
  ]);
  expect(fs.readFileSync(file).includes(Buffer.from('prelaunch\0'))).toBe(true);
});

it('pause-before-switchover: pre-switchover, migrate-continue with the wrong state is refused, then device → completed', async () => {
  const src = await startVm(['--ram', '8M', '--workload', 'rate=5000']);
  const dst = await startVm(['--ram', '8M', '--incoming', 'tcp:127.0.0.1:0']);
  procs.push(src, dst);
  await src.qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'pause-before-switchover', state: true },
      { capability: 'events', state: true },
    ],
  });
  await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${await listeningPort(dst.qmp)}` });
  await waitStatus(src.qmp, ['pre-switchover']);
  expect(await src.qmp.execute('query-status')).toMatchObject({ status: 'finish-migrate', running: false });
  expect(await qmpError(src.qmp, 'migrate-continue', { state: 'active' })).toBe('Migration not in expected state: pre-switchover');
  expect(await qmpError(src.qmp, 'migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] })).toBe(
    "There's a migration process in progress",
  );
  await src.qmp.execute('migrate-continue', { state: 'pre-switchover' });
  await waitStatus(src.qmp, ['completed']);
  await waitStatus(dst.qmp, ['completed']);
  const statuses = src.events.filter((e) => e.event === 'MIGRATION').map((e) => (e.data as { status: string }).status);
  expect(statuses).toEqual(['setup', 'active', 'pre-switchover', 'device', 'completed']);
  expect(await dst.qmp.execute<Digest>('x-ram-digest')).toEqual(await src.qmp.execute<Digest>('x-ram-digest'));
});
