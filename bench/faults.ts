/**
 * Postcopy fault-latency benchmark (`npm run bench:faults`, issue 4 §6):
 * our source → our destination over tcp loopback, each in its own process,
 * 1 GiB of random RAM on a stopped source, postcopy switchover at once. The
 * destination faults random not-yet-received pages through the fault API
 * (ensure()), one at a time, and times each round trip (it stops once
 * fewer than 10 % of the pages are missing: those are mostly in flight in
 * the background stream already):
 *   1. idle phase: background scan throttled to ~0 (max-postcopy-bandwidth
 *      1 B/s) — the idle round trip, same connection, same run;
 *   2. loaded phase: max-postcopy-bandwidth 0 (full speed) until completed.
 * Prints p50/p99/max of both, the background GB/s of the loaded phase, the
 * machine load, and the targets (p50 ≤ 100 µs, p99 ≤ 1 ms, ≥ 1 GB/s) with
 * met / NOT met. The destination's RAM is checked against the source's.
 * The last line is `RESULT {json}` (bench/lib/fault-stats.ts).
 *
 * Options: --quick (256 MiB), --size MiB (default 1024), --warmup-faults N
 * (default 2000: faults made and not counted before the idle phase, which
 * would otherwise time the JIT's warm-up; bounded by --idle-ms too),
 * --idle-faults N (default 2000), --idle-ms ms (default 1500 or 500 quick), --design
 * NAME[,NAME…] (default preempt: requests served on a postcopy-preempt
 * channel, senders and loaders yielding every 0.1 ms, the source's urgent
 * worker serving requests and the destination's bulk worker reading the
 * background; preempt-main: the same without those worker threads, everything
 * on the main threads; preempt-1ms: the same
 * with the ordinary 1 ms postcopy yields; preempt-pacedN: preempt with the
 * background paced to N MB/s (default 400) instead of full speed — not the
 * issue's set-up, a reference point; preempt-nopriority: preempt with the
 * fault-path threads left at the peers' priority; baseline: requests on the
 * main channel), --fault-priority N|none (default -20: the engines'
 * faultPriority, the nice value of the threads on the fault path — the
 * source's urgent worker, the destination's thread — for every design but
 * preempt-nopriority; raising it needs root), --rounds N (default 1; several
 * designs run interleaved, a summary of medians follows), --priority N
 * (nice value of both peers; default: inherited), --profile (one more
 * round of the first design with both peers under node --cpu-prof, a
 * phase summarised by layer and function; --profile-phase idle|loaded,
 * default loaded; --profile-interval µs, the sampling interval), --no-floor
 * (skip measuring Node alone first; --quick skips it too). The RESULT line
 * is that of the last run.
 *
 * First, unless skipped, Node alone on this host in the same run
 * (lib/node-loopback.ts): a bulk stream and a request/reply round trip
 * between two processes with no migration code, printed beside the targets.
 */
