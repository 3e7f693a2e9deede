/**
 * One peer of the fault-latency benchmark, run as a child process (its own
 * event loop, as a real source or destination has): `node fault-peer.js`,
 * driven by IPC messages from bench/faults.ts.
 *
 * source: a stopped guest of `ramBytes` random RAM (AES-CTR keystream), a
 *   MigrationSource with postcopy-ram, switched to postcopy at once, the
 *   background first throttled to ~0 (max-postcopy-bandwidth 1 B/s: the idle
 *   phase), then unlimited (0) on 'fullSpeed'.
 * destination: a MigrationDestination on a loopback listener; from
 *   'postcopyRun' on it faults random not-yet-received pages through ensure(),
 *   one at a time like a vCPU, timing each round trip: the idle phase first,
 *   then (on 'go') the loaded phase until the migration completes.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { MigrationDestination } from '../../src/destination/destination.js';
import { MigrationSource } from '../../src/source/source.js';
import { PreemptDestination } from '../../src/preempt/destination.js';
import { PreemptSource } from '../../src/preempt/source.js';
import type { EngineRamBlock, SourceGuest } from '../../src/engine/ports.js';
import { adviseHugePages } from '../../src/memory/huge-pages.js';
import { statCounters } from './proc-stat.js';
import { TARGET_PAGE_SIZE } from '../../src/wire/constants.js';
import type { CpuFigures } from './fault-stats.js';
import type { ThreadPriority } from '../../src/threads.js';

const TP = TARGET_PAGE_SIZE;
const IDSTR = 'ram';
/** The fault generator stops when fewer than this share of the pages is missing. */
const MIN_MISSING = 0.1;

/** Parent → peer. */
export type PeerCommand =
  | {
      cmd: 'init';
      role: 'source' | 'destination';
      ramBytes: number;
      design: string;
      port?: number;
      warmupFaults: number;
      idleFaults: number;
      idleMs: number;
      /** faultPriority of both engines (undefined: threads left as they are). */
      faultPriority?: number;
    }
  | { cmd: 'fullSpeed' }
  | { cmd: 'go' }
  /** Exit now, cleanly (under --cpu-prof node then writes the profile). */
  | { cmd: 'exit' };

/** Peer → parent. */
export type PeerEvent =
  | { ev: 'listening'; port: number }
  | { ev: 'idleDone' }
  | { ev: 'fullSpeedOn' }
  | { ev: 'error'; message: string }
  | ({ ev: 'sourceResult' } & SourcePeerResult)
  | ({ ev: 'destResult' } & DestPeerResult);

export interface SourcePeerResult {
  status: string;
  /** Page offset → hrtime (ns, CLOCK_MONOTONIC: comparable across processes) when the source read its request. */
  requestSeen: Array<[number, number]>;
  /** Requested pages sent on the preempt channel. */
  preemptPages: number;
  postcopyRequests: number;
  ignoredRequests: number;
  transferred: number;
  digest: string;
  cpu: CpuFigures;
  /** The urgent worker thread's nice value (with a faultPriority). */
  priority?: ThreadPriority;
}

export interface DestPeerResult {
  status: string;
  /** Loaded-phase faults: [page offset, request sent, page placed, faulting code resumed], hrtime ns. */
  legs: Array<[number, number, number, number]>;
  /** The same for the idle phase. */
  idleLegs: Array<[number, number, number, number]>;
  idleUs: number[];
  loadedUs: number[];
  stats: { requests: number; count: number; p50Us: number; p99Us: number; maxUs: number };
  loadedBytes: number;
  /** True when the bulk worker read (some of) the background stream. */
  bulkWorker: boolean;
  loadedMs: number;
  /** The loaded phase, from 'go' to the migration's end: monotonic µs (the clock of .cpuprofile samples). */
  loadedWindowUs: [number, number];
  /** The idle phase, the same way. */
  idleWindowUs: [number, number];
  digest: string;
  cpu: CpuFigures;
  /** The destination thread's nice value during postcopy (with a faultPriority). */
  priority?: ThreadPriority;
}

