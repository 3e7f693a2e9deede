/**
 * UrgentServer: the main thread's side of the source's urgent worker
 * (worker.ts). Once the guest runs on the destination and a preempt channel
 * is there, the return-path reader offers it the stream at each message
 * boundary: the main socket's reading is held on this thread, the worker
 * reads a duplicate of it and answers page requests on a duplicate of the
 * preempt channel, and hands the return path back at the first message that
 * is not a page request (or at EOF, on an error, on abort). The main thread
 * meanwhile streams the background pages; both claim pages from the same
 * dirty bitmaps with atomic clears, so a page is sent once.
 *
 * Used when it can be: the native helper (dup) is built, both channels are
 * sockets, guest RAM and the dirty bitmaps are shared memory.
 * POSTCOPY_URGENT_WORKER=0 in the environment turns it off.
 */
import { Worker } from 'node:worker_threads';
import type { Duplex, Readable } from 'node:stream';
import type { ChannelReader } from '../../engine/bytes.js';
import { PostcopyError } from '../../errors.js';
import { nativeOs } from '../../native.js';
import { workerFile } from '../../threads.js';
import { socketFd } from '../../transport/hold.js';
import { Counter, type FromWorker, type ToWorker, type UrgentBlock } from './messages.js';

export type UrgentStop = FromWorker;

const isShared = (a: ArrayBufferView): boolean => a.buffer instanceof SharedArrayBuffer;

export class UrgentServer {
  private worker: Worker | undefined;
  /** What the worker did, all runs (Counter indices); written by the worker only. */
  readonly counters = new Float64Array(new SharedArrayBuffer(8 * Counter.SIZE));
  private stopped: ((m: UrgentStop) => void) | undefined;
  private current: Promise<unknown> = Promise.resolve();
  /** Runs so far. */
  runs = 0;

  private constructor() {}

  /** An urgent server when the worker can run here (native helper built, worker file present, not turned off). */
  static create(): UrgentServer | undefined {
    if (process.env.POSTCOPY_URGENT_WORKER === '0' || !nativeOs()) return undefined;
    const file = workerFile(import.meta.url, 'worker.js', 'preempt/urgent');
    if (!file) return undefined;
    const s = new UrgentServer();
    s.worker = new Worker(file, { workerData: { counters: s.counters.buffer } });
    s.worker.unref();
    s.worker.on('message', (m: FromWorker) => s.stopped?.(m));
    // A worker that failed or was ended ends the run it was in: the stream is lost then (a pause follows).
    const died = (error: string): void => {
      const stop = s.stopped;
      s.worker = undefined;
      stop?.({ type: 'stopped', reason: 'error', error, consumed: 0, rest: new Uint8Array(0), lastReqBlock: undefined, preemptBroken: true });
    };
    s.worker.on('error', (e) => died(e.message));
    s.worker.on('exit', (code) => died(`exited (${code})`));
    return s;
  }

  /** True when these blocks can be shared with the worker. */
  static sharable(blocks: readonly UrgentBlock[]): boolean {
    return blocks.length > 0 && blocks.every((b) => isShared(b.bytes) && isShared(b.dirty));
  }

  /** True while a run is in progress. */
  get running(): boolean {
    return this.stopped !== undefined;
  }

  /** Resolves once no run is in progress. */
  async idle(): Promise<void> {
    await this.current;
  }

  /**
   * Lets the worker read the return path of `channel` and serve its page
   * requests on `preempt`. Resolves with how it handed the stream back
   * (`reader` reads again from there), or undefined when it could not start
   * (nothing changed then).
   */
  run(channel: Readable, reader: ChannelReader, preempt: Duplex, blocks: UrgentBlock[], lastReqBlock: string | undefined, release: boolean): Promise<UrgentStop | undefined> {
    const p = this.runOnce(channel, reader, preempt, blocks, lastReqBlock, release);
    this.current = p.catch(() => undefined);
    return p;
  }

  private async runOnce(channel: Readable, reader: ChannelReader, preempt: Duplex, blocks: UrgentBlock[], lastReqBlock: string | undefined, release: boolean): Promise<UrgentStop | undefined> {
    const worker = this.worker;
    const rpFd = socketFd(channel);
    const preemptFd = socketFd(preempt);
    if (!worker || rpFd === undefined || preemptFd === undefined || this.running || !UrgentServer.sharable(blocks)) return undefined;
    const held = reader.hold();
    if (!held) return undefined;
    const fds: number[] = [];
    try {
      fds.push(nativeOs()!.dup(rpFd), nativeOs()!.dup(preemptFd));
    } catch {
      for (const fd of fds) closeQuietly(fd);
      reader.release(held.offset, held.bytes);
      return undefined;
    }
    const done = new Promise<UrgentStop>((resolve) => (this.stopped = resolve));
    worker.postMessage({ type: 'run', rpFd: fds[0]!, preemptFd: fds[1]!, prefix: held.bytes, blocks, lastReqBlock, release } satisfies ToWorker);
    // Closed here (destroyed by its owner): the worker's duplicates must not keep the connections open.
    const onClose = (): void => this.abort();
    channel.once('close', onClose);
    preempt.once('close', onClose);
    const stop = await done;
    channel.off('close', onClose);
    preempt.off('close', onClose);
    this.stopped = undefined;
    if (!this.worker) {
      reader.release(held.offset, new Uint8Array(0));
      throw new PostcopyError('IO', `urgent worker: ${stop.error ?? 'ended'}`);
    }
    this.runs++;
    reader.release(held.offset + stop.consumed, stop.rest);
    return stop;
  }

  /** Ends the current run now (the preempt channel is dropped: a pause). */
  abort(): void {
    if (this.running) this.worker?.postMessage({ type: 'abort' } satisfies ToWorker);
  }

  /** Ends the worker (the migration is over). */
  close(): void {
    const w = this.worker;
    if (w) void w.terminate();
  }
}

/** A duplicate that could not be handed over: closed through a throwaway socket handle. */
function closeQuietly(fd: number): void {
  void import('node:net').then(({ Socket }) => new Socket({ fd, readable: false, writable: false }).destroy());
}
