/**
 * Migration benchmark (`npm run bench:migrate`): 1 GiB of random RAM and
 * 1 GiB of zero RAM, stopped source (-S), precopy over tcp loopback, our
 * `postcopy vm` → `postcopy vm` beside QEMU 7.2 → QEMU 7.2 (-M none, RAM in
 * a /dev/shm file holding the same bytes), max-bandwidth 10 GiB/s on both,
 * rounds interleaved. Prints per round and medians: query-migrate total-time,
 * wall-clock from `migrate` to the source's `completed` event and to the
 * destination's, bytes on the wire, GB/s, and ours/QEMU. Every run is
 * verified: destination RAM digest = SHA-256 of the source file.
 *
 * Four implementations per round (see Impl): QEMU with the destination's
 * RAM in a file (the reference the issue names) and anonymous (huge pages),
 * ours with huge pages and with 4 KiB pages. On a virtual machine, first
 * touches of fresh RAM dominate loading it, so the page size decides a lot.
 *
 * When ours is slower on random RAM (or with --profile), one more round
 * of ours runs under `node --cpu-prof` and the profile of both processes,
 * limited to the migration window, is summarised by layer and function.
 *
 * Options: --rounds N (default 3), --size MiB (default 1024), --profile,
 * --no-profile, --only random|zero.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { printTable } from './lib/timing.js';
import {
  cleanupAll,
  counterDelta,
  finalInfo,
  procCounters,
  qemuBinary,
  scratchDir,
  sha256File,
  startQemu,
  startVm,
  tempPath,
  waitMigrationEvent,
  writeRamFile,
  type Peer,
  type ProcCounters,
} from './lib/peers.js';
import { summariseProfile } from './lib/profile.js';

const MiB = 1 << 20;
const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const ROUNDS = Number(opt('--rounds') ?? 3);
const RAM_BYTES = Number(opt('--size') ?? 1024) * MiB;
const MAX_BANDWIDTH = 10737418240; // 10 GiB/s, in bytes per second as QMP takes it
const TIMEOUT_MS = 60_000;
const only = opt('--only');

/**
 * qemu: QEMU → QEMU with the destination's RAM in a fresh /dev/shm file (the
 * issue's reference; shmem gets no transparent huge pages here). qemu-anon:
 * the destination's RAM anonymous (memory-backend-ram), which QEMU advises
 * for huge pages. ours: postcopy vm → postcopy vm, RAM advised for huge
 * pages when the native helper is built. ours-4k: the same with
 * POSTCOPY_NO_THP=1 (4 KiB pages), the A/B of the advice.
 */
type Impl = 'qemu' | 'qemu-anon' | 'ours' | 'ours-4k';
const IMPLS: readonly Impl[] = ['qemu', 'qemu-anon', 'ours', 'ours-4k'];
const LABEL: Record<Impl, string> = {
  qemu: 'QEMU→QEMU',
  'qemu-anon': 'QEMU→QEMU anon',
  ours: 'ours→ours',
  'ours-4k': 'ours→ours 4K',
};
interface RunResult {
  kind: string;
  round: number;
  impl: Impl;
  totalTimeMs: number;
  wallMs: number;
  destDoneMs: number;
  transferred: number;
  verified: boolean;
  digest: string;
  /** CPU time and minor faults of each process from `migrate` to the destination's `completed`. */
  srcCpu: ProcCounters;
  dstCpu: ProcCounters;
}

/** A TCP port free right now on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const nsToMs = (ns: bigint): number => Number(ns) / 1e6;

/**
 * One migration src → dst: events on both, max-bandwidth on the source,
 * `migrate`, then wait for `completed` on both. Returns the figures and
 * the hrtime window [t0, tDest] (ns).
 */
interface Migrated {
  info: Record<string, unknown>;
  t0: bigint;
  tSrc: bigint;
  tDst: bigint;
  srcCpu: ProcCounters;
  dstCpu: ProcCounters;
}
async function migrateOnce(src: Peer, dst: Peer, port: number): Promise<Migrated> {
  const events = { capabilities: [{ capability: 'events', state: true }] };
  await dst.qmp.execute('migrate-set-capabilities', events);
  await src.qmp.execute('migrate-set-capabilities', events);
  await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH });
  const srcDone = waitMigrationEvent(src.qmp, 'completed', TIMEOUT_MS);
  const dstDone = waitMigrationEvent(dst.qmp, 'completed', TIMEOUT_MS);
  srcDone.catch(() => undefined);
  dstDone.catch(() => undefined);
  const dstDied = dst.exited.then((code) => {
    throw new Error(`${dst.name} exited with ${code} during the migration: ${dst.stderr().trim()}`);
  });
  dstDied.catch(() => undefined);
  const src0 = procCounters(src.child.pid);
  const dst0 = procCounters(dst.child.pid);
  const t0 = process.hrtime.bigint();
  await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
  const tSrc = await Promise.race([srcDone, dstDied]);
  const tDst = await Promise.race([dstDone, dstDied]);
  const srcCpu = counterDelta(src0, procCounters(src.child.pid));
  const dstCpu = counterDelta(dst0, procCounters(dst.child.pid));
  const info = await finalInfo(src.qmp);
  return { info, t0, tSrc, tDst, srcCpu, dstCpu };
}

