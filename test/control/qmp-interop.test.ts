/**
 * Byte-for-byte comparison with the real QEMU 7.2 binary: the same raw QMP
 * requests go to `qemu-system-x86_64 -M none` and to our QmpServer with the
 * configuration commands; every reply line must be identical.
 * Skips only when the binary is absent.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationConfig, registerConfigCommands } from '../../src/control/config-commands.js';
import { QmpServer } from '../../src/control/qmp-server.js';
import { RawQmp } from './raw-client.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const have = existsSync(QEMU);
if (!have) console.warn(`skipping QMP interop: ${QEMU} not installed`);

const caps = (...l: Array<[string, boolean]>): string =>
  JSON.stringify({ execute: 'migrate-set-capabilities', arguments: { capabilities: l.map(([capability, state]) => ({ capability, state })) } });
const params = (a: string): string => `{"execute":"migrate-set-parameters","arguments":{${a}}}`;

const BEFORE_NEGOTIATION = ['{"execute":"query-migrate-capabilities","id":1}', 'garbage', '[1]', '{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}'];
const REQUESTS = [
  '{"execute":"qmp_capabilities","id":"x"}',
  '{"execute":"qmp_capabilities","id":1}',
  '{"execute":"query-migrate-capabilities"}',
  '{"execute":"query-migrate-parameters","id":{"a":[1,2.5,null]}}',
  '{"execute":"nosuch\\u00e9\\u0001/x","id":"caf\\u00e9\\ud83d\\ude00"}',
  '{"execute":"query-migrate-parameters","foo":1}',
  '{"execute":1}',
  '{}',
  '"str"',
  '{"execute":"query-migrate-parameters","arguments":[]}',
  '{"execute":"query-migrate-parameters","arguments":{"x":1}}',
  '{"execute":"query-migrate-parameters","execute":"x"}',
  '{"exec-oob":"migrate-pause","id":2}',
  '{"execute":"migrate-set-capabilities"}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":{}}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[1]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle"}]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"state":true}]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":1}]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":true,"x":1}]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":5,"state":true}]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x","state":true}]}}',
  '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[],"foo":1}}',
  caps(['postcopy-preempt', true]),
  caps(['postcopy-ram', true], ['compress', true], ['postcopy-preempt', true]),
  caps(['postcopy-ram', true], ['x-ignore-shared', true]),
  caps(['multifd', true], ['compress', true]),
  caps(['zero-copy-send', true]),
  caps(['multifd', true], ['zero-copy-send', true]),
  caps(['xbzrle', true]),
  caps(['background-snapshot', true]),
  caps(['background-snapshot', true], ['postcopy-ram', true]),
  caps(['zero-copy-send', false], ['multifd', false], ['events', true], ['postcopy-ram', true], ['return-path', true]),
  caps(['postcopy-preempt', true]),
  caps(['postcopy-ram', false]),
  '{"execute":"query-migrate-capabilities"}',
  params('"compress-level":10'),
  params('"compress-level":256'),
  params('"compress-level":"a"'),
  params('"compress-level":1.5'),
  params('"compress-level":-1'),
  params('"compress-threads":0'),
  params('"decompress-threads":0'),
  params('"throttle-trigger-threshold":0'),
  params('"throttle-trigger-threshold":101'),
  params('"cpu-throttle-initial":0'),
  params('"cpu-throttle-initial":100'),
  params('"cpu-throttle-increment":100'),
  params('"downtime-limit":2000001'),
  params('"downtime-limit":-1'),
  params('"downtime-limit":1e3'),
  params('"x-checkpoint-delay":-1'),
  params('"x-checkpoint-delay":4294967296'),
  params('"multifd-channels":0'),
  params('"xbzrle-cache-size":4097'),
  params('"xbzrle-cache-size":2048'),
  params('"max-cpu-throttle":100'),
  params('"max-cpu-throttle":10'),
  params('"announce-initial":100001'),
  params('"announce-max":100001'),
  params('"announce-rounds":1001'),
  params('"announce-step":0'),
  params('"announce-step":10001'),
  params('"multifd-compression":"lz4"'),
  params('"bogus":1'),
  params('"tls-creds":5'),
  params('"compress-wait-thread":1'),
  params('"max-bandwidth":1.5'),
  params('"compress-level":10,"bogus":1'),
  params('"bogus":1,"compress-level":"x"'),
  '{"execute":"migrate-set-parameters"}',
  '{"execute":"query-migrate-parameters"}',
  params('"max-bandwidth":-1,"max-postcopy-bandwidth":-2,"tls-creds":null,"tls-hostname":"h\\u00e9","multifd-zlib-level":21,"multifd-zstd-level":30'),
  params('"cpu-throttle-initial":50,"max-cpu-throttle":40'),
  params('"cpu-throttle-initial":50,"max-cpu-throttle":60,"downtime-limit":2000000,"xbzrle-cache-size":9223372036854775808,"announce-step":1,"multifd-compression":"zstd","x-checkpoint-delay":4294967295'),
  '{"execute":"query-migrate-parameters"}',
  params('"max-cpu-throttle":55'),
  '{"execute":"query-migrate-parameters"}',
  '{"execute":"query-migrate-capabilities", "id": 18446744073709551615}',
  '{"execute":"query-migrate-capabilities", "id": -9223372036854775808}',
  "{'execute':'query-migrate-capabilities','id':'sq'}",
  '{"execute" "x"}',
  '{"execute":"x",}',
  '{"execute":"x"]',
  '[1,]',
  '{"execute":"x","id":tru}',
  '{"execute":"x","id":"\\q"}',
  '{"execute":"x","id":1.5e400}',
  '{"execute":"x","id":-0}',
  '{"execute":"x","id":0.1}',
  '{"execute":"x","id":123456789012345678901234567890}',
  '{"execute":"x","id":-9223372036854775809}',
  '1',
  'nul',
  '{"execute":"x","id":[1 2]}',
  '{1:2}',
  '{"execute":"x","id":1e5}',
  '{"execute":"x","id":-1.0}',
  '{"execute":"x","id":12.50}',
  '{"execute":"x","id":"\\u0000"}',
];

describe.skipIf(!have)('QMP replies identical to QEMU 7.2', () => {
  let dir: string;
  let qemu: ChildProcess;
  let server: QmpServer;
  let ours: RawQmp;
  let theirs: RawQmp;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qmp-interop-'));
    const qsock = join(dir, 'qemu.sock');
    qemu = spawn(QEMU, ['-M', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${qsock},server=on,wait=off`], {
      stdio: 'ignore',
    });
    server = new QmpServer();
    // Cross-checks compared with QEMU's: accept every capability here.
    registerConfigCommands(server, new MigrationConfig(() => ({ unsupported: [] })));
    server.register('migrate-pause', () => {
      throw new Error('migrate-pause is currently only supported during postcopy-active state');
    }, { allowOob: true });
    await server.listen(join(dir, 'ours.sock'));
    ours = await RawQmp.connect({ path: join(dir, 'ours.sock') });
    for (let i = 0; ; i++) {
      try {
        theirs = await RawQmp.connect({ path: qsock });
        break;
      } catch (e) {
        if (i > 100) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });

  afterAll(async () => {
    ours?.close();
    theirs?.close();
    await server?.close();
    qemu?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('greets with the same shape (version 7.2, oob)', () => {
    const shape = (g: string) => g.replace(/"micro": \d+/, '"micro": N').replace(/"package": "[^"]*"/, '"package": P');
    expect(shape(ours.greeting)).toBe(shape(theirs.greeting));
    expect(ours.greeting).toContain('"package": "postcopy"');
  });

  it('answers every request of the script exactly as QEMU does', async () => {
    for (const req of [...BEFORE_NEGOTIATION, ...REQUESTS]) {
      const [a, b] = [await ours.cmd(req), await theirs.cmd(req)];
      expect({ req, reply: a }).toEqual({ req, reply: b });
      if (process.env.QMP_TRACE) console.log(req, "=>", a);
    }
  });
});
