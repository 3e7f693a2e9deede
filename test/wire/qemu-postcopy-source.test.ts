/**
 * Interop: a real QEMU 7.2 source doing postcopy migrates into a socket we
 * own; the whole stream (commands, the PACKAGED blob parsed with a sub-reader,
 * postcopy RAM records) is decoded with our codecs, and we answer PINGs and
 * send SHUT 0 on the return path so QEMU completes. Skips without QEMU.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Command } from '../../src/wire/command.js';
import { decodeGlobalState } from '../../src/wire/globalstate.js';
import { type RamRecord, RamRecordDecoder } from '../../src/wire/ram.js';
import { StreamReader } from '../../src/wire/reader.js';
import { encodeRpMessage } from '../../src/wire/return-path.js';
import { decodeFooter, decodeSection, decodeStreamStart } from '../../src/wire/stream.js';
import { ByteWriter } from '../../src/wire/writer.js';
import { connectRetry } from './helpers.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const dir = mkdtempSync(join(tmpdir(), 'wire-qemu-src-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Opaque device sizes for -M none -nodefaults (SPEC §11.1). */
const OPAQUE: Record<string, number> = { timer: 24 };

interface Log {
  items: string[];
  commands: Command[];
  discards: Command[];
  pages: RamRecord[];
  runstate?: string;
}

function reply(sock: Socket, m: Parameters<typeof encodeRpMessage>[1]): void {
  const w = new ByteWriter(32);
  encodeRpMessage(w, m);
  sock.write(w.toBytes());
}

/** Parse items from `r` until EOF (main stream) or RUN (package). */
async function parseItems(
  r: StreamReader,
  sock: Socket,
  ram: RamRecordDecoder,
  names: Map<number, string>,
  log: Log,
  prefix: string,
): Promise<'eof' | 'run'> {
  for (;;) {
    const s = await r.decode(decodeSection);
    if (s.kind === 'eof') {
      log.items.push(prefix + 'eof');
      return 'eof';
    }
    if (s.kind === 'vmdesc') throw new Error('postcopy streams have no vmdesc');
    if (s.kind === 'command') {
      const c = s.command;
      log.items.push(prefix + c.kind + (c.kind === 'ping' ? ` ${c.value}` : ''));
      log.commands.push(c);
      if (c.kind === 'ping') reply(sock, { kind: 'pong', value: c.value });
      if (c.kind === 'postcopyRamDiscard') log.discards.push(c);
      if (c.kind === 'postcopyRun') return 'run';
      if (c.kind === 'packaged') {
        const sub = r.subReader(c.length);
        expect(await parseItems(sub, sock, ram, names, log, 'pkg:')).toBe('run');
        await sub.discardRest();
        ram.postcopy = true;
      }
      continue;
    }
    if (s.kind === 'start' || s.kind === 'full') names.set(s.sectionId, s.idstr);
    const idstr = names.get(s.sectionId)!;
    log.items.push(`${prefix}${s.kind}:${idstr}`);
    if (idstr === 'ram') {
      for (;;) {
        const rec = await r.decode((c) => ram.decode(c));
        if (rec.kind === 'eos') break;
        if (rec.kind !== 'memSize') log.pages.push(rec);
      }
    } else if (idstr === 'globalstate') {
      log.runstate = await r.decode(decodeGlobalState);
    } else {
      await r.skip(OPAQUE[idstr]!);
    }
    await r.decode((c) => decodeFooter(c, s.sectionId, idstr));
  }
}

