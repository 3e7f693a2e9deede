/**
 * BulkReader: the main thread's side of the bulk worker (worker.ts). From
 * POSTCOPY_RUN on, when the loader reaches a "ram" section of the main
 * channel, it holds the socket's reading on this thread, gives the worker a
 * duplicate of the descriptor and the bytes already read, and waits while
 * the worker parses the background pages into shared RAM. The worker hands
 * the stream back (the bytes it did not take, and where they start) at the
 * first item that is not a plain RAM record, at EOF or on an error; this
 * thread then reads the socket again. Faults are served meanwhile: the
 * event loop only sees page requests, preempt-channel pages and the rare
 * 'wanted' message of a page the worker placed while a fault waited for it.
 *
 * Used when it can be: the native helper (for dup) is built, the channel is
 * a connected socket, and every RAM block and received bitmap lives in shared
 * memory. Otherwise the loader reads the bulk stream on the main thread, as
 * before. POSTCOPY_BULK_WORKER=0 in the environment turns it off.
 */
import type { Readable } from 'node:stream';
import type { ChannelReader } from '../../engine/bytes.js';
import type { EngineRamBlock, PageBits } from '../../engine/ports.js';
import { ChannelWorker, workerFile } from '../../threads.js';
import type { FromWorker, ToWorker } from './messages.js';
import type { BulkBlock, ParserStart } from './ram-stream.js';

/** How the worker handed the stream back. */
export type BulkStop = Extract<FromWorker, { type: 'stopped' }>;

const isShared = (a: ArrayBufferView): boolean => a.buffer instanceof SharedArrayBuffer;

export class BulkReader {
  private readonly wantedBits = new Map<string, Uint32Array>();
  private seenRead = 0;
  /** Runs so far and pages placed by the worker (all runs). */
  readonly stats = { runs: 0, normal: 0, zero: 0, bytes: 0 };

  private constructor(
    private readonly worker: ChannelWorker<BulkStop>,
    /** Bytes the worker read from sockets (written by the worker only). */
    private readonly read: Float64Array,
  ) {}

  /**
   * A bulk reader when the bulk stream can be read by a worker: the native
   * helper is built and not turned off, and the worker's file exists.
   */
  static create(onWanted: (idstr: string, page: number) => void): BulkReader | undefined {
    const file = workerFile(import.meta.url, 'worker.js', 'destination/bulk');
    if (!file || !ChannelWorker.available('POSTCOPY_BULK_WORKER')) return undefined;
    const read = new Float64Array(new SharedArrayBuffer(8));
    const worker = new ChannelWorker<BulkStop>(
      'bulk worker',
      file,
      { bytesRead: read.buffer },
      (error) => ({ type: 'stopped', reason: 'error', error, at: 'section', sectionId: -1, lastBlock: undefined, consumed: 0, rest: new Uint8Array(0), counters: { normal: 0, zero: 0 } }),
      (m) => {
        const w = m as FromWorker;
        if (w.type === 'wanted') onWanted(w.idstr, w.page);
      },
    );
    return new BulkReader(worker, read);
  }

  /** True when these blocks can be shared with the worker. */
  static sharable(blocks: readonly { block: EngineRamBlock; bits: PageBits }[]): boolean {
    return blocks.length > 0 && blocks.every(({ block, bits }) => isShared(block.bytes) && isShared(bits));
  }

  private wanted(idstr: string, pages: number): Uint32Array {
    let w = this.wantedBits.get(idstr);
    if (!w) this.wantedBits.set(idstr, (w = new Uint32Array(new SharedArrayBuffer(((pages + 31) >>> 5) * 4))));
    return w;
  }

  /**
   * A fault waits for `page`: the worker will post it when it places it.
   * Returns true when the page is in place already (it may have been placed
   * just before the mark: the caller resolves the fault itself then).
   */
  watch(idstr: string, page: number, bits: PageBits): boolean {
    const w = this.wanted(idstr, bits.length * 32);
    Atomics.or(w, page >>> 5, 1 << (page & 31));
    return (Atomics.load(bits, page >>> 5) & (1 << (page & 31))) !== 0;
  }

  /** Bytes the worker has read from sockets, live. */
  get bytesRead(): number {
    return this.read[0]!;
  }

  /** True when the worker read data since the last call (the silent-link watchdog). */
  activitySinceLastCall(): boolean {
    const a = this.read[0]!;
    const moved = a !== this.seenRead;
    this.seenRead = a;
    return moved;
  }

  /** True while a run is in progress. */
  get running(): boolean {
    return this.worker.running;
  }

  /**
   * Lets the worker read `channel` from here on. Resolves with how it handed
   * the stream back (`reader` then reads again from where the worker
   * stopped), or undefined when the channel cannot be handed over (not a
   * socket, ended): nothing changed then.
   */
  async run(channel: Readable, reader: ChannelReader, blocks: readonly { block: EngineRamBlock; bits: PageBits }[], ramSections: number[], start: ParserStart): Promise<BulkStop | undefined> {
    if (!BulkReader.sharable(blocks)) return undefined;
    const bulkBlocks: BulkBlock[] = blocks.map(({ block, bits }) => ({
      idstr: block.idstr,
      usedLength: block.usedLength,
      bytes: block.bytes,
      bits,
      wanted: this.wanted(block.idstr, bits.length * 32),
      zeroed: block.zeroed === true,
    }));
    const stop = await this.worker.run(
      reader,
      [channel],
      (prefix, [fd]) => ({ type: 'run', fd: fd!, prefix, blocks: bulkBlocks, ramSections, start }) satisfies ToWorker,
      { type: 'abort' } satisfies ToWorker,
    );
    if (!stop) return undefined;
    this.stats.runs++;
    this.stats.normal += stop.counters.normal;
    this.stats.zero += stop.counters.zero;
    this.stats.bytes += stop.consumed;
    return stop;
  }

  /** Ends the current run now (the channel is being closed: a pause). */
  abort(): void {
    this.worker.abort({ type: 'abort' } satisfies ToWorker);
  }

  /** Ends the worker (the migration is over). */
  close(): void {
    this.worker.close();
  }
}