const send = (m: PeerEvent): void => void process.send!(m);
const monoUs = (): number => Number(process.hrtime.bigint() / 1000n);

/** CPU time (user + system, ms, clock-tick resolution) of the main thread and of all other threads (V8's GC and compiler helpers, libuv). */
function threadCpu(): { mainMs: number; otherMs: number } {
  let mainMs = 0;
  let otherMs = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    const c = statCounters(`/proc/self/task/${tid}/stat`);
    if (!c) continue; // the thread ended meanwhile
    if (Number(tid) === process.pid) mainMs += c.userMs + c.sysMs;
    else otherMs += c.userMs + c.sysMs;
  }
  return { mainMs, otherMs };
}

function cpuSince(c0: NodeJS.CpuUsage, loop?: IntervalHistogram, t0?: { mainMs: number; otherMs: number }): CpuFigures {
  const d = process.cpuUsage(c0);
  loop?.disable();
  const ms = (ns: number): number => ns / 1e6;
  const t = t0 && threadCpu();
  return {
    userMs: d.user / 1000,
    sysMs: d.system / 1000,
    ...(t && t0 && { mainThreadMs: t.mainMs - t0.mainMs, otherThreadsMs: t.otherMs - t0.otherMs }),
    ...(loop && { loopDelayP50Ms: ms(loop.percentile(50)), loopDelayP99Ms: ms(loop.percentile(99)), loopDelayMaxMs: ms(loop.max) }),
  };
}

/** Event-loop delay (how long a ready callback waits), sampled every ms. */
function loopMonitor(): IntervalHistogram {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  return h;
}

const digest = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/**
 * Guest RAM as the library allocates it: zeroed, in shared memory (the
 * destination's bulk worker places pages in it, the source's urgent worker
 * sends from it), advised for huge pages (unless POSTCOPY_NO_THP=1).
 */
function block(ramBytes: number): EngineRamBlock {
  const bytes = new Uint8Array(new SharedArrayBuffer(ramBytes));
  adviseHugePages(bytes);
  return { idstr: IDSTR, usedLength: ramBytes, ramAddr: 0, bytes };
}

/** A stopped guest: random RAM, nothing ever dirtied. */
function stoppedGuest(ramBytes: number): SourceGuest {
  const b = block(ramBytes);
  const aes = createCipheriv('aes-128-ctr', randomBytes(16), randomBytes(16));
  const chunk = 16 << 20;
  for (let off = 0; off < ramBytes; off += chunk) {
    const v = b.bytes.subarray(off, Math.min(ramBytes, off + chunk));
    v.set(aes.update(v)); // v is zero: the keystream itself
  }
  return { blocks: [b], syncDirty: () => 0, stop: () => undefined, resume: () => undefined, runState: 'paused' };
}

let onCommand: (c: PeerCommand) => void = () => undefined;
// The benchmark process is gone (killed, crashed): do not linger.
process.on('disconnect', () => process.exit(1));
process.on('message', (m: PeerCommand) => {
  if (m.cmd === 'exit') process.exit(0);
  else if (m.cmd === 'init') void (m.role === 'source' ? runSource(m) : runDestination(m)).catch(fatal);
  else onCommand(m);
});

