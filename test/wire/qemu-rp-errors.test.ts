/**
 * Interop: a real QEMU 7.2 *source* (return-path capability on) migrates to a
 * socket we own; we answer with malformed return-path messages and compare
 * the source's error text with our decoder/validator. Skips without QEMU.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ProtocolError } from '../../src/errors.js';
import { decodeRpMessage, validatePageRequest } from '../../src/wire/return-path.js';
import { connectRetry, cur, hex } from './helpers.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const dir = mkdtempSync(join(tmpdir(), 'wire-qemu-rp-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function sourceErrorFor(rp: Uint8Array, tag: string, expect_: string): Promise<string> {
  const qmpSock = join(dir, `${tag}.qmp`);
  const migSock = join(dir, `${tag}.mig`);
  const server = createServer((s: Socket) => {
    s.on('error', () => undefined);
    // Answer only once the RAM setup has been received: the source's RAM
    // state exists from then on (page requests need it).
    let seen = 0;
    s.on('data', (d: Buffer) => {
      if (seen < 96 && (seen += d.length) >= 96) s.write(rp);
    });
  });
  await new Promise<void>((r) => server.listen(migSock, r));
  const proc = spawn(QEMU, [
    ...['-M', 'none', '-m', '4M', '-nodefaults', '-display', 'none', '-S'],
    ...['-qmp', `unix:${qmpSock},server=on,wait=off`],
  ]);
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
  try {
    const q = await connectRetry(qmpSock);
    const send = (cmd: string, args?: object): void => void q.write(JSON.stringify({ execute: cmd, arguments: args }) + '\n');
    send('qmp_capabilities');
    send('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
    send('migrate', { uri: `unix:${migSock}` });
    for (let i = 0; i < 400 && !stderr.includes(expect_) && proc.exitCode === null; i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    q.destroy();
    return stderr + (proc.signalCode ? `\n[QEMU killed by ${proc.signalCode}]` : '');
  } finally {
    proc.kill();
    await exited;
    server.close();
  }
}

function ourError(b: Uint8Array): string {
  try {
    decodeRpMessage(cur(b));
  } catch (e) {
    if (e instanceof ProtocolError) return e.message;
    throw e;
  }
  return '';
}

describe.skipIf(!existsSync(QEMU))('QEMU 7.2 source and our return-path checks agree', () => {
  const framing: [string, Uint8Array, string][] = [
    ['type 0', hex('0000 0000'), 'RP: Received invalid message 0x0000 length 0x0000'],
    ['type 7', hex('0007 0004 00000001'), 'RP: Received invalid message 0x0007 length 0x0004'],
    [
      'len 513',
      Uint8Array.from([0, 3, 2, 1, ...new Uint8Array(513)]),
      "RP: Received 'REQ_PAGES_ID' message (0x0003) withincorrect length 513 expecting 18446744073709551615",
    ],
    ['PONG len 3', hex('0002 0003 000000'), "RP: Received 'PONG' message (0x0002) withincorrect length 3 expecting 4"],
    ['REQ_PAGES_ID name len', hex('0003 0010 0000000000000000 00001000 06 "ram"'), 'RP: Req_Page_id with length 16 expecting 19'],
  ];
  it.each(framing)('%s', async (tag, bytes, message) => {
    expect(ourError(bytes)).toContain(message);
    expect(await sourceErrorFor(bytes, tag.replace(/\W+/g, '-'), message)).toContain(message);
  });

  const ctx = { lastBlock: undefined, usedLength: (n: string) => (n === 'ram' ? 0x400000 : undefined) };
  const semantic: [string, Uint8Array, { start: number; length: number; blockName?: string }, string][] = [
    ['misaligned', hex('0003 0010 0000000000000800 00001000 03 "ram"'), { start: 0x800, length: 0x1000, blockName: 'ram' }, 'Misaligned page request, start: 800 len: 4096'],
    ['no previous block', hex('0004 000c 0000000000000000 00001000'), { start: 0, length: 0x1000 }, 'ram_save_queue_pages no previous block'],
    ['unknown block', hex('0003 0010 0000000000000000 00001000 03 "abc"'), { start: 0, length: 0x1000, blockName: 'abc' }, "ram_save_queue_pages no block 'abc'"],
    ['overrun', hex('0003 0010 0000000000400000 00001000 03 "ram"'), { start: 0x400000, length: 0x1000, blockName: 'ram' }, 'request overrun start=400000 len=1000 blocklen=400000'],
  ];
  it.each(semantic)('%s', async (tag, bytes, req, message) => {
    const m = decodeRpMessage(cur(bytes));
    expect(m).toMatchObject(req);
    const v = validatePageRequest(req, ctx);
    expect(v.ok ? '' : v.error).toContain(message);
    expect(await sourceErrorFor(bytes, tag.replace(/\W+/g, '-'), message)).toContain(message);
  });
});
