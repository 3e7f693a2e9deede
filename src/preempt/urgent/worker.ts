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
import { RamFlag, TARGET_PAGE_SIZE } from '../../wire/constants.js';
import { closeDescriptor, readDuplicate } from '../../transport/hold.js';
import { RequestParser } from './requests.js';
import { Counter, type FromWorker, type StopReason, type ToWorker, type UrgentBlock } from './messages.js';

const TP = TARGET_PAGE_SIZE;
const READ_BUFFER = 64 * 1024;

const port = parentPort!;
const data = workerData as { counters: SharedArrayBuffer; trace?: SharedArrayBuffer };
const counters = new Float64Array(data.counters);
/** When tracing: [entries, then (start, monotonic ns) per request], as long as there is room. */
const trace = data.trace && new Float64Array(data.trace);
const readBuffer = Buffer.allocUnsafe(READ_BUFFER);
let abortCurrent: (() => void) | undefined;

port.on('message', (m: ToWorker) => {
  if (m.type === 'abort') abortCurrent?.();
  else run(m);
});

function isZero(words: Uint32Array): boolean {
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** Writes page records on the preempt channel (the CONTINUE rule within this run). */
class Writer {
  private last: number | undefined;
  private readonly bounce = new Uint8Array(TP);
  private readonly words = new Uint32Array(this.bounce.buffer);
  /** Writes not yet handed to the kernel, and who waits for none. */
  private pending = 0;
  private idle: (() => void) | undefined;
  broken = false;
  constructor(
    private readonly out: Socket,
    private readonly blocks: readonly UrgentBlock[],
    private readonly names: Uint8Array[],
  ) {}

  page(b: number, off: number, release: boolean): void {
    const block = this.blocks[b]!;
    // One fast copy out of shared memory into an aligned plain page (V8 copies
    // a SharedArrayBuffer byte by byte unless both sides are co-aligned).
    this.bounce.set(block.bytes.subarray(off, off + TP));
    const zero = isZero(this.words);
    const name = this.last === b ? undefined : this.names[b]!;
    const head = 8 + (name ? 1 + name.length : 0);
    const rec = Buffer.allocUnsafe(head + (zero ? 1 : TP));
    const hi = Math.floor(off / 0x1_0000_0000);
    const flags = (zero ? RamFlag.ZERO : RamFlag.PAGE) | (name ? 0 : RamFlag.CONTINUE);
    rec.writeUInt32BE(hi, 0);
    rec.writeUInt32BE(((off - hi * 0x1_0000_0000) | flags) >>> 0, 4);
    if (name) {
      rec[8] = name.length;
      rec.set(name, 9);
    }
    if (zero) rec[head] = 0;
    else rec.set(this.bounce, head);
    if (release) {
      block.bytes.fill(0, off, off + TP);
      counters[Counter.RELEASED]! += 1;
    }
    this.last = b;
    counters[Counter.BYTES]! += rec.length;
    this.pending++;
    this.out.write(rec, this.written);
  }

  private readonly written = (): void => {
    if (--this.pending === 0) this.idle?.();
  };

  /** Calls `f` once every page written so far is with the kernel (or the channel failed). */
  whenFlushed(f: () => void): void {
    if (this.pending === 0 || this.broken || this.out.destroyed) f();
    else {
      this.idle = f;
      this.out.once('close', f);
    }
  }
}

function run(m: Extract<ToWorker, { type: 'run' }>): void {
  const names = m.blocks.map((b) => Uint8Array.from(b.idstr, (c) => c.charCodeAt(0) & 0xff));
  const out = new Socket({ fd: m.preemptFd, readable: false, writable: true });
  out.setNoDelay(true);
  const writer = new Writer(out, m.blocks, names);
  out.on('error', () => {
    writer.broken = true;
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
      if (!writer.broken) writer.page(b, off, m.release);
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
        preemptBroken: writer.broken,
      } satisfies FromWorker);
    };
    // the preempt bytes must be with the kernel before the main thread may write that channel again
    let once = false;
    writer.whenFlushed(() => {
      if (!once) {
        once = true;
        stopped();
      }
    });
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