function fatal(e: unknown): void {
  send({ ev: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  setTimeout(() => process.exit(1), 100);
}

async function runSource(init: Extract<PeerCommand, { cmd: 'init' }>): Promise<void> {
  const guest = stoppedGuest(init.ramBytes);
  const preempt = init.design.includes('preempt');
  const opts = {
    capabilities: { postcopyRam: true },
    // Idle phase: the background scan is throttled to ~0 (one page per 100 ms window).
    parameters: { maxBandwidth: 10 * 2 ** 30, maxPostcopyBandwidth: 1 },
  };
  // preempt-1ms: the preempt channel with the engines' ordinary 1 ms postcopy yields.
  const preemptYieldMs = init.design === 'preempt-1ms' ? 1 : undefined;
  // preempt-main: no worker threads (requests served and the background read on the main threads).
  const urgentWorker = init.design !== 'preempt-main';
  // the urgent worker timestamps the requests it reads (the legs of a round trip)
  const src = preempt ? new PreemptSource(guest, { ...opts, preemptYieldMs, urgentWorker, traceUrgentRequests: 1 << 20, faultPriority: init.faultPriority }) : new MigrationSource(guest, opts);
  // Timestamps of request arrival (the return-path reader's 'onPageRequest').
  const requestSeen: Array<[number, number]> = [];
  const handlers = (src as unknown as { returnPathHandlers(): { onPageRequest?: (r: { start: number }) => void } });
  const origHandlers = handlers.returnPathHandlers.bind(src);
  handlers.returnPathHandlers = () => {
    const h = origHandlers();
    const on = h.onPageRequest;
    h.onPageRequest = (r) => {
      requestSeen.push([r.start, Number(process.hrtime.bigint())]);
      on?.(r);
    };
    return h;
  };
  const connect = async (): Promise<net.Socket> => {
    const sock = net.connect({ port: init.port!, host: '127.0.0.1', noDelay: true });
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    return sock;
  };
  const sock = await connect();
  // The destination takes the second connection as the preempt channel.
  if (src instanceof PreemptSource) src.setPreemptChannel(await connect());
  let c0 = process.cpuUsage();
  let th0 = threadCpu();
  let loop: IntervalHistogram | undefined;
  onCommand = (c) => {
    if (c.cmd !== 'fullSpeed') return;
    c0 = process.cpuUsage();
    th0 = threadCpu();
    loop = loopMonitor();
    // preempt-paced: the background paced (max-postcopy-bandwidth) instead of unlimited.
    const paced = /paced(\d+)?/.exec(init.design);
    src.setParameters({ maxPostcopyBandwidth: paced ? Number(paced[1] ?? 400) * 1e6 : 0 });
    send({ ev: 'fullSpeedOn' });
  };
  const done = src.migrate(sock);
  src.startPostcopy();
  const status = await done;
  const cpu = cpuSince(c0, loop, th0);
  const info = src.queryMigrate();
  send({
    ev: 'sourceResult',
    status,
    requestSeen: src instanceof PreemptSource ? [...requestSeen, ...src.urgentRequestTimes] : requestSeen,
    preemptPages: src instanceof PreemptSource ? src.preemptPages : 0,
    postcopyRequests: info.ram?.['postcopy-requests'] ?? 0,
    ignoredRequests: src.ignoredRequestPages,
    transferred: info.ram?.transferred ?? 0,
    digest: digest(guest.blocks[0]!.bytes),
    cpu,
    priority: src instanceof PreemptSource ? src.urgentStats?.priority : undefined,
  });
}

async function runDestination(init: Extract<PeerCommand, { cmd: 'init' }>): Promise<void> {
  const b = block(init.ramBytes);
  const preempt = init.design.includes('preempt');
  const bulkWorker = init.design !== 'preempt-main';
  const dopts = { blocks: [b], postcopyRam: true, bulkWorker, faultPriority: init.faultPriority };
  const dest = preempt ? new PreemptDestination(dopts) : new MigrationDestination(dopts);
  const pages = init.ramBytes / TP;
  const server = net.createServer({ noDelay: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const conns: net.Socket[] = [];
  const accepted = new Promise<void>((r) =>
    server.on('connection', (c) => {
      conns.push(c);
      if (conns.length === (preempt ? 2 : 1)) r();
    }),
  );
  send({ ev: 'listening', port: (server.address() as net.AddressInfo).port });
  await accepted;
  server.close();
  const sock = conns[0]!;
  // QEMU's destination also waits for the preempt channel before it loads.
  if (dest instanceof PreemptDestination) dest.attachPreempt(conns[1]!).catch(() => undefined);
  const run = new Promise<void>((r) => dest.once('postcopyRun', () => r()));
  let finished = false;
  const loaded = dest.load(sock).finally(() => (finished = true));
  await run;

  const bits = dest.received.get(IDSTR)!;
  const isMissing = (p: number): boolean => (Atomics.load(bits, p >>> 5) & (1 << (p & 31))) === 0;
  /**
   * A uniformly random page not received yet; -1 when fewer than
   * MIN_MISSING of the pages are missing (checked every 64 faults). Near the
   * end the missing pages are mostly the ones in flight in the background
   * stream, whose faults would not measure a request's round trip.
   */
  let faultsSinceCount = 64;
  let nearlyDone = false;
  const pickMissing = (): number => {
    if (++faultsSinceCount >= 64) {
      faultsSinceCount = 0;
      let have = 0;
      for (let w = 0; w < bits.length; w++) {
        let v = bits[w]! >>> 0;
        v = v - ((v >>> 1) & 0x55555555);
        v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
        have += (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
      }
      nearlyDone = pages - have < pages * MIN_MISSING;
    }
    if (nearlyDone) return -1;
    for (let i = 0; i < 1000; i++) {
      const p = Math.floor(Math.random() * pages);
      if (isMissing(p)) return p;
    }
    return -1;
  };
  const hr = (): number => Number(process.hrtime.bigint());
  const legs: Array<[number, number, number, number]> = [];
  const idleLegs: Array<[number, number, number, number]> = [];
  let placedAt = 0;
  dest.on('pagePlaced', () => (placedAt = hr()));
  let recordLegs = false;
  const fault = async (): Promise<number> => {
    const p = pickMissing();
    if (p < 0) return -1;
    const t0 = performance.now();
    const h0 = hr();
    placedAt = 0;
    await dest.ensure(IDSTR, p * TP, TP);
    const us = (performance.now() - t0) * 1000;
    (recordLegs ? legs : idleLegs).push([p * TP, h0, placedAt, hr()]);
    return us;
  };

  // Warm-up: faults that are not counted (the first ones time the JIT, not the path).
  const warmEnd = performance.now() + init.idleMs;
  for (let i = 0; i < init.warmupFaults && !finished && performance.now() < warmEnd; i++) if ((await fault()) < 0) break;
  idleLegs.length = 0;

  // Idle phase: the background is throttled to ~0 on the same connection.
  const idleUs: number[] = [];
  const idleEnd = performance.now() + init.idleMs;
  const i0 = monoUs();
  while (!finished && idleUs.length < init.idleFaults && performance.now() < idleEnd) {
    const us = await fault();
    if (us < 0) break;
    idleUs.push(us);
  }
  const go = new Promise<void>((r) => (onCommand = (c) => c.cmd === 'go' && r()));
  const i1 = monoUs();
  send({ ev: 'idleDone' });
  await go;

  // Loaded phase: the background at full speed until the migration completes.
  recordLegs = true;
  const c0 = process.cpuUsage();
  const th0 = threadCpu();
  const loop = loopMonitor();
  // Bytes of the main channel: read by the main thread, or by the bulk worker.
  const received = (): number => sock.bytesRead + (dest.bulkStats?.bytesRead ?? 0);
  const bytes0 = received();
  const t0 = performance.now();
  const w0 = monoUs();
  let w1 = 0;
  const loadedUs: number[] = [];
  let tEnd = 0;
  let bytesEnd = 0;
  void loaded.then(() => {
    tEnd = performance.now();
    w1 = monoUs();
    bytesEnd = received();
  });
  while (!finished) {
    const us = await fault();
    if (us < 0) break;
    if (!finished) loadedUs.push(us);
  }
  // The background goes on to the end: its rate covers the whole phase.
  const status = await loaded;
  const cpu = cpuSince(c0, loop, th0);
  const st = dest.faultStats();
  send({
    ev: 'destResult',
    status,
    legs,
    idleLegs,
    idleUs,
    loadedUs,
    stats: { requests: st.requests, count: st.count, p50Us: st.p50Us, p99Us: st.p99Us, maxUs: st.maxUs },
    loadedBytes: bytesEnd - bytes0,
    bulkWorker: (dest.bulkStats?.runs ?? 0) > 0,
    loadedMs: tEnd - t0,
    loadedWindowUs: [w0, w1],
    idleWindowUs: [i0, i1],
    digest: digest(b.bytes),
    cpu,
    priority: dest.faultThreadPriority,
  });
}
