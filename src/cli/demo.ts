/**
 * `postcopy demo` (`npm start`): two `postcopy vm` processes on loopback, a
 * 256 MiB guest whose workload dirties memory, a live precopy migration with
 * XBZRLE and a progress bar, a summary, and a check that both RAMs are
 * identical (x-ram-digest after the source stopped). Exit 0 only if verified.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient } from '../control/qmp-client.js';
import type { Verb } from './main.js';

const MiB = 1 << 20;
const BIN = fileURLToPath(new URL('../../../bin/postcopy.js', import.meta.url));

const HELP = `usage: postcopy demo [--ram SIZE_MIB] [--workload SPEC] [--no-xbzrle]

Migrates a running simulated VM between two \`postcopy vm\` processes on
loopback and verifies that the destination's RAM equals the source's.`;

interface DemoOptions {
  ramMiB: number;
  workload: string;
  xbzrle: boolean;
}

interface RamStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  mbps: number;
  'dirty-sync-count': number;
  'dirty-pages-rate': number;
}
interface Info {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: RamStats;
  'xbzrle-cache'?: { 'cache-size': number; bytes: number; pages: number; 'cache-miss': number; overflow: number; 'encoding-rate': number };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const mib = (b: number): string => `${(b / MiB).toFixed(1)} MiB`;

function startVm(dir: string, name: string, args: string[]): { child: ChildProcess; qmpPath: string; stderr: () => string } {
  const qmpPath = path.join(dir, `${name}.qmp`);
  const child = spawn(process.execPath, [BIN, 'vm', ...args, '--qmp', `unix:${qmpPath}`], { stdio: ['ignore', 'inherit', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err += d));
  return { child, qmpPath, stderr: () => err };
}

async function qmpConnect(p: string): Promise<QmpClient> {
  for (let i = 0; ; i++) {
    try {
      return await QmpClient.connect(p, { timeoutMs: 2000 });
    } catch (e) {
      if (i > 200) throw e;
      await sleep(25);
    }
  }
}

function bar(fraction: number, width = 30): string {
  const n = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return '[' + '#'.repeat(n) + '.'.repeat(width - n) + ']';
}

/** Runs the demo; resolves to the exit code. Progress goes to stderr, the summary to stdout. */
export async function runDemo(o: DemoOptions, out: (s: string) => void = (s) => process.stdout.write(s + '\n')): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-demo-'));
  const procs: ChildProcess[] = [];
  const clients: QmpClient[] = [];
  try {
    // A guest image: the first quarter random, the rest zero pages.
    const image = path.join(dir, 'src.ram');
    const fd = fs.openSync(image, 'w');
    const chunk = Buffer.alloc(4 * MiB);
    for (let off = 0; off < o.ramMiB * MiB; off += chunk.length) {
      if (off < (o.ramMiB * MiB) / 4) randomFillSync(chunk);
      else chunk.fill(0);
      fs.writeSync(fd, chunk, 0, chunk.length, off);
    }
    fs.closeSync(fd);
    const src = startVm(dir, 'src', ['--machine', 'none', '--ram', `${o.ramMiB}M`, '--mem-path', image, '--workload', o.workload]);
    const dst = startVm(dir, 'dst', ['--machine', 'none', '--ram', `${o.ramMiB}M`, '--incoming', 'defer']);
    procs.push(src.child, dst.child);
    const sq = await qmpConnect(src.qmpPath);
    const dq = await qmpConnect(dst.qmpPath);
    clients.push(sq, dq);
    const caps = [
      { capability: 'xbzrle', state: o.xbzrle },
      { capability: 'events', state: true },
      { capability: 'return-path', state: true },
    ];
    await sq.execute('migrate-set-capabilities', { capabilities: caps });
    await dq.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    await sq.execute('migrate-set-parameters', { 'max-bandwidth': 64 * MiB, 'downtime-limit': 300, 'xbzrle-cache-size': 32 * MiB });
    await dq.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const di = await dq.execute<{ 'socket-address'?: { port: string }[] }>('query-migrate');
    const port = di['socket-address']?.[0]?.port;
    if (!port) throw new Error('destination did not report its port');
    out(`postcopy demo: ${o.ramMiB} MiB guest, workload ${o.workload}, precopy over tcp:127.0.0.1:${port}${o.xbzrle ? ' with XBZRLE' : ''}`);
    await sleep(300); // let the workload dirty some memory first
    const t0 = performance.now();
    await sq.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    let info: Info = {};
    let xbzrle: Info['xbzrle-cache'];
    let lastPrint = 0;
    const tty = process.stderr.isTTY;
    for (;;) {
      info = await sq.execute<Info>('query-migrate');
      const st = info.status ?? 'none';
      if (st === 'completed' && !info['total-time']) continue;
      if (st === 'completed' || st === 'failed' || st === 'cancelled') break;
      const r = info.ram;
      if (info['xbzrle-cache']) xbzrle = info['xbzrle-cache'];
      if (r && (tty || performance.now() - lastPrint >= 500)) {
        lastPrint = performance.now();
        const done = r.total > 0 ? 1 - r.remaining / r.total : 0;
        const line = `${bar(done)} ${st.padEnd(9)} pass ${r['dirty-sync-count']} remaining ${mib(r.remaining).padStart(10)} rate ${r.mbps.toFixed(0).padStart(5)} Mbps sent ${mib(r.transferred)}`;
        process.stderr.write(tty ? `\r${line}` : `${line}\n`);
      }
      if (performance.now() - t0 > 60_000) {
        await sq.execute('migrate_cancel');
      }
      await sleep(100);
    }
    if (tty) process.stderr.write('\n');
    if (info.status !== 'completed') {
      out(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
      return 1;
    }
    // The destination finishes loading after the source's SHUT wait; wait for it.
    for (let i = 0; i < 500; i++) {
      const d = await dq.execute<Info>('query-migrate');
      if (d.status === 'completed' || d.status === 'failed') break;
      await sleep(20);
    }
    const r = info.ram!;
    out(`completed in ${info['total-time']} ms (setup ${info['setup-time']} ms), downtime ${info.downtime} ms`);
    out(`transferred ${mib(r.transferred)} of ${mib(r.total)} RAM, ${r['dirty-sync-count']} passes, ${r.mbps.toFixed(0)} Mbps`);
    out(`pages: ${r.normal} normal, ${r.duplicate} zero`);
    if (xbzrle) {
      out(
        `xbzrle: ${xbzrle.pages} pages, ${mib(xbzrle.bytes)} encoded, ${xbzrle['cache-miss']} cache misses, ${xbzrle.overflow} overflows (cache ${mib(xbzrle['cache-size'])}, at the last progress report)`,
      );
    }
    const sstat = await sq.execute<{ status: string }>('query-status');
    const dstat = await dq.execute<{ status: string }>('query-status');
    out(`run states: source ${sstat.status}, destination ${dstat.status}`);
    const sd = await sq.execute<{ blocks: { idstr: string; sha256: string }[] }>('x-ram-digest');
    const dd = await dq.execute<{ blocks: { idstr: string; sha256: string }[] }>('x-ram-digest');
    const same = JSON.stringify(sd.blocks) === JSON.stringify(dd.blocks) && sd.blocks.length > 0;
    out(`verify: ${same ? 'RAM identical' : 'RAM DIFFERS'} (sha256 ${sd.blocks[0]?.sha256.slice(0, 16)}… vs ${dd.blocks[0]?.sha256.slice(0, 16)}…)`);
    return same ? 0 : 1;
  } finally {
    for (const c of clients) {
      await c.execute('quit', {}, { timeoutMs: 2000 }).catch(() => undefined);
      await c.close().catch(() => undefined);
    }
    await sleep(100);
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export const verb: Verb = {
  summary: 'migrate a running simulated VM between two local processes and verify its RAM',
  async run(args: string[]): Promise<number> {
    const o: DemoOptions = { ramMiB: 256, workload: 'pattern=hot,rate=50000,bytes=64,wss=16M', xbzrle: true };
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      if (a === '-h' || a === '--help') {
        console.log(HELP);
        return 0;
      } else if (a === '--ram') o.ramMiB = Number(args[++i]);
      else if (a === '--workload') o.workload = args[++i] ?? o.workload;
      else if (a === '--no-xbzrle') o.xbzrle = false;
      else {
        console.error(`postcopy demo: unknown option '${a}'\n\n${HELP}`);
        return 2;
      }
    }
    if (!Number.isInteger(o.ramMiB) || o.ramMiB < 1) {
      console.error('postcopy demo: --ram takes a whole number of MiB');
      return 2;
    }
    return runDemo(o);
  },
};
