/**
 * QmpClient: a small QMP client (JSON objects, one per line) for driving a
 * real QEMU, or our own QMP server, over a unix or TCP socket.
 *
 *   const qmp = await QmpClient.connect('unix:/tmp/qmp.sock');
 *   await qmp.execute('migrate', { uri: 'exec:cat > /tmp/s' });
 *   await qmp.waitEvent('MIGRATION', (e) => e.data.status === 'completed', 10_000);
 *   await qmp.close();
 *
 * Every command carries an id; replies are matched to calls by id. When the
 * peer goes away every pending call rejects, and so do later calls.
 */

import { EventEmitter } from 'node:events';
import net from 'node:net';
import { QmpError } from '../errors.js';

/** The greeting QEMU sends first: `{"QMP": {"version": ..., "capabilities": [...]}}`. */
export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

/** An asynchronous event (`MIGRATION`, `STOP`, `RESUME`, ...). */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** Where to connect: `unix:PATH`, `tcp:HOST:PORT`, a bare path, or an object. */
export type QmpTarget = string | { path: string } | { host: string; port: number };

/** Options of {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Give up connecting / waiting for the greeting after this long (default 10 s). */
  timeoutMs?: number;
  /** Ask for these QMP capabilities in `qmp_capabilities` (e.g. `['oob']`). */
  enable?: string[];
  /** Abort the connection attempt. */
  signal?: AbortSignal;
  /** Skip `qmp_capabilities` (leave the session in capabilities-negotiation mode). */
  skipNegotiation?: boolean;
}

/** Options of {@link QmpClient.execute}. */
export interface QmpExecuteOptions {
  /** Reject with QmpError class `Timeout` if no reply arrives in time. */
  timeoutMs?: number;
  /** Send as `exec-oob` (needs `enable: ['oob']` at connect time). */
  oob?: boolean;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer?: NodeJS.Timeout;
  command: string;
}

/** QMP error class used when the connection is gone (not a QEMU class). */
export const QMP_DISCONNECTED = 'Disconnected';
/** QMP error class used when a call or a wait timed out (not a QEMU class). */
export const QMP_TIMEOUT = 'Timeout';

/** Longest line we accept from a peer before treating it as broken (64 MiB). */
const MAX_LINE = 64 * 1024 * 1024;

/** Parse a {@link QmpTarget} into `net.connect` options. */
export function parseQmpTarget(target: QmpTarget): net.NetConnectOpts {
  if (typeof target !== 'string') return target;
  if (target.startsWith('unix:')) return { path: target.slice(5).split(',')[0]! };
  if (target.startsWith('tcp:')) {
    const rest = target.slice(4).split(',')[0]!;
    const colon = rest.lastIndexOf(':');
    const port = Number(rest.slice(colon + 1));
    if (colon < 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
      throw new QmpError(`invalid QMP address '${target}'`);
    }
    let host = rest.slice(0, colon) || 'localhost';
    if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
    return { host, port };
  }
  return { path: target };
}

/**
 * A connected QMP session. Emits `'event'` (QmpEvent) for every event and
 * `'close'` (Error | undefined) once when the connection ends.
 */
