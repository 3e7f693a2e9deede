/**
 * The source's urgent worker: a thread that reads the return path while the
 * main thread streams the background pages (QEMU reads it in a thread of its
 * own too). Each 'run' reads a duplicate of the main channel's descriptor;
 * a page request is served here at once — each page claimed from the dirty
 * bitmap with an atomic clear (so the background scan never sends it
 * again), encoded and written on a duplicate of the preempt channel's
 * descriptor — so it waits neither for the sender's event loop nor behind
 * its bytes. At the first other message (PONG, SHUT, …), at EOF, on an error
 * or an abort, the worker waits until its preempt writes are with the
 * kernel, closes both duplicates and hands the return path back.
 */
import { Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { TARGET_PAGE_SIZE } from '../../wire/constants.js';
import { jsPageOps } from '../../engine/page-ops-js.js';
import { PreemptSender } from '../channel.js';
import { closeDescriptor, readDuplicate } from '../../transport/hold.js';
import { setThreadPriority } from '../../threads.js';
import { RequestParser } from './requests.js';
import { Counter, type FromWorker, type PriorityReport, type StopReason, type ToWorker } from './messages.js';

const TP = TARGET_PAGE_SIZE;
const READ_BUFFER = 64 * 1024;

const port = parentPort!;
const data = workerData as { counters: SharedArrayBuffer; trace?: SharedArrayBuffer; priority?: number };
const counters = new Float64Array(data.counters);
/** When tracing: [entries, then (start, monotonic ns) per request], as long as there is room. */
const trace = data.trace && new Float64Array(data.trace);
const readBuffer = Buffer.allocUnsafe(READ_BUFFER);
let abortCurrent: (() => void) | undefined;

// This thread is on the page-fault path: with faultPriority it runs at that nice value.
if (data.priority !== undefined) port.postMessage({ type: 'priority', priority: setThreadPriority(data.priority) } satisfies PriorityReport);

port.on('message', (m: ToWorker) => {
  if (m.type === 'abort') abortCurrent?.();
  else run(m);
});

function run(m: Extract<ToWorker, { type: 'run' }>): void {
  const out = new Socket({ fd: m.preemptFd, readable: false, writable: true });
  out.setNoDelay(true);
  const sender = new PreemptSender(out, jsPageOps);
  let broken = false;
  out.on('error', () => {
    broken = true;
  });
  const parser = new RequestParser(m.blocks, m.lastReqBlock, (b, start, length) => {
    counters[Counter.REQUESTS]! += 1;
    if (trace) {
      const n = trace[0]!;
      if (2 * n + 2 < trace.length) {
        trace[2 * n + 1] = start;
        trace[2 * n + 2] = Number(process.hrtime.bigint());
        trace[0] = n + 1;
      }
    }
    const dirty = m.blocks[b]!.dirty;
    for (let off = start; off < start + length; off += TP) {
      const page = off / TP;
      const bit = 1 << (page & 31);
      if ((Atomics.and(dirty, page >>> 5, ~bit) & bit) === 0) {
        counters[Counter.SKIPPED]! += 1;
        continue;
      }
      counters[Counter.CLAIMED]! += 1;
      if (broken) continue;
      const block = m.blocks[b]!;
      const before = sender.transferred;
      sender.sendPage(block, off);
      counters[Counter.BYTES]! += sender.transferred - before;
      if (m.release) {
        block.bytes.fill(0, off, off + TP);
        counters[Counter.RELEASED]! += 1;
      }
    }
  });
  let input: Socket | undefined;
  let done = false;
  const finish = (reason: StopReason, error?: string): void => {
    if (done) return;
    done = true;
    abortCurrent = undefined;
    // closes the duplicate only: the main thread keeps writing the main channel
    if (input) input.destroy();
    else closeDescriptor(m.rpFd);
    const stopped = (): void => {
      out.destroy();
      port.postMessage({
        type: 'stopped',
        reason,
        ...(error !== undefined && { error }),
        consumed: parser.consumed,
        rest: parser.rest(),
        lastReqBlock: parser.lastReqBlock,
        preemptBroken: broken,
      } satisfies FromWorker);
    };
    // the preempt bytes must be with the kernel before the main thread may write that channel again
    sender.whenFlushed(stopped);
  };
  abortCurrent = () => finish('abort');
  parser.push(m.prefix);
  if (parser.stopped) return finish('message');
  input = readDuplicate(
    m.rpFd,
    readBuffer,
    (bytes) => {
      parser.push(bytes);
      return !parser.stopped;
    },
    (why, error) => finish(why === 'taken' ? 'message' : why, error),
  );
}
