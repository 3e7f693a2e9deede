/**
 * Transports against the real QEMU 7.2 binary: QEMU migrates into our tcp
 * listener (we read its stream header, then shut down: QEMU must fail), and
 * our tcp connect feeds a QEMU `-incoming` listener whose socket-address
 * looks exactly like ours. Skips only when the binary is absent.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { toQmpJson } from '../../src/control/json.js';
import { connect } from '../../src/transport/connect.js';
import { listen } from '../../src/transport/listen.js';
import { RawQmp } from '../control/raw-client.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const have = existsSync(QEMU);
if (!have) console.warn(`skipping transport interop: ${QEMU} not installed`);

const procs: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) p.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function startQemu(extra: string[]): Promise<{ qmp: RawQmp; proc: ChildProcess }> {
  const dir = mkdtempSync(join(tmpdir(), 'tr-interop-'));
  dirs.push(dir);
  const sock = join(dir, 'qmp.sock');
  const proc = spawn(QEMU, ['-M', 'none', '-m', '32M', '-nodefaults', '-display', 'none', ...extra, '-qmp', `unix:${sock},server=on,wait=off`], {
    stdio: 'ignore',
  });
  procs.push(proc);
  for (let i = 0; ; i++) {
    try {
      const qmp = await RawQmp.connect({ path: sock });
      await qmp.cmd('{"execute":"qmp_capabilities"}');
      return { qmp, proc };
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function pollStatus(qmp: RawQmp, want: string): Promise<string> {
  let last = '';
  for (let i = 0; i < 100; i++) {
    last = await qmp.cmd('{"execute":"query-migrate"}');
    if (last.includes(`"status": "${want}"`)) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  return last;
}

describe.skipIf(!have)('transports with QEMU 7.2', () => {
  it('QEMU migrates into our tcp listener; our shutdown makes QEMU fail', async () => {
    const { qmp } = await startQemu(['-S']);
    await qmp.cmd('{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":65536}}');
    const l = await listen('tcp:127.0.0.1:0');
    const port = (l.socketAddress![0] as { port: string }).port;
    expect(await qmp.cmd(`{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:${port}"}}`)).toBe('{"return": {}}');
    const ch = await l.accept();
    const header = await new Promise<Buffer>((resolve) => {
      let buf = Buffer.alloc(0);
      ch.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 8) {
          ch.removeAllListeners('data');
          resolve(buf);
        }
      });
    });
    expect(header.readUInt32BE(0)).toBe(0x5145564d); // "QEVM"
    expect(header.readUInt32BE(4)).toBe(3);
    ch.shutdown();
    expect(await pollStatus(qmp, 'failed')).toContain('"status": "failed"');
    await l.close();
    qmp.close();
  });

  it("QEMU's -incoming socket-address has our shape; our connect reaches it", async () => {
    const { qmp, proc } = await startQemu(['-incoming', 'defer']);
    await qmp.cmd('{"execute":"migrate-incoming","arguments":{"uri":"tcp:127.0.0.1:0"}}');
    const info = await qmp.cmd('{"execute":"query-migrate"}');
    const m = /"port": "(\d+)"/.exec(info)!;
    const ours = await listen('tcp:127.0.0.1:0');
    const ourPort = (ours.socketAddress![0] as { port: string }).port;
    expect(toQmpJson({ 'socket-address': ours.socketAddress }).replace(ourPort, 'P')).toBe(
      JSON.parse(JSON.stringify(info)).replace('{"return": ', '').replace(/\}$/, '').replace(m[1]!, 'P'),
    );
    await ours.close();
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    const ch = await connect(`tcp:127.0.0.1:${m[1]}`);
    ch.end(Buffer.from('NOT A MIGRATION STREAM'));
    // A QEMU destination that cannot load exits with status 1 (SPEC §13).
    expect(await exited).toBe(1);
  });
});