describe.skipIf(!existsSync(QEMU))('a real QEMU 7.2 postcopy source, decoded by our codecs', () => {
  it('precopy start, migrate-start-postcopy, package, postcopy pages, EOF; QEMU completes', async () => {
    const qmpSock = join(dir, 'qmp.sock');
    const migSock = join(dir, 'mig.sock');
    const log: Log = { items: [], commands: [], discards: [], pages: [] };
    let parsed!: Promise<void>;
    const server = createServer((sock: Socket) => {
      sock.on('error', () => undefined);
      parsed = (async () => {
        const r = new StreamReader(sock);
        const { configuration } = await r.decode((c) => decodeStreamStart(c));
        expect(configuration).toEqual({ machineName: 'none' });
        const end = await parseItems(r, sock, new RamRecordDecoder(), new Map(), log, '');
        expect(end).toBe('eof');
        reply(sock, { kind: 'shut', value: 0 });
      })();
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
      let buf = '';
      const waiting: ((m: Record<string, unknown>) => void)[] = [];
      q.on('data', (d) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const m = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
          buf = buf.slice(nl + 1);
          if ('return' in m || 'error' in m) waiting.shift()?.(m);
        }
      });
      const qmp = (cmd: string, args?: object): Promise<Record<string, unknown>> =>
        new Promise((res) => {
          waiting.push(res);
          q.write(JSON.stringify({ execute: cmd, arguments: args }) + '\n');
        });
      await qmp('qmp_capabilities');
      await qmp('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
      await qmp('migrate-set-parameters', { 'max-bandwidth': 4096 }); // precopy would take ~2 s
      expect(await qmp('migrate', { uri: `unix:${migSock}` })).toHaveProperty('return');
      await new Promise((r) => setTimeout(r, 300));
      expect(await qmp('migrate-start-postcopy')).toHaveProperty('return');
      let status = '';
      for (let i = 0; i < 200 && status !== 'completed' && status !== 'failed'; i++) {
        await new Promise((r) => setTimeout(r, 50));
        status = ((await qmp('query-migrate')).return as { status?: string }).status ?? '';
      }
      await parsed;
      expect(status).toBe('completed');
      q.destroy();
    } catch (e) {
      throw new Error(`${String(e)}\nitems: ${log.items.slice(0, 40).join(', ')}\nQEMU stderr:\n${stderr}`);
    } finally {
      proc.kill();
      await exited;
      server.close();
    }
    const head = log.items.slice(0, 5);
    expect(head).toEqual(['openReturnPath', 'ping 1', 'postcopyAdvise', 'start:ram', 'part:ram']);
    expect(log.commands[2]).toEqual({ kind: 'postcopyAdvise', ram: { pageSizeSummary: 0x1000, targetPageSize: 0x1000 } });
    const pkgStart = log.items.indexOf('packaged');
    expect(log.items.slice(pkgStart - 1, pkgStart + 1)).toEqual(['ping 2', 'packaged']);
    const pkgItems = log.items.filter((i) => i.startsWith('pkg:'));
    expect(pkgItems).toEqual(['pkg:postcopyListen', 'pkg:full:timer', 'pkg:full:globalstate', 'pkg:ping 3', 'pkg:postcopyRun']);
    expect(log.items[pkgStart + pkgItems.length + 1]).toBe('ping 4');
    expect(log.items.at(-2)).toBe('end:ram');
    expect(log.items.at(-1)).toBe('eof');
    expect(log.runstate).toBe('prelaunch');
    // Discards come before the package, name block "ram", page-aligned ranges.
    expect(log.discards.length).toBeGreaterThan(0);
    expect(log.items.indexOf('postcopyRamDiscard')).toBeLessThan(pkgStart);
    for (const d of log.discards) {
      if (d.kind !== 'postcopyRamDiscard') continue;
      expect(d.blockName).toBe('ram');
      expect(d.ranges.length).toBeLessThanOrEqual(12);
      for (const r of d.ranges) expect(r.start % 4096 + (r.length % 4096)).toBe(0);
    }
    // Every page of the 4 MiB block arrives exactly once overall.
    const offsets = log.pages.map((p) => ('offset' in p ? p.offset : -1));
    expect(new Set(offsets).size).toBe(1024);
    expect(offsets.length).toBe(1024);
  });
});
