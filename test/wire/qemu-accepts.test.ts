/**
 * Interop: streams built only with our encoders are loaded by the real QEMU
 * 7.2 destination (`-incoming exec:cat FILE`), and QEMU's own error text
 * matches ours for a bad one. Skips when qemu-system-x86_64 is absent.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeGlobalState } from '../../src/wire/globalstate.js';
import { RamRecordDecoder, RamRecordEncoder } from '../../src/wire/ram.js';
import { encodeConfiguration, encodeFooter, encodeHeader, encodeSection } from '../../src/wire/stream.js';
import { ByteWriter } from '../../src/wire/writer.js';
import { connectRetry, cur, hex, protoErr } from './helpers.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const have = existsSync(QEMU);
const dir = mkdtempSync(join(tmpdir(), 'wire-qemu-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PATTERN = Uint8Array.from({ length: 4096 }, (_, i) => (i * 13 + 5) & 0xff);

/** header, config, RAM START/PART/END with ZERO(0xAB), PAGE, XBZRLE, globalstate, EOF. */
function buildStream(badFlags = false): Uint8Array {
  const w = new ByteWriter(1 << 14);
  const ram = new RamRecordEncoder();
  encodeHeader(w);
  encodeConfiguration(w, { machineName: 'none' });
  encodeSection(w, { kind: 'start', sectionId: 77, idstr: 'ram', instanceId: 0, versionId: 4 });
  ram.memSize(w, [{ idstr: 'ram', usedLength: 0x400000 }]);
  ram.eos(w);
  encodeFooter(w, 77);
  encodeSection(w, { kind: 'part', sectionId: 77 });
  ram.zero(w, 'ram', 0, 0xab);
  ram.page(w, 'ram', 0x1000, PATTERN);
  ram.xbzrle(w, 'ram', 0x1000, Uint8Array.from([1, 1, 0x81])); // skip 1, change 1 byte -> 0x81
  if (badFlags) {
    // offset 0x2000, flags CONTINUE|PAGE|ZERO. (Without CONTINUE QEMU reads an
    // idstr first and fails on the block instead.)
    w.be32(0);
    w.be32(0x202a);
  }
  ram.eos(w);
  encodeFooter(w, 77);
  encodeSection(w, { kind: 'end', sectionId: 77 });
  ram.eos(w);
  encodeFooter(w, 77);
  encodeSection(w, { kind: 'full', sectionId: 3, idstr: 'globalstate', instanceId: 0, versionId: 1 });
  encodeGlobalState(w, 'paused');
  encodeFooter(w, 3);
  encodeSection(w, { kind: 'eof' });
  return w.toBytes();
}

interface Qemu {
  proc: ChildProcess;
  stderr: () => string;
  exit: Promise<number | null>;
  qmp: (cmd: string, args?: object) => Promise<Record<string, unknown>>;
}

async function startIncoming(file: string, tag: string): Promise<Qemu> {
  const sock = join(dir, `${tag}.sock`);
  const proc = spawn(QEMU, [
    ...['-M', 'none', '-m', '4M', '-nodefaults', '-display', 'none', '-S'],
    ...['-qmp', `unix:${sock},server=on,wait=off`, '-incoming', `exec:cat ${file}`],
  ]);
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<number | null>((res) => proc.on('exit', (code) => res(code)));
  // A destination that fails at once may exit before its QMP socket accepts.
  const s = await Promise.race([connectRetry(sock).catch(() => null), exit.then(() => null)]);
  if (s === null) {
    const gone = (): Promise<Record<string, unknown>> => Promise.reject(new Error('QEMU exited'));
    return { proc, stderr: () => err, exit, qmp: gone };
  }
  let buf = '';
  const waiting: ((m: Record<string, unknown>) => void)[] = [];
  s.on('data', (d) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const m = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      if ('return' in m || 'error' in m) waiting.shift()?.(m);
    }
  });
  s.on('error', () => undefined);
  const qmp = (cmd: string, args?: object): Promise<Record<string, unknown>> =>
    new Promise((res) => {
      waiting.push(res);
      s.write(JSON.stringify({ execute: cmd, arguments: args }) + '\n');
    });
  proc.on('exit', () => s.destroy());
  await Promise.race([qmp('qmp_capabilities'), exit]);
  return { proc, stderr: () => err, exit, qmp };
}

describe.skipIf(!have)('real QEMU 7.2 loads streams we encode', () => {
  it('applies ZERO fill, PAGE and XBZRLE in place; ends in the globalstate run state', async () => {
    const file = join(dir, 'good.mig');
    writeFileSync(file, buildStream());
    const q = await startIncoming(file, 'good');
    try {
      let status = '';
      for (let i = 0; i < 100 && status !== 'completed' && status !== 'failed'; i++) {
        await new Promise((r) => setTimeout(r, 50));
        status = ((await q.qmp('query-migrate')).return as { status?: string }).status ?? '';
      }
      expect(status).toBe('completed');
      const out = join(dir, 'mem.bin');
      expect(await q.qmp('pmemsave', { val: 0, size: 0x2000, filename: out })).toHaveProperty('return');
      const mem = new Uint8Array(readFileSync(out));
      expect(mem.subarray(0, 4096).every((b) => b === 0xab)).toBe(true);
      const expected = PATTERN.slice();
      expected[1] = 0x81;
      expect(mem.subarray(4096, 8192)).toEqual(expected);
      const st = (await q.qmp('query-status')).return as { status: string };
      expect(st.status).toBe('paused');
    } finally {
      q.proc.kill();
      await q.exit;
    }
  });

  it('rejects flags 0x2a (CONTINUE|PAGE|ZERO) with the same text our decoder gives, exiting with status 1', async () => {
    const bytes = buildStream(true);
    const file = join(dir, 'bad.mig');
    writeFileSync(file, bytes);
    const q = await startIncoming(file, 'bad');
    const code = await q.exit;
    expect(code).toBe(1);
    expect(q.stderr()).toContain('Unknown combination of migration flags: 0x2a');
    // Our decoder on the same record: CONTINUE|ZERO|PAGE.
    const e = protoErr(() => new RamRecordDecoder().decode(cur(hex('000000000000202a'))));
    expect(e.message).toContain('Unknown combination of migration flags: 0x2a');
  });
});
