/**
 * Node alone on this host, measured in the same run as a benchmark: what two
 * Node processes reach over TCP loopback with no migration code at all. It
 * is the floor a design with one event loop per process stands on, read
 * beside our figures (LIMITS.md has the same rows from another day; this
 * machine kind varies several-fold with its host).
 *
 * Rows: a bulk stream (1 MiB writes; the receiver copies every chunk into a
 * prefaulted ring, as a loader places pages) with 'data' events and with a
 * reused read buffer (onread); a request/reply round trip (16 B → 4 KiB, as
 * a page request and its page) idle, and while a bulk stream runs between
 * the same two processes on another connection (the shape of postcopy with
 * a preempt channel) — with the bulk stream in the same event loops, and
 * with it sent and received by worker threads (onread) while the main
 * threads serve the round trips, at nice -20 when the benchmark's fault-path
 * threads run at that (as our engines do with faultPriority).
 *
 * The module is also the peer: forked with the argument `peer`.
 */
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { adviseHugePages } from '../../src/memory/huge-pages.js';
import { setThreadPriority, type ThreadPriority } from '../../src/threads.js';
import { summarise, type LatencySummary } from './fault-stats.js';

const MiB = 1 << 20;
const REQ = 16;
const REPLY = 4096;
const RING = 64 * MiB;

export interface LoopbackFigures {
  /** GB/s of a bulk stream read with 'data' events. */
  streamDataGBps: number;
  /** GB/s of a bulk stream read into a reused buffer (onread). */
  streamOnreadGBps: number;
  idle: LatencySummary;
  /** Round trips while a bulk stream runs between the same processes; bulkGBps is its rate meanwhile. */
  loaded: LatencySummary & { bulkGBps: number };
  /** The same with the bulk stream in worker threads; with a nice value asked for, what the main threads got (undefined: unchanged). */
  loadedWorkers: LatencySummary & { bulkGBps: number; priority?: ThreadPriority[] };
}

/** Where the bulk stream of a round-trip row runs: none, the main threads' event loops, or worker threads (on the server's bulkPort). */
type Bulk = 'none' | 'loop' | 'workers';

type PeerCommand =
  | { cmd: 'listen' }
  | { cmd: 'nice'; value: number }
  | { cmd: 'stream'; port: number; bytes: number; onread: boolean }
  | { cmd: 'rr'; port: number; n: number; bulk: Bulk; bulkPort?: number };

type PeerReply = { port: number; bulkPort: number } | { priority: ThreadPriority } | { ms: number; bytes: number } | (LatencySummary & { bulkBytes: number; bulkMs: number });

// ------------------------------------------------------------------ the peer

const ring = (): Uint8Array => {
  const r = new Uint8Array(RING);
  adviseHugePages(r);
  r.fill(1); // prefaulted: placing costs a copy, not a page fault
  return r;
};

/** Serves both kinds of connection: 'S' + u64 = send that many bytes; 'R' = a 4 KiB reply per 16 bytes. */
function serve(): Promise<number> {
  const chunk = Buffer.alloc(MiB, 0x5a);
  const reply = Buffer.alloc(REPLY, 0xa5);
  const srv = net.createServer({ noDelay: true }, (s) => {
    s.on('error', () => undefined);
    let head = Buffer.alloc(0);
    let kind = '';
    let pending = 0;
    s.on('data', (d: Buffer) => {
      if (!kind) {
        head = Buffer.concat([head, d]);
        if (head.length < 9) return;
        kind = String.fromCharCode(head[0]!);
        d = head.subarray(9);
        if (kind === 'S') {
          let left = Number(head.readBigUInt64BE(1));
          const pump = (): void => {
            while (left > 0 && !s.destroyed) {
              const n = Math.min(left, chunk.length);
              left -= n;
              if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
                s.once('drain', pump);
                return;
              }
            }
            if (left === 0) s.end();
          };
          pump();
          return;
        }
      }
      if (kind === 'R') {
        pending += d.length;
        while (pending >= REQ) {
          pending -= REQ;
          s.write(reply);
        }
      }
    });
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve((srv.address() as net.AddressInfo).port)));
}