async function runQemu(kind: string, round: number, srcFile: string, ref: string, anon: boolean): Promise<RunResult> {
  const dstFile = tempPath(`/dev/shm/postcopy-bench-${process.pid}-dst-qemu.ram`);
  fs.rmSync(dstFile, { force: true });
  if (!anon) {
    fs.closeSync(fs.openSync(dstFile, 'w'));
    fs.truncateSync(dstFile, RAM_BYTES); // fresh (zero, not yet allocated) RAM, as a new guest has
  }
  const port = await freePort();
  const peers: Peer[] = [];
  try {
    const dst = await startQemu({ ramBytes: RAM_BYTES, memPath: anon ? undefined : dstFile, incoming: `tcp:127.0.0.1:${port}` });
    peers.push(dst);
    const src = await startQemu({ ramBytes: RAM_BYTES, memPath: srcFile });
    peers.push(src);
    const m = await migrateOnce(src, dst, port);
    // Anonymous RAM is read back with pmemsave (-M none maps RAM at 0), after the timing.
    if (anon) await dst.qmp.execute('pmemsave', { val: 0, size: RAM_BYTES, filename: dstFile });
    const digest = sha256File(dstFile);
    return result(kind, round, anon ? 'qemu-anon' : 'qemu', m, digest, ref);
  } finally {
    await Promise.all(peers.map((p) => p.stop()));
    fs.rmSync(dstFile, { force: true });
  }
}

async function runOurs(kind: string, round: number, srcFile: string, ref: string, noThp: boolean, cpuProfDir?: string): Promise<RunResult & { window: [bigint, bigint] }> {
  const port = await freePort();
  const peers: Peer[] = [];
  try {
    const dst = await startVm({ ramBytes: RAM_BYTES, incoming: `tcp:127.0.0.1:${port}`, cpuProfDir, noThp });
    peers.push(dst);
    const src = await startVm({ ramBytes: RAM_BYTES, memPath: srcFile, cpuProfDir, noThp });
    peers.push(src);
    const m = await migrateOnce(src, dst, port);
    const d = await dst.qmp.execute<{ blocks: Array<{ idstr: string; sha256: string }> }>('x-ram-digest');
    const digest = d.blocks.length === 1 && d.blocks[0]!.idstr === 'ram' ? d.blocks[0]!.sha256 : JSON.stringify(d.blocks);
    // With --cpu-prof, exit cleanly (SIGTERM → quit) so node writes the profile.
    if (cpuProfDir) await Promise.all(peers.map((p) => p.stop('SIGTERM')));
    return { ...result(kind, round, noThp ? 'ours-4k' : 'ours', m, digest, ref), window: [m.t0, m.tDst] };
  } finally {
    await Promise.all(peers.map((p) => p.stop()));
  }
}

