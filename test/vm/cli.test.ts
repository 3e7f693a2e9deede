/** `postcopy vm` command line: parsing, usage errors, startup failures. */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { parseVmArgs } from '../../src/cli/vm.js';
import { BIN } from './helpers.js';

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, 'vm', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('parseVmArgs', () => {
  it('parses every option; a bare --ram number is MiB like QEMU -m', () => {
    const r = parseVmArgs(['--machine', 'none', '--ram', '96', '--mem-path', '/x', '--workload', 'pattern=hot,rate=max', '-S', '--incoming', 'defer', '--qmp', 'unix:/q']);
    expect(r).toEqual({
      qmp: 'unix:/q',
      opts: {
        machine: 'none',
        ram: 96 << 20,
        memPath: '/x',
        workload: { mode: 'write', pattern: 'hot', rate: 0, bytes: 8, wss: 0 },
        startPaused: true,
        incoming: 'defer',
      },
    });
    expect(parseVmArgs(['--ram', '1G', '--qmp', 'x'])).toMatchObject({ opts: { ram: 1 << 30 } });
    expect(parseVmArgs(['--ram', '1G', '--qmp', 'x', '--fault-priority', '-20'])).toMatchObject({ opts: { faultPriority: -20 } });
  });
  it('refuses what it cannot do, with a reason', () => {
    expect(() => parseVmArgs(['--ram', '16M'])).toThrow('--qmp is required');
    expect(() => parseVmArgs(['--qmp', 'x'])).toThrow('--ram is required unless --incoming is given');
    expect(() => parseVmArgs(['--machine', 'pc', '--ram', '16M', '--qmp', 'x'])).toThrow("unsupported machine type 'pc'");
    expect(() => parseVmArgs(['--ram', '1000', '--qmp', 'x', '--bogus'])).toThrow("unknown option '--bogus'");
    expect(() => parseVmArgs(['--ram', '5000B', '--qmp', 'x'])).toThrow('multiple of 4 KiB');
    for (const bad of ['20', '-21', '1.5', 'high', '']) {
      expect(() => parseVmArgs(['--ram', '16M', '--qmp', 'x', '--fault-priority', bad])).toThrow(`--fault-priority must be a whole nice value between -20 and 19, not '${bad}'`);
    }
    expect(() => parseVmArgs(['--ram', '16M', '--qmp', 'x', '--fault-priority'])).toThrow('option --fault-priority needs a value');
    expect(() => parseVmArgs(['--ram', '16M', '--qmp', 'x', '--workload', 'pattern=zigzag'])).toThrow('pattern must be seq, rand or hot');
    expect(() => parseVmArgs(['--ram'])).toThrow('option --ram needs a value');
  });
});

describe('postcopy vm process', () => {
  it('bad usage exits 2 with the usage on stderr and nothing on stdout', async () => {
    const r = await run(['--ram', '16M']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--qmp is required[\s\S]*usage: postcopy vm/);
    expect(r.stdout).toBe('');
  });
  it('an -incoming port already in use: QEMU\'s message, exit 1', { timeout: 15_000 }, async () => {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as net.AddressInfo).port;
    try {
      const r = await run(['--ram', '16M', '--incoming', `tcp:127.0.0.1:${port}`, '--qmp', `unix:/tmp/pcvm-cli-${process.pid}.sock`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('Failed to find an available port: Address already in use');
    } finally {
      s.close();
    }
  });
});
