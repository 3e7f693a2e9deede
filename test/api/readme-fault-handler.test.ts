/**
 * The README's fault-handler example, run as written (only the import is
 * pointed at this checkout's dist/ and port 4444 at a free port) in its own
 * Node process, with a real QEMU 7.2 `-M none -m 64M` postcopy source.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { hasQemu, qemuSkipReason, sleep, startQemu, type QemuProcess } from '../interop/harness/index.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const procs: QemuProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await p.cleanup();
});

function readmeBlock(tag: string): string {
  const m = new RegExp('```js ' + tag + '\\n([\\s\\S]*?)```').exec(fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8'));
  if (!m) throw new Error(`README has no \`\`\`js ${tag} block`);
  return m[1]!;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe.skipIf(!hasQemu)(`README fault-handler example ${qemuSkipReason}`, () => {
  it('runs as written: reads a page through a fault, logs the requests, completes', async () => {
    const port = await freePort();
    const code = readmeBlock('fault-handler')
      .replace("from 'postcopy'", `from '${pathToFileURL(path.join(ROOT, 'dist/src/index.js')).href}'`)
      .replace('tcp:127.0.0.1:4444', `tcp:127.0.0.1:${port}`);
    expect(code).toContain(`tcp:127.0.0.1:${port}`);
    const file = path.join(os.tmpdir(), `postcopy-readme-${process.pid}.mjs`);
    fs.writeFileSync(file, code);
    const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));

    const q = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', paused: true });
    procs.push(q);
    const ram = fs.readFileSync(q.ramPath!);
    await q.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
    // precopy sends ~2 MiB before the switch, so page 0x3f00000 (at 63 MiB) is still missing at RUN
    await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 << 20, 'max-postcopy-bandwidth': 32 << 20 });
    // The example listens once it has started; until then QEMU's migrate fails
    // (connection refused, status failed) and is simply tried again.
    for (let i = 0; ; i++) {
      await q.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
      let st = 'setup';
      while (st === 'setup') {
        st = (await q.qmp.execute<{ status?: string }>('query-migrate')).status ?? 'setup';
        if (st === 'setup') await sleep(10);
      }
      if (st !== 'failed') break;
      if (i > 200) throw new Error('the example never listened');
      await sleep(50);
    }
    await sleep(200);
    await q.qmp.execute('migrate-start-postcopy');
    const code0 = await Promise.race([exited, sleep(40_000).then(() => 'timeout' as const)]);
    if (code0 === 'timeout') child.kill();
    fs.rmSync(file, { force: true });
    expect(err).toBe('');
    expect(code0, out).toBe(0);
    // the page the handler read is the source's page, byte 0
    expect(out).toContain(`page 0x3f00000 begins with ${ram[0x3f00000]}`);
    expect(out).toMatch(/^completed \{/m);
    // every requested page was logged by the async iterator, and faultStats counted them
    const logged = out.split('\n').filter((l) => l.startsWith('requested ram ')).length;
    const requests = Number(/requests: (\d+)/.exec(out)?.[1]);
    expect(requests).toBe(logged);
    expect(out).toContain('requested ram 3f00000');
  }, 60_000);
});