function header(kind: 'S' | 'R', bytes = 0): Buffer {
  const h = Buffer.alloc(9);
  h.write(kind, 0, 'latin1');
  h.writeBigUInt64BE(BigInt(bytes), 1);
  return h;
}

/** Receives `bytes` (or until stopped) and copies them into the ring; resolves with the time and bytes. */
function stream(port: number, bytes: number, onread: boolean, stop?: Promise<void>): Promise<{ ms: number; bytes: number }> {
  const r = ring();
  let at = 0;
  let got = 0;
  const place = (b: Uint8Array): void => {
    if (at + b.length > RING) at = 0;
    r.set(b, at);
    at += b.length;
    got += b.length;
  };
  const userBuf = Buffer.alloc(64 * 1024);
  const opts: net.NetConnectOpts = { port, host: '127.0.0.1' };
  if (onread) Object.assign(opts, { onread: { buffer: userBuf, callback: (n: number, b: Buffer) => place(b.subarray(0, n)) } });
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const s = net.connect(opts, () => s.write(header('S', bytes)));
    if (!onread) s.on('data', place);
    const done = (): void => resolve({ ms: performance.now() - t0, bytes: got });
    s.on('end', done);
    s.on('error', reject);
    void stop?.then(() => {
      s.destroy();
      done();
    });
  });
}

/** The server: a main-thread server, and one in a worker thread for bulk streams sent by that thread. */
async function listen(): Promise<{ port: number; bulkPort: number }> {
  const port = await serve();
  const w = new Worker(fileURLToPath(import.meta.url), { workerData: { role: 'server' } });
  w.unref();
  const [bulkPort] = (await new Promise((r) => w.once('message', r))) as [number];
  return { port, bulkPort };
}

/** A bulk stream received by a worker thread (onread) until `stop`. */
function workerStream(port: number, stop: Promise<void>): Promise<{ ms: number; bytes: number }> {
  const w = new Worker(fileURLToPath(import.meta.url), { workerData: { role: 'client', port } });
  void stop.then(() => w.postMessage('stop'));
  return new Promise((resolve, reject) => {
    w.once('message', (m: { ms: number; bytes: number }) => {
      resolve(m);
      void w.terminate();
    });
    w.once('error', reject);
  });
}

async function roundTrips(port: number, n: number, bulk: Bulk, bulkPort?: number): Promise<LatencySummary & { bulkBytes: number; bulkMs: number }> {
  let stopBulk: () => void = () => undefined;
  const stopped = new Promise<void>((r) => (stopBulk = r));
  let bulkRun: Promise<{ ms: number; bytes: number }> | undefined;
  if (bulk !== 'none') {
    bulkRun = bulk === 'loop' ? stream(port, 2 ** 50, false, stopped) : workerStream(bulkPort!, stopped);
    await new Promise((r) => setTimeout(r, 200)); // the stream at full speed first
  }
  const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  s.write(header('R'));
  const req = Buffer.alloc(REQ, 1);
  const times: number[] = [];
  let have = 0;
  let sent = 0n;
  let wake: (() => void) | undefined;
  s.on('data', (d: Buffer) => {
    have += d.length;
    if (have >= REPLY) {
      have -= REPLY;
      times.push(Number(process.hrtime.bigint() - sent) / 1000);
      wake?.();
    }
  });
  for (let i = 0; i < n; i++) {
    const got = new Promise<void>((r) => (wake = r));
    sent = process.hrtime.bigint();
    s.write(req);
    await got;
  }
  s.destroy();
  stopBulk();
  const b = bulkRun ? await bulkRun : { bytes: 0, ms: 0 };
  return { ...summarise(times), bulkBytes: b.bytes, bulkMs: b.ms };
}