import { fork, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import { printTable } from './lib/timing.js';
import { measureNodeLoopback, type LoopbackFigures } from './lib/node-loopback.js';
import { summariseProfile } from './lib/profile.js';
import type { ThreadPriority } from '../src/threads.js';
import type { DestPeerResult, PeerCommand, PeerEvent, SourcePeerResult } from './lib/fault-peer.js';
import {
  busyPct,
  fmtUs,
  machineJiffies,
  splitLegs,
  RESULT_PREFIX,
  summarise,
  targetChecks,
  type FaultBenchResult,
  type LatencySummary,
} from './lib/fault-stats.js';

const MiB = 1 << 20;
const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const quick = argv.includes('--quick');
const RAM_BYTES = Number(opt('--size') ?? (quick ? 256 : 1024)) * MiB;
const IDLE_FAULTS = Number(opt('--idle-faults') ?? 2000);
const WARMUP_FAULTS = Number(opt('--warmup-faults') ?? 2000);
const IDLE_MS = Number(opt('--idle-ms') ?? (quick ? 500 : 1500));
const DESIGNS = (opt('--design') ?? 'preempt').split(',');
const ROUNDS = Number(opt('--rounds') ?? 1);
const TIMEOUT_MS = Number(opt('--timeout-ms') ?? 120_000);
/** --priority N: run both peers at this nice value (root may go below 0) to shield the figures from other load. */
const PRIORITY = opt('--priority') === undefined ? undefined : Number(opt('--priority'));
/** --fault-priority N|none: the engines' faultPriority (default -20; none: threads left as they are). */
const FAULT_PRIORITY_OPT = opt('--fault-priority') ?? '-20';
const FAULT_PRIORITY = FAULT_PRIORITY_OPT === 'none' ? undefined : Number(FAULT_PRIORITY_OPT);
const PROFILE = argv.includes('--profile');
const NO_FLOOR = argv.includes('--no-floor') || quick;
/** --profile-phase idle|loaded (default loaded): the phase the profile summary covers. */
const PROFILE_PHASE = opt('--profile-phase') === 'idle' ? 'idle' : 'loaded';
/** --profile-interval µs: the sampling interval of --cpu-prof (node's default is 1000). */
const PROFILE_INTERVAL = opt('--profile-interval');
const peerPath = path.join(path.dirname(fileURLToPath(import.meta.url)), 'lib', 'fault-peer.js');

/** A forked peer with a typed message queue. */
class Peer {
  readonly child: ChildProcess;
  private readonly queue: PeerEvent[] = [];
  private waiter: (() => void) | undefined;
  private exitError: Error | undefined;

  constructor(
    readonly role: 'source' | 'destination',
    profileDir?: string,
  ) {
    const execArgv = profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-name', `${role}.cpuprofile`] : [];
    if (profileDir && PROFILE_INTERVAL) execArgv.push('--cpu-prof-interval', PROFILE_INTERVAL);
    this.child = fork(peerPath, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
    if (PRIORITY !== undefined) os.setPriority(this.child.pid!, PRIORITY);
    this.child.on('message', (m: PeerEvent) => {
      this.queue.push(m);
      this.waiter?.();
    });
    this.child.once('exit', (code, sig) => {
      this.exitError = new Error(`${role} exited (${code ?? sig}) before it reported`);
      this.waiter?.();
    });
  }

  send(c: PeerCommand): void {
    if (this.child.connected) this.child.send(c);
  }

  /** The next event of kind `ev` (earlier other events are dropped). */
  async next<K extends PeerEvent['ev']>(ev: K): Promise<Extract<PeerEvent, { ev: K }>> {
    for (;;) {
      const i = this.queue.findIndex((m) => m.ev === ev || m.ev === 'error');
      if (i >= 0) {
        const m = this.queue.splice(i, 1)[0]!;
        if (m.ev === 'error') throw new Error(`${this.role}: ${m.message}`);
        return m as Extract<PeerEvent, { ev: K }>;
      }
      if (this.exitError) throw this.exitError;
      await new Promise<void>((r) => (this.waiter = r));
      this.waiter = undefined;
    }
  }

  /** Resolves once the process has exited. */
  exited(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return Promise.resolve();
    return new Promise((r) => this.child.once('exit', () => r()));
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** The last run's idle and loaded phases in monotonic µs (the clock of .cpuprofile samples), as the destination saw them. */
let phaseWindows: Record<'idle' | 'loaded', [number, number]> = { idle: [0, 0], loaded: [0, 0] };

async function runOnce(DESIGN: string, profileDir?: string): Promise<FaultBenchResult> {
  const load0 = os.loadavg()[0]!;
  const dst = new Peer('destination', profileDir);
  const src = new Peer('source', profileDir);
  const timer = setTimeout(() => {
    console.error(`bench:faults: no result after ${TIMEOUT_MS} ms`);
    src.kill();
    dst.kill();
  }, TIMEOUT_MS);
  try {
    const faultPriority = DESIGN === 'preempt-nopriority' ? undefined : FAULT_PRIORITY;
    const common = { ramBytes: RAM_BYTES, design: DESIGN, warmupFaults: WARMUP_FAULTS, idleFaults: IDLE_FAULTS, idleMs: IDLE_MS, faultPriority };
    dst.send({ cmd: 'init', role: 'destination', ...common });
    const { port } = await dst.next('listening');
    src.send({ cmd: 'init', role: 'source', port, ...common });
    await dst.next('idleDone');
    src.send({ cmd: 'fullSpeed' });
    await src.next('fullSpeedOn');
    const j0 = machineJiffies();
    dst.send({ cmd: 'go' });
    const d: DestPeerResult = await dst.next('destResult');
    phaseWindows = { idle: d.idleWindowUs, loaded: d.loadedWindowUs };
    const j1 = machineJiffies();
    const s: SourcePeerResult = await src.next('sourceResult');
    const load1 = os.loadavg()[0]!;
    return {
      ramBytes: RAM_BYTES,
      design: DESIGN,
      idle: summarise(d.idleUs),
      loaded: summarise(d.loadedUs),
      destStats: d.stats,
      backgroundGBps: d.loadedBytes / 1e6 / d.loadedMs,
      loadedBytes: d.loadedBytes,
      loadedMs: d.loadedMs,
      backgroundReader: d.bulkWorker ? 'worker' : 'main thread',
      postcopyRequests: s.postcopyRequests,
      ignoredRequests: s.ignoredRequests,
      sourceStatus: s.status,
      destStatus: d.status,
      ramEqual: s.digest === d.digest,
      loadAvg: [load0, load1],
      machineBusyPct: busyPct(j0, j1),
      cpus: os.cpus().length,
      legs: splitLegs(d.legs, s.requestSeen),
      idleLegs: splitLegs(d.idleLegs, s.requestSeen),
      preemptPages: s.preemptPages,
      sourceCpu: s.cpu,
      destCpu: d.cpu,
      faultPriority,
      sourcePriority: s.priority,
      destPriority: d.priority,
    };
  } finally {
    clearTimeout(timer);
    if (profileDir) for (const p of [src, dst]) p.send({ cmd: 'exit' });
    if (profileDir) await Promise.race([Promise.all([src.exited(), dst.exited()]), new Promise((r) => setTimeout(r, 5000))]);
    src.kill();
    dst.kill();
  }
}

/** ", main threads at nice N" (and why not the one asked for), or nothing when unchanged. */
function niceOf(p: ThreadPriority[] | undefined): string {
  if (!p) return '';
  const errors = [...new Set(p.flatMap((t) => (t.error ? [t.error] : [])))];
  return `, main threads at nice ${[...new Set(p.map((t) => t.nice))].join('/')}${errors.length ? ` (${errors.join('; ')})` : ''}`;
}

function reportFloor(f: LoopbackFigures): void {
  printTable(
    'Node alone on this host, same run (two processes, TCP loopback, no migration code): the floor of one event loop per process',
    ['what', 'figure'],
    [
      ['bulk stream, 1 MiB writes, read with data events, copied into a prefaulted ring', `${f.streamDataGBps.toFixed(2)} GB/s`],
      ['bulk stream, read into a reused buffer (onread)', `${f.streamOnreadGBps.toFixed(2)} GB/s`],
      ['request/reply 16 B → 4 KiB, idle: p50 / p99 / max', `${fmtUs(f.idle.p50Us)} / ${fmtUs(f.idle.p99Us)} / ${fmtUs(f.idle.maxUs)}`],
      [
        'same, a bulk stream at full speed between the same processes on another connection: p50 / p99 / max (bulk rate)',
        `${fmtUs(f.loaded.p50Us)} / ${fmtUs(f.loaded.p99Us)} / ${fmtUs(f.loaded.maxUs)} (${f.loaded.bulkGBps.toFixed(2)} GB/s)`,
      ],
      [
        `same, the bulk stream sent and received by worker threads (onread)${niceOf(f.loadedWorkers.priority)}`,
        `${fmtUs(f.loadedWorkers.p50Us)} / ${fmtUs(f.loadedWorkers.p99Us)} / ${fmtUs(f.loadedWorkers.maxUs)} (${f.loadedWorkers.bulkGBps.toFixed(2)} GB/s)`,
      ],
    ],
  );
}

function report(r: FaultBenchResult, floor?: LoopbackFigures): void {
  const row = (name: string, l: LatencySummary): string[] => [name, `${l.count}`, fmtUs(l.p50Us), fmtUs(l.p99Us), fmtUs(l.maxUs), fmtUs(l.meanUs)];
  printTable(
    `Fault round trip (ensure() of a missing page → page in place and the faulting code resumed), design ${r.design}`,
    ['phase', 'faults', 'p50', 'p99', 'max', 'mean'],
    [row('idle (background ~0)', r.idle), row(`loaded (background ${/paced/.test(r.design) ? 'paced' : 'full speed'})`, r.loaded)],
  );
  for (const [phase, lg] of [['idle', r.idleLegs], ['loaded', r.legs]] as const) {
    console.log(
      `${phase} round trip by leg, p50 / p99: request → read by the source ${fmtUs(lg.toSource.p50Us)} / ${fmtUs(lg.toSource.p99Us)}; → page placed on the destination ${fmtUs(lg.toPlaced.p50Us)} / ${fmtUs(lg.toPlaced.p99Us)}; → faulting code resumed ${fmtUs(lg.toResumed.p50Us)} / ${fmtUs(lg.toResumed.p99Us)}`,
    );
  }
  const ds = r.destStats;
  console.log(
    `destination faultStats() (request → placement, whole run): requests ${ds.requests}, placed ${ds.count}, p50 ${fmtUs(ds.p50Us)}, p99 ${fmtUs(ds.p99Us)}, max ${fmtUs(ds.maxUs)}`,
  );
  console.log(
    `background: ${(r.loadedBytes / 1e6).toFixed(0)} MB in ${r.loadedMs.toFixed(0)} ms = ${r.backgroundGBps.toFixed(2)} GB/s, read on the destination by its ${r.backgroundReader}; source served ${r.postcopyRequests} requests (${r.ignoredRequests} pages already sent, ${r.preemptPages} pages on the preempt channel)`,
  );
  const share = (ms: number): string => `${((ms / r.loadedMs) * 100).toFixed(0)} %`;
  const pct = (c: FaultBenchResult['sourceCpu']): string =>
    share(c.userMs + c.sysMs) +
    (c.mainThreadMs === undefined ? '' : ` (main thread ${share(c.mainThreadMs)}, other threads ${share(c.otherThreadsMs!)})`);
  console.log(
    `machine load: load average ${r.loadAvg[0].toFixed(1)} → ${r.loadAvg[1].toFixed(1)} on ${r.cpus} CPUs; during the loaded phase the machine was ${r.machineBusyPct.toFixed(0)} % busy, source process ${pct(r.sourceCpu)} of a CPU, destination ${pct(r.destCpu)}`,
  );
  const loop = (c: FaultBenchResult['sourceCpu']): string =>
    c.loopDelayP50Ms === undefined ? '-' : `${c.loopDelayP50Ms.toFixed(2)} / ${c.loopDelayP99Ms!.toFixed(2)} / ${c.loopDelayMaxMs!.toFixed(1)} ms`;
  console.log(`event-loop delay in the loaded phase, p50 / p99 / max: source ${loop(r.sourceCpu)}, destination ${loop(r.destCpu)}`);
  const nice = (p: FaultBenchResult['sourcePriority']): string => (p ? `nice ${p.nice}${p.error ? ` (${p.error})` : ''}` : 'not changed');
  console.log(
    `fault-path threads: ${r.faultPriority === undefined ? 'left at the peers\' priority' : `faultPriority ${r.faultPriority}`}; source's urgent worker ${nice(r.sourcePriority)}, destination's thread ${nice(r.destPriority)}`,
  );
  console.log(`statuses: source ${r.sourceStatus}, destination ${r.destStatus}; destination RAM ${r.ramEqual ? 'equal to' : 'DIFFERS from'} the source's`);
  // Node alone, same run, in our design's shape: the bulk stream in worker threads, round trips on the main threads.
  const w = floor?.loadedWorkers;
  const alone: Record<string, string> = w
    ? {
        'loaded p50': fmtUs(w.p50Us),
        'loaded p99': fmtUs(w.p99Us),
        background: `${w.bulkGBps.toFixed(2)} GB/s (alone ${floor!.streamOnreadGBps.toFixed(2)})`,
      }
    : {};
  printTable(
    'Targets (issue 4 §6)',
    ['figure', 'target', 'measured', '', 'Node alone, bulk in workers, same run'],
    targetChecks(r).map((t) => [t.what, t.target, t.value, t.met ? 'met' : 'NOT met', alone[t.what] ?? '-']),
  );
}

function summary(all: FaultBenchResult[]): void {
  const med = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
  };
  printTable(
    `Medians over ${ROUNDS} rounds per design`,
    ['design', 'idle p50', 'idle p99', 'loaded p50', 'loaded p99', 'loaded max', 'background GB/s', 'machine busy'],
    DESIGNS.map((d) => {
      const rs = all.filter((r) => r.design === d);
      const m = (f: (r: FaultBenchResult) => number): number => med(rs.map(f));
      return [
        d,
        fmtUs(m((r) => r.idle.p50Us)),
        fmtUs(m((r) => r.idle.p99Us)),
        fmtUs(m((r) => r.loaded.p50Us)),
        fmtUs(m((r) => r.loaded.p99Us)),
        fmtUs(m((r) => r.loaded.maxUs)),
        m((r) => r.backgroundGBps).toFixed(2),
        `${m((r) => r.machineBusyPct).toFixed(0)} %`,
      ];
    }),
  );
}

/** One more round with both peers under --cpu-prof; prints where each spent its loaded phase. */
async function profileRound(design: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-faults-prof-'));
  const r = await runOnce(design, dir);
  console.log(`\nProfile: one more round of design ${design} under node --cpu-prof: loaded p50 ${fmtUs(r.loaded.p50Us)}, p99 ${fmtUs(r.loaded.p99Us)}, background ${r.backgroundGBps.toFixed(2)} GB/s`);
  for (const role of ['source', 'destination']) {
    const file = path.join(dir, `${role}.cpuprofile`);
    if (!fs.existsSync(file)) {
      console.log(`${role}: no profile written`);
      continue;
    }
    const [from, to] = phaseWindows[PROFILE_PHASE];
    const s = summariseProfile(file, from, to);
    const pct = (ms: number): string => `${((100 * ms) / s.windowMs).toFixed(1)} %`;
    console.log(`\n${role.toUpperCase()} (${file}): ${s.windowMs.toFixed(0)} ms sampled in the ${PROFILE_PHASE} phase`);
    printTable('  self time by layer', ['layer', 'ms', 'share'], s.byLayer.slice(0, 10).map(([k, ms]) => [k, ms.toFixed(1), pct(ms)]));
    printTable('  self time by function (top 15)', ['function', 'ms', 'share'], s.byFunction.slice(0, 15).map(([k, ms]) => [k.slice(0, 110), ms.toFixed(1), pct(ms)]));
  }
}

async function main(): Promise<number> {
  console.log(
    `bench:faults — ${RAM_BYTES / MiB} MiB random RAM, stopped source, postcopy at once, tcp loopback, source and destination in separate processes, design ${DESIGNS.join(', ')}, ${ROUNDS} round(s)${PRIORITY === undefined ? '' : `, peers at nice ${PRIORITY}`}`,
  );
  const floor = NO_FLOOR ? undefined : await measureNodeLoopback(RAM_BYTES, 2000, FAULT_PRIORITY);
  if (floor) reportFloor(floor);
  const all: FaultBenchResult[] = [];
  let ok = true;
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 ? DESIGNS : [...DESIGNS].reverse();
    for (const design of order) {
      const r = await runOnce(design);
      if (ROUNDS > 1 || DESIGNS.length > 1) console.log(`\n== round ${round}, design ${design}`);
      report(r, floor);
      all.push(r);
      ok &&= r.sourceStatus === 'completed' && r.destStatus === 'completed' && r.ramEqual;
    }
  }
  if (all.length > 1) summary(all);
  if (PROFILE) await profileRound(DESIGNS[0]!);
  console.log(RESULT_PREFIX + JSON.stringify(all[all.length - 1]));
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`bench:faults: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
