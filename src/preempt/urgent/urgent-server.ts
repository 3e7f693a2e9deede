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
import type { Duplex, Readable } from 'node:stream';
import type { ChannelReader } from '../../engine/bytes.js';
import { ChannelWorker, workerFile, type ThreadPriority } from '../../threads.js';
import { Counter, type FromWorker, type PriorityReport, type ToWorker, type UrgentBlock } from './messages.js';

export type UrgentStop = FromWorker;

const isShared = (a: ArrayBufferView): boolean => a.buffer instanceof SharedArrayBuffer;

export class UrgentServer {
  /** The worker thread's nice value and why it could not take the one asked for (with a priority asked for, once it started). */
  priority: ThreadPriority | undefined;

  private constructor(
    private readonly worker: ChannelWorker<UrgentStop>,
    /** What the worker did, all runs (Counter indices); written by the worker only. */
    readonly counters: Float64Array,
    private readonly trace: Float64Array | undefined,
  ) {}

  /**
   * An urgent server when the worker can run here (native helper built,
   * worker file present, not turned off). `traceRequests`: the worker
   * records when it read each of the first N requests (see requestTimes).
   * `priority`: the worker thread's nice value (faultPriority).
   */
  static create(traceRequests = 0, priority?: number): UrgentServer | undefined {
    const file = workerFile(import.meta.url, 'worker.js', 'preempt/urgent');
    if (!file || !ChannelWorker.available('POSTCOPY_URGENT_WORKER')) return undefined;
    const counters = new Float64Array(new SharedArrayBuffer(8 * Counter.SIZE));
    const trace = traceRequests > 0 ? new Float64Array(new SharedArrayBuffer(8 * (1 + 2 * traceRequests))) : undefined;
    let server: UrgentServer | undefined;
    const worker = new ChannelWorker<UrgentStop>(
      'urgent worker',
      file,
      { counters: counters.buffer, trace: trace?.buffer, priority },
      (error) => ({
        type: 'stopped',
        reason: 'error',
        error,
        consumed: 0,
        rest: new Uint8Array(0),
        lastReqBlock: undefined,
        preemptBroken: true,
      }),
      (m) => {
        if (m.type === 'priority' && server) server.priority = (m as PriorityReport).priority;
      },
    );
    return (server = new UrgentServer(worker, counters, trace));
  }

  /** With tracing: [request start, process.hrtime ns when the worker read it], in order. */
  requestTimes(): Array<[number, number]> {
    const t = this.trace;
    if (!t) return [];
    const out: Array<[number, number]> = [];
    for (let i = 0; i < t[0]!; i++) out.push([t[2 * i + 1]!, t[2 * i + 2]!]);
    return out;
  }

  /** True when these blocks can be shared with the worker. */
  static sharable(blocks: readonly UrgentBlock[]): boolean {
    return blocks.length > 0 && blocks.every((b) => isShared(b.bytes) && isShared(b.dirty));
  }

  /** Runs so far. */
  get runs(): number {
    return this.worker.runs;
  }

  /** Resolves once no run is in progress. */
  idle(): Promise<void> {
    return this.worker.idle();
  }

  /**
   * Lets the worker read the return path of `channel` and serve its page
   * requests on `preempt`. Resolves with how it handed the stream back
   * (`reader` reads again from there), or undefined when it could not start
   * (nothing changed then).
   */
  async run(channel: Readable, reader: ChannelReader, preempt: Duplex, blocks: UrgentBlock[], lastReqBlock: string | undefined, release: boolean): Promise<UrgentStop | undefined> {
    if (!UrgentServer.sharable(blocks)) return undefined;
    return this.worker.run(
      reader,
      [channel, preempt],
      (prefix, [rpFd, preemptFd]) => ({ type: 'run', rpFd: rpFd!, preemptFd: preemptFd!, prefix, blocks, lastReqBlock, release }) satisfies ToWorker,
      { type: 'abort' } satisfies ToWorker,
    );
  }

  /** Ends the current run now (the preempt channel is dropped: a pause). */
  abort(): void {
    this.worker.abort({ type: 'abort' } satisfies ToWorker);
  }

  /** Ends the worker (the migration is over). */
  close(): void {
    this.worker.close();
  }
}