if (!isMainThread) {
  const d = workerData as { role: 'server' } | { role: 'client'; port: number };
  if (d.role === 'server') void serve().then((port) => parentPort!.postMessage([port]));
  else {
    const stop = new Promise<void>((r) => parentPort!.once('message', () => r()));
    void stream(d.port, 2 ** 50, true, stop).then((m) => parentPort!.postMessage(m));
  }
} else if (process.argv[2] === 'peer') {
  process.on('disconnect', () => process.exit(0));
  process.on('message', (m: PeerCommand) => {
    const run = async (): Promise<PeerReply> => {
      if (m.cmd === 'listen') return listen();
      // this (main) thread only: the workers keep theirs (wrapped: a reply with `error` is a failure)
      if (m.cmd === 'nice') return { priority: setThreadPriority(m.value) };
      if (m.cmd === 'stream') return stream(m.port, m.bytes, m.onread);
      return roundTrips(m.port, m.n, m.bulk, m.bulkPort);
    };
    run().then(
      (r) => process.send!(r),
      (e: unknown) => process.send!({ error: String(e) }),
    );
  });
}

// ------------------------------------------------------------ orchestration

function ask<T extends PeerReply>(child: ChildProcess, cmd: PeerCommand): Promise<T> {
  return new Promise((resolve, reject) => {
    child.once('message', (m: T | { error: string }) => ('error' in m ? reject(new Error(m.error)) : resolve(m)));
    child.send(cmd);
  });
}

/**
 * Measures the rows of the module comment with two forked peers; `bytes`
 * per stream row; `nice`: the main threads' nice value in the bulk-in-workers
 * row (raising it needs root; undefined: unchanged).
 */
export async function measureNodeLoopback(bytes = 1024 * MiB, roundTripsN = 2000, nice?: number): Promise<LoopbackFigures> {
  const file = fileURLToPath(import.meta.url);
  const server = fork(file, ['peer'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const client = fork(file, ['peer'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const { port, bulkPort } = await ask<{ port: number; bulkPort: number }>(server, { cmd: 'listen' });
    // Each stream twice, the faster kept: the first run also warms up the JIT.
    const best = async (onread: boolean): Promise<{ ms: number; bytes: number }> => {
      const a = await ask<{ ms: number; bytes: number }>(client, { cmd: 'stream', port, bytes, onread });
      const b = await ask<{ ms: number; bytes: number }>(client, { cmd: 'stream', port, bytes, onread });
      return a.ms < b.ms ? a : b;
    };
    const data = await best(false);
    const onread = await best(true);
    type Rr = LatencySummary & { bulkBytes: number; bulkMs: number };
    const idle = await ask<Rr>(client, { cmd: 'rr', port, n: roundTripsN, bulk: 'none' });
    const loaded = await ask<Rr>(client, { cmd: 'rr', port, n: roundTripsN, bulk: 'loop' });
    // last: the main threads keep the raised priority
    const raise = async (p: ChildProcess): Promise<ThreadPriority> => (await ask<{ priority: ThreadPriority }>(p, { cmd: 'nice', value: nice! })).priority;
    const priority = nice === undefined ? undefined : [await raise(server), await raise(client)];
    const workers = await ask<Rr>(client, { cmd: 'rr', port, n: roundTripsN, bulk: 'workers', bulkPort });
    const gbps = (b: number, ms: number): number => b / 1e6 / ms;
    const strip = ({ count, p50Us, p99Us, maxUs, meanUs }: LatencySummary): LatencySummary => ({ count, p50Us, p99Us, maxUs, meanUs });
    return {
      streamDataGBps: gbps(data.bytes, data.ms),
      streamOnreadGBps: gbps(onread.bytes, onread.ms),
      idle: strip(idle),
      loaded: { ...strip(loaded), bulkGBps: gbps(loaded.bulkBytes, loaded.bulkMs) },
      loadedWorkers: { ...strip(workers), bulkGBps: gbps(workers.bulkBytes, workers.bulkMs), ...(priority && { priority }) },
    };
  } finally {
    server.kill();
    client.kill();
  }
}