export class QmpClient extends EventEmitter {
  /** The greeting the server sent. */
  readonly greeting: QmpGreeting;
  private readonly sock: net.Socket;
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private buf = '';
  private closedError: Error | undefined;
  private isClosed = false;
  /** Resolves when the connection has ended (never rejects). */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  private constructor(sock: net.Socket, greeting: QmpGreeting, rest: string) {
    super();
    this.setMaxListeners(0); // every waitEvent/events() adds listeners; many may wait at once
    this.sock = sock;
    this.greeting = greeting;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (err) => this.shutdown(err));
    sock.on('close', () => this.shutdown(undefined));
    sock.resume();
    if (rest) queueMicrotask(() => this.onData(rest));
  }

  /**
   * Connect, read the greeting and (unless `skipNegotiation`) run
   * `qmp_capabilities`. Rejects with QmpError on a refused connection, a
   * malformed greeting or a timeout.
   */
  static async connect(target: QmpTarget, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const sock = net.connect(parseQmpTarget(target));
    sock.setEncoding('utf8');
    const { greeting, rest } = await new Promise<{ greeting: QmpGreeting; rest: string }>((resolve, reject) => {
      let acc = '';
      const fail = (err: Error): void => {
        cleanup();
        sock.destroy();
        reject(err);
      };
      const onData = (chunk: string): void => {
        acc += chunk;
        const nl = acc.indexOf('\n');
        if (nl < 0) {
          if (acc.length > MAX_LINE) fail(new QmpError('QMP greeting too long'));
          return;
        }
        let g: unknown;
        try {
          g = JSON.parse(acc.slice(0, nl));
        } catch {
          fail(new QmpError(`malformed QMP greeting: ${acc.slice(0, Math.min(nl, 200))}`));
          return;
        }
        if (!isObject(g) || !isObject(g['QMP'])) {
          fail(new QmpError(`not a QMP greeting: ${acc.slice(0, Math.min(nl, 200))}`));
          return;
        }
        cleanup();
        sock.pause();
        resolve({ greeting: g as unknown as QmpGreeting, rest: acc.slice(nl + 1) });
      };
      const onError = (err: Error): void => fail(new QmpError(`QMP connect failed: ${err.message}`, QMP_DISCONNECTED));
      const onClose = (): void => fail(new QmpError('QMP connection closed before the greeting', QMP_DISCONNECTED));
      const onAbort = (): void => fail(new QmpError('QMP connect aborted', QMP_DISCONNECTED));
      const timer = setTimeout(() => fail(new QmpError(`no QMP greeting within ${timeoutMs} ms`, QMP_TIMEOUT)), timeoutMs);
      function cleanup(): void {
        clearTimeout(timer);
        sock.off('data', onData);
        sock.off('error', onError);
        sock.off('close', onClose);
        opts.signal?.removeEventListener('abort', onAbort);
      }
      sock.on('data', onData);
      sock.on('error', onError);
      sock.on('close', onClose);
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
    const client = new QmpClient(sock, greeting, rest);
    if (!opts.skipNegotiation) {
      try {
        const args = opts.enable?.length ? { enable: opts.enable } : undefined;
        await client.execute('qmp_capabilities', args, { timeoutMs });
      } catch (err) {
        client.sock.destroy();
        throw err;
      }
    }
    return client;
  }

  /** True once the connection has ended. */
  get isConnected(): boolean {
    return !this.isClosed;
  }

  /**
   * Run a command; resolves to its `return` value, rejects with
   * QmpError(desc, class) on an `error` reply or when the connection ends.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    if (this.isClosed) {
      return Promise.reject(this.disconnectedError(command));
    }
    const id = `pc-${this.nextId++}`;
    const msg: Record<string, unknown> = { [opts.oob ? 'exec-oob' : 'execute']: command, id };
    if (args !== undefined) msg['arguments'] = args;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { resolve: resolve as (v: unknown) => void, reject, command };
      if (opts.timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new QmpError(`no reply to '${command}' within ${opts.timeoutMs} ms`, QMP_TIMEOUT));
        }, opts.timeoutMs);
      }
      this.pending.set(id, p);
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /**
   * Wait for the next event named `name` for which `predicate` holds (events
   * that arrived before the call are not considered). Rejects with QmpError
   * class `Timeout` after `timeoutMs`, or when the connection ends.
   */
  waitEvent(name: string, predicate: (e: QmpEvent) => boolean = () => true, timeoutMs = 30_000): Promise<QmpEvent> {
    if (this.isClosed) return Promise.reject(this.disconnectedError(`waiting for ${name}`));
    return new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        let ok: boolean;
        try {
          ok = e.event === name && predicate(e);
        } catch (err) {
          done();
          reject(err as Error);
          return;
        }
        if (ok) {
          done();
          resolve(e);
        }
      };
      const onClose = (): void => {
        done();
        reject(this.disconnectedError(`waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpError(`no ${name} event within ${timeoutMs} ms`, QMP_TIMEOUT));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /**
   * Events as an async iterable, from now until the connection ends (or the
   * loop breaks). Events are queued while the consumer is busy.
   */
  events(): AsyncIterableIterator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    let ended = this.isClosed;
    const onEvent = (e: QmpEvent): void => {
      queue.push(e);
      wake?.();
    };
    const onClose = (): void => {
      ended = true;
      wake?.();
    };
    this.on('event', onEvent);
    this.on('close', onClose);
    const stop = (): void => {
      ended = true;
      this.off('event', onEvent);
      this.off('close', onClose);
      wake?.();
    };
    const it: AsyncIterableIterator<QmpEvent> = {
      next: async () => {
        while (queue.length === 0 && !ended) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        const e = queue.shift();
        if (e) return { value: e, done: false };
        stop();
        return { value: undefined, done: true };
      },
      return: async () => {
        stop();
        queue.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  /** Close the connection; pending calls reject. Resolves when it is closed. */
  async close(): Promise<void> {
    if (!this.isClosed) this.sock.end();
    const t = setTimeout(() => this.sock.destroy(), 1000);
    await this.closed;
    clearTimeout(t);
  }

  private disconnectedError(what: string): QmpError {
    const why = this.closedError ? `: ${this.closedError.message}` : '';
    return new QmpError(`QMP connection closed (${what})${why}`, QMP_DISCONNECTED);
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onLine(line);
      if (this.isClosed) return;
    }
    if (this.buf.length > MAX_LINE) {
      this.sock.destroy(new Error(`QMP line longer than ${MAX_LINE} bytes`));
    }
  }

  private onLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      this.sock.destroy(new Error(`malformed QMP message: ${line.slice(0, 200)}`));
      return;
    }
    if (!isObject(msg)) return;
    if (typeof msg['event'] === 'string') {
      const e: QmpEvent = {
        event: msg['event'],
        data: isObject(msg['data']) ? msg['data'] : {},
        timestamp: (msg['timestamp'] as QmpEvent['timestamp']) ?? { seconds: 0, microseconds: 0 },
      };
      this.emit('event', e);
      return;
    }
    if (!('return' in msg) && !('error' in msg)) return;
    let id = typeof msg['id'] === 'string' ? msg['id'] : undefined;
    // A reply without id (the server could not parse our request): oldest call.
    if (id === undefined || !this.pending.has(id)) {
      if (id !== undefined) return; // a late reply to a call that timed out
      id = this.pending.keys().next().value;
      if (id === undefined) return;
    }
    const p = this.pending.get(id)!;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const err = isObject(msg['error']) ? msg['error'] : {};
      const desc = typeof err['desc'] === 'string' ? err['desc'] : JSON.stringify(msg['error']);
      const klass = typeof err['class'] === 'string' ? err['class'] : 'GenericError';
      p.reject(new QmpError(desc, klass));
    } else {
      p.resolve(msg['return']);
    }
  }

  private shutdown(err: Error | undefined): void {
    if (err && !this.closedError) this.closedError = err;
    if (this.isClosed) return;
    this.isClosed = true;
    this.sock.destroy();
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(this.disconnectedError(p.command));
    }
    this.pending.clear();
    this.emit('close', this.closedError);
    this.resolveClosed();
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