function result(kind: string, round: number, impl: Impl, m: Migrated, digest: string, ref: string): RunResult {
  const { info, t0, tSrc, tDst } = m;
  const ram = (info['ram'] ?? {}) as Record<string, number>;
  return {
    kind,
    round,
    impl,
    totalTimeMs: Number(info['total-time']),
    wallMs: nsToMs(tSrc - t0),
    destDoneMs: nsToMs(tDst - t0),
    transferred: Number(ram['transferred'] ?? NaN),
    verified: digest === ref,
    digest,
    srcCpu: m.srcCpu,
    dstCpu: m.dstCpu,
  };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const gbps = (bytes: number, ms: number): string => (bytes / 1e6 / ms).toFixed(2);
const mb = (b: number): string => (b / 1e6).toFixed(1);
const cpu = (c: ProcCounters): string => `${c.userMs.toFixed(0)}+${c.sysMs.toFixed(0)}`;
const cpuMs = (c: ProcCounters): number => c.userMs + c.sysMs;

function printRounds(kind: string, rs: RunResult[]): void {
  printTable(
    `${kind}: ${RAM_BYTES / MiB} MiB, per round (GB/s = RAM size / total-time; wire = transferred / total-time)`,
    ['round', 'impl', 'total-time ms', 'wall ms', 'dest done ms', 'transferred MB', 'GB/s', 'wire GB/s', 'src cpu usr+sys ms', 'dst cpu usr+sys ms', 'dst faults', 'verified'],
    rs.map((r) => [
      `${r.round}`,
      LABEL[r.impl],
      `${r.totalTimeMs}`,
      r.wallMs.toFixed(1),
      r.destDoneMs.toFixed(1),
      mb(r.transferred),
      gbps(RAM_BYTES, r.totalTimeMs),
      gbps(r.transferred, r.totalTimeMs),
      cpu(r.srcCpu),
      cpu(r.dstCpu),
      `${r.dstCpu.minflt}`,
      r.verified ? `ok ${r.digest.slice(0, 12)}` : `MISMATCH ${r.digest.slice(0, 12)}`,
    ]),
  );
}

interface Medians {
  total: number;
  wall: number;
  dest: number;
  transferred: number;
  srcCpu: number;
  dstCpu: number;
}
function medians(rs: RunResult[], impl: Impl): Medians {
  const m = rs.filter((r) => r.impl === impl);
  return {
    total: median(m.map((r) => r.totalTimeMs)),
    wall: median(m.map((r) => r.wallMs)),
    dest: median(m.map((r) => r.destDoneMs)),
    transferred: median(m.map((r) => r.transferred)),
    srcCpu: median(m.map((r) => cpuMs(r.srcCpu))),
    dstCpu: median(m.map((r) => cpuMs(r.dstCpu))),
  };
}

async function benchKind(kind: string, fill: (c: Buffer, off: number) => void): Promise<{ rs: RunResult[]; srcFile: string; ref: string }> {
  const srcFile = `/dev/shm/postcopy-bench-${process.pid}-src-${kind}.ram`;
  const t = Date.now();
  const ref = writeRamFile(srcFile, RAM_BYTES, fill);
  console.log(`\n${kind}: source RAM file ${srcFile} sha256 ${ref.slice(0, 16)}… (${Date.now() - t} ms to make)`);
  const rs: RunResult[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    // Interleaved, alternating the order.
    const order = round % 2 ? [...IMPLS] : [...IMPLS].reverse();
    for (const impl of order) {
      const r = impl.startsWith('qemu')
        ? await runQemu(kind, round, srcFile, ref, impl === 'qemu-anon')
        : await runOurs(kind, round, srcFile, ref, impl === 'ours-4k');
      rs.push(r);
      if (!r.verified) console.log(`  ${kind} round ${round} ${impl}: destination RAM differs from the source!`);
    }
  }
  rs.sort((a, b) => a.round - b.round || IMPLS.indexOf(a.impl) - IMPLS.indexOf(b.impl));
  printRounds(kind, rs);
  return { rs, srcFile, ref };
}

function printSummary(all: Array<{ kind: string; rs: RunResult[] }>): void {
  const rows: string[][] = [];
  for (const { kind, rs } of all) {
    const ok = (impl: Impl): string => {
      const m = rs.filter((r) => r.impl === impl);
      return `${m.filter((r) => r.verified).length}/${m.length}`;
    };
    const m = Object.fromEntries(IMPLS.map((impl) => [impl, medians(rs, impl)])) as Record<Impl, Medians>;
    for (const impl of IMPLS) {
      const v = m[impl];
      rows.push([kind, LABEL[impl], `${v.total}`, v.wall.toFixed(1), v.dest.toFixed(1), mb(v.transferred), gbps(RAM_BYTES, v.total), v.srcCpu.toFixed(0), v.dstCpu.toFixed(0), ok(impl)]);
    }
    const x = (a: number, b: number): string => `${(a / b).toFixed(2)}×`;
    const ratios: Array<[string, Impl, Impl]> = [
      ['ours/QEMU', 'ours', 'qemu'],
      ['ours/QEMU anon', 'ours', 'qemu-anon'],
      ['ours 4K/QEMU', 'ours-4k', 'qemu'],
    ];
    for (const [name, a, b] of ratios) {
      const o = m[a];
      const q = m[b];
      rows.push([kind, name, x(o.total, q.total), x(o.wall, q.wall), x(o.dest, q.dest), x(o.transferred, q.transferred), '', x(o.srcCpu, q.srcCpu), x(o.dstCpu, q.dstCpu), '']);
    }
  }
  printTable(
    `Medians of ${ROUNDS} rounds (ratio > 1 = ours slower / more bytes / more CPU)`,
    ['RAM', 'impl', 'total-time ms', 'wall ms', 'dest done ms', 'transferred MB', 'GB/s', 'src cpu ms', 'dst cpu ms', 'verified'],
    rows,
  );
}

async function profileOurs(srcFile: string, ref: string): Promise<void> {
  const dir = tempPath(path.join(scratchDir, 'cpuprof'));
  fs.mkdirSync(dir, { recursive: true });
  const r = await runOurs('random', 0, srcFile, ref, false, dir);
  console.log(`\nProfile: one more round of ours under node --cpu-prof: total-time ${r.totalTimeMs} ms, wall ${r.wallMs.toFixed(1)} ms, CPU usr+sys source ${cpu(r.srcCpu)} ms, destination ${cpu(r.dstCpu)} ms, verified ${r.verified ? 'ok' : 'MISMATCH'}`);
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const from = Number(r.window[0] / 1000n);
  const to = Number(r.window[1] / 1000n);
  for (const f of files.sort()) {
    const s = summariseProfile(path.join(dir, f), from, to);
    const idle = s.byLayer.find(([k]) => k === '(idle)')?.[1] ?? 0;
    // The source loads RAM from the file before the window; only its process has ram-file work outside.
    const role = s.byFunction.some(([k]) => k.includes('source/')) ? 'SOURCE' : 'DESTINATION';
    console.log(`\n${role} process (${f}): ${s.windowMs.toFixed(0)} ms sampled in the migration window, ${idle.toFixed(0)} ms idle`);
    const pct = (ms: number): string => `${((100 * ms) / s.windowMs).toFixed(1)} %`;
    printTable('  self time by layer', ['layer', 'ms', 'share'], s.byLayer.slice(0, 12).map(([k, ms]) => [k, ms.toFixed(1), pct(ms)]));
    printTable('  self time by function (top 15)', ['function', 'ms', 'share'], s.byFunction.slice(0, 15).map(([k, ms]) => [k.slice(0, 110), ms.toFixed(1), pct(ms)]));
    printTable('  self time charged to the nearest function of ours up the stack (top 12)', ['owner', 'ms', 'share'], s.byOwner.slice(0, 12).map(([k, ms]) => [k.slice(0, 110), ms.toFixed(1), pct(ms)]));
  }
}

async function main(): Promise<number> {
  if (!fs.existsSync(qemuBinary)) {
    console.error(`bench:migrate needs QEMU 7.2 at ${qemuBinary} (or $QEMU)`);
    return 2;
  }
  const t = Date.now();
  console.log(`bench:migrate — ${RAM_BYTES / MiB} MiB, ${ROUNDS} rounds interleaved, stopped sources, tcp loopback, max-bandwidth ${MAX_BANDWIDTH}`);
  const load = (): string => os.loadavg().map((l) => l.toFixed(1)).join(' ');
  console.log(`load average ${load()} on ${os.cpus().length} CPUs: on a loaded host wall-clock includes waiting for a CPU; the usr+sys columns do not`);
  const all: Array<{ kind: string; rs: RunResult[] }> = [];
  let random: { rs: RunResult[]; srcFile: string; ref: string } | undefined;
  if (only !== 'zero') {
    // AES-128-CTR keystream under a fresh random key: incompressible, no page repeats, ~GB/s.
    const aes = createCipheriv('aes-128-ctr', randomBytes(16), randomBytes(16));
    random = await benchKind('random', (c) => {
      c.fill(0);
      c.set(aes.update(c));
    });
    all.push({ kind: 'random', rs: random.rs });
  }
  if (only !== 'random') {
    const zero = await benchKind('zero', (c) => c.fill(0));
    all.push({ kind: 'zero', rs: zero.rs });
    fs.rmSync(zero.srcFile, { force: true });
  }
  printSummary(all);
  const failures = all.flatMap((a) => a.rs).filter((r) => !r.verified).length;
  console.log(failures ? `\nVERIFICATION FAILED in ${failures} run(s)` : `\nAll ${all.flatMap((a) => a.rs).length} runs verified (destination RAM sha256 = source file).`);
  if (random && !argv.includes('--no-profile')) {
    const q = medians(random.rs, 'qemu');
    const o = medians(random.rs, 'ours');
    if (argv.includes('--profile') || o.wall > q.wall) await profileOurs(random.srcFile, random.ref);
  }
  console.log(`\nload average ${load()}; bench:migrate done in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  return failures ? 1 : 0;
}

main().then(
  (code) => {
    cleanupAll();
    process.exit(code);
  },
  (err: unknown) => {
    console.error(`bench:migrate: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    cleanupAll();
    process.exit(1);
  },
);
