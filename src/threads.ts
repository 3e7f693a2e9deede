/**
 * Worker threads that take a socket's reading over from the main thread
 * (the destination's bulk worker, the source's urgent worker): where their
 * compiled file is, and ChannelWorker, the main thread's side of one — it
 * holds the channel's reading here, hands the worker duplicates of the
 * sockets' descriptors and the bytes already read, and when the worker hands
 * the stream back (the bytes it did not take, counted from where it
 * started) lets the main thread read on from exactly there.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { ChannelReader } from './engine/bytes.js';
import { PostcopyError } from './errors.js';
import { findPackageRoot } from './hotpath/wasm.js';
import { nativeOs } from './native.js';
import { closeDescriptor, socketFd } from './transport/hold.js';

/**
 * Where a worker thread's compiled file is: beside the calling module when
 * that runs compiled (dist/), else the same path under dist/ (tests run the
 * TypeScript sources, and a worker needs JavaScript). Undefined when neither
 * exists (not built): the caller then does the work on its own thread.
 */
export function workerFile(moduleUrl: string, name: string, srcDir: string): string | undefined {
  const here = fileURLToPath(new URL(`./${name}`, moduleUrl));
  if (existsSync(here)) return here;
  const built = join(findPackageRoot(), 'dist', 'src', srcDir, name);
  return existsSync(built) ? built : undefined;
}

/** Nice values a thread may take. */
export const NICE_MIN = -20;
export const NICE_MAX = 19;

/**
 * Validates a `faultPriority` option: undefined (leave the threads as they
 * are) or a whole nice value in [-20, 19].
 */
export function checkFaultPriority(nice: number | undefined): void {
  if (nice === undefined) return;
  if (!Number.isInteger(nice) || nice < NICE_MIN || nice > NICE_MAX) {
    throw new PostcopyError('BAD_OPTION', `faultPriority must be a whole nice value between ${NICE_MIN} and ${NICE_MAX}, not ${nice}`);
  }
}

/** A thread's nice value after a priority change, and why the change failed if it did. */
export interface ThreadPriority {
  nice: number;
  error?: string;
}

/**
 * Sets the calling thread's nice value (on Linux a priority belongs to a
 * thread: the process's other threads keep theirs). Raising the priority
 * (a lower value) needs CAP_SYS_NICE or RLIMIT_NICE; when it is refused the
 * thread keeps its value and `error` says why.
 */
export function setThreadPriority(nice: number): ThreadPriority {
  try {
    os.setPriority(nice);
    return { nice: os.getPriority() };
  } catch (e) {
    const info = (e as { info?: { code?: string; message?: string } }).info;
    const why = info?.message && info.code ? `${info.message} (${info.code})` : (e as Error).message;
    return { nice: os.getPriority(), error: `setpriority(${nice}): ${why}` };
  }
}

/** How a worker hands a stream back. */
export interface ChannelStop {
  type: 'stopped';
  /** Bytes taken, from the first byte it was given. */
  consumed: number;
  /** Bytes read and not taken (where it stopped, and after). */
  rest: Uint8Array;
  error?: string;
}

/** A worker thread that reads channels handed over by the main thread, one run at a time. */
export class ChannelWorker<Stop extends ChannelStop> {
  private worker: Worker | undefined;
  private stopped: ((m: Stop) => void) | undefined;
  private current: Promise<unknown> = Promise.resolve();
  /** Runs so far. */
  runs = 0;

  /**
   * Starts the worker in `file`. `dead(error)` is the stop of a run that the
   * worker's death ended; `onMessage` sees its other messages.
   */
  constructor(
    private readonly name: string,
    file: string,
    workerData: unknown,
    private readonly dead: (error: string) => Stop,
    onMessage: (m: { type: string }) => void = () => undefined,
  ) {
    const w = (this.worker = new Worker(file, { workerData }));
    w.unref();
    w.on('message', (m: { type: string }) => {
      if (m.type === 'stopped') this.stopped?.(m as Stop);
      else onMessage(m);
    });
    // A worker that failed or was ended ends the run it was in: the stream is lost then (a pause follows).
    const died = (error: string): void => {
      this.worker = undefined;
      this.stopped?.(this.dead(error));
    };
    w.on('error', (e) => died(e.message));
    w.on('exit', (code) => died(`exited (${code})`));
  }

  /** False when a worker cannot take sockets over here: no native helper (dup), or `envOff`=0 in the environment. */
  static available(envOff: string): boolean {
    return process.env[envOff] !== '0' && nativeOs() !== null;
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
   * Hands `reader`'s channel over: the reading of `sockets` is held (the
   * first is the one `reader` reads), the worker gets `message(prefix, fds)`
   * with the bytes already read and duplicates of their descriptors, and
   * this resolves with its stop once `reader` reads on from where it
   * stopped — or undefined, nothing changed, when it could not start.
   * Closing one of the sockets meanwhile ends the run (`abort`), so the
   * worker's duplicates never keep a connection open.
   */
  run(reader: ChannelReader, sockets: Readable[], message: (prefix: Uint8Array, fds: number[]) => unknown, abort: unknown): Promise<Stop | undefined> {
    const p = this.runOnce(reader, sockets, message, abort);
    this.current = p.catch(() => undefined);
    return p;
  }

  private async runOnce(reader: ChannelReader, sockets: Readable[], message: (prefix: Uint8Array, fds: number[]) => unknown, abort: unknown): Promise<Stop | undefined> {
    const worker = this.worker;
    const fds = sockets.map(socketFd);
    if (!worker || this.running || fds.some((fd) => fd === undefined)) return undefined;
    const held = reader.hold();
    if (!held) return undefined;
    const copies: number[] = [];
    try {
      for (const fd of fds) copies.push(nativeOs()!.dup(fd!));
    } catch {
      for (const fd of copies) closeDescriptor(fd);
      reader.release(held.offset, held.bytes);
      return undefined;
    }
    const done = new Promise<Stop>((resolve) => (this.stopped = resolve));
    worker.postMessage(message(held.bytes, copies));
    const onClose = (): void => this.abort(abort);
    for (const s of sockets) s.once('close', onClose);
    const stop = await done;
    for (const s of sockets) s.off('close', onClose);
    this.stopped = undefined;
    if (!this.worker) {
      reader.release(held.offset, new Uint8Array(0));
      throw new PostcopyError('IO', `${this.name}: ${stop.error ?? 'ended'}`);
    }
    this.runs++;
    reader.release(held.offset + stop.consumed, stop.rest);
    return stop;
  }

  /** Ends the current run now (`message` is the worker's abort message). */
  abort(message: unknown): void {
    if (this.running) this.worker?.postMessage(message);
  }

  /** Ends the worker (the migration is over). */
  close(): void {
    if (this.worker) void this.worker.terminate();
  }
}
