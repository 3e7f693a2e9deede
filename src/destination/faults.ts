/**
 * FaultService: the destination's page-fault path (SPEC §5.4, §5.5, §6.4) —
 * QEMU's fault thread for library users and the vm's workload. A fault on a
 * page whose received bit is clear waits for the page; from LISTEN on it also
 * asks the source for it (REQ_PAGES, or REQ_PAGES_ID when the block differs
 * from the last one named). Concurrent faults on one page share one request.
 * Requests made while paused are kept and (re-)sent after RESUME_ACK.
 */
import { PostcopyError } from '../errors.js';
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import type { PageBits } from '../engine/ports.js';
import { FaultAccounting, type FaultLatency } from './blocktime.js';

const TP = TARGET_PAGE_SIZE;

/** One page request, as reported by 'fault' and faults(). */
export interface FaultRecord {
  idstr: string;
  /** Byte offset of the (target = host) page inside the block. */
  offset: number;
  /** True when the request named the block (REQ_PAGES_ID). */
  withId: boolean;
  /** True for a re-send after a resume. */
  resent: boolean;
}

/** What the service needs from the destination. */
export interface FaultHost {
  /** The received bitmap and length of a block, undefined when unknown. */
  block(idstr: string): { bits: PageBits; usedLength: number } | undefined;
  /** Writes one page request now; false when there is no usable return path. */
  send(idstr: string, offset: number, length: number, withId: boolean): boolean;
  /** Event sink ('fault', 'pagePlaced'). */
  emit(event: string, payload: unknown): void;
  /** A fault began to wait for this page (another thread may place it). */
  watch?(idstr: string, page: number): void;
}

interface Pending {
  t0: number;
  requested: boolean;
  resolve: (() => void)[];
  reject: ((e: unknown) => void)[];
}

/** 'precopy': wait only; 'postcopy': request; 'paused': keep; 'done'/'failed': final. */
export type FaultMode = 'precopy' | 'postcopy' | 'paused' | 'done' | 'failed';

/** True when page `p` of `bits` is set (atomic read: the bytes are in place). */
export function testBit(bits: PageBits, p: number): boolean {
  return (Atomics.load(bits, p >>> 5) & (1 << (p & 31))) !== 0;
}

export class FaultService {
  private mode: FaultMode = 'precopy';
  /** block → page → pending fault. */
  private readonly pending = new Map<string, Map<number, Pending>>();
  private size = 0;
  private lastBlock: string | undefined;
  private failure: unknown;
  private readonly acct = new FaultAccounting();
  private readonly iters = new Set<{ push: (r: FaultRecord | null) => void }>();
  /** True once any request was sent (x-postcopy-fault-latency appears). */
  anyFault = false;

  constructor(private readonly host: FaultHost) {}

  /** Pages waited for and not yet placed. */
  get outstanding(): number {
    return this.size;
  }

  /** Since when faults have been outstanding without a break (ms, performance.now), -1 if none. */
  get outstandingSince(): number {
    return this.acct.blockedSinceMs;
  }

  /** Current mode. */
  get state(): FaultMode {
    return this.mode;
  }

  /** True when every page of the range was received (or the migration completed). */
  isReceived(idstr: string, offset: number, length = TP): boolean {
    if (this.mode === 'done') return true;
    const b = this.host.block(idstr);
    if (!b) return false;
    const [first, last] = pageRange(offset, length, b.usedLength, idstr);
    for (let p = first; p <= last; p++) if (!testBit(b.bits, p)) return false;
    return true;
  }

  /** Resolves once every page of the range is placed (see MigrationDestination.ensure). */
  ensure(idstr: string, offset: number, length = TP): Promise<void> {
    if (this.mode === 'done') return Promise.resolve();
    if (this.mode === 'failed') return Promise.reject(this.failure);
    const b = this.host.block(idstr);
    if (!b) return Promise.reject(new RangeError(`unknown RAM block '${idstr}'`));
    let first: number;
    let last: number;
    try {
      [first, last] = pageRange(offset, length, b.usedLength, idstr);
    } catch (e) {
      return Promise.reject(e);
    }
    const waits: Promise<void>[] = [];
    for (let p = first; p <= last; p++) {
      if (testBit(b.bits, p)) continue;
      waits.push(this.wait(idstr, p));
    }
    if (waits.length === 0) return Promise.resolve();
    if (waits.length === 1) return waits[0]!;
    return Promise.all(waits).then(() => undefined);
  }

  private wait(idstr: string, page: number): Promise<void> {
    let m = this.pending.get(idstr);
    if (!m) this.pending.set(idstr, (m = new Map()));
    let e = m.get(page);
    if (!e) {
      e = { t0: performance.now(), requested: false, resolve: [], reject: [] };
      m.set(page, e);
      this.size++;
      this.host.watch?.(idstr, page);
      if (this.mode !== 'precopy') this.acct.outstanding(this.size, e.t0);
      if (this.mode === 'postcopy') this.request(idstr, page, e, false);
    }
    const entry = e;
    return new Promise<void>((resolve, reject) => {
      entry.resolve.push(resolve);
      entry.reject.push(reject);
    });
  }

  private request(idstr: string, page: number, e: Pending, resent: boolean): void {
    const withId = this.lastBlock !== idstr;
    if (!this.host.send(idstr, page * TP, TP, withId)) return;
    this.lastBlock = idstr;
    e.requested = true;
    this.acct.requests++;
    this.anyFault = true;
    const rec: FaultRecord = { idstr, offset: page * TP, withId, resent };
    this.host.emit('fault', rec);
    for (const it of this.iters) it.push(rec);
  }

  /** Called by the RAM loader after a page's bytes are in place and its bit is set. */
  placed(idstr: string, page: number): void {
    if (this.size === 0) return;
    const m = this.pending.get(idstr);
    const e = m?.get(page);
    if (!e) return;
    m!.delete(page);
    this.size--;
    const now = performance.now();
    if (this.mode !== 'precopy') this.acct.outstanding(this.size, now);
    if (e.requested) {
      const latencyUs = (now - e.t0) * 1000;
      this.acct.sample(latencyUs);
      this.host.emit('pagePlaced', { idstr, offset: page * TP, latencyUs });
    }
    for (const r of e.resolve) r();
  }

  /** The pages faults wait for, as [idstr, page]. */
  *pendingPages(): Generator<[string, number]> {
    for (const [idstr, m] of this.pending) for (const page of m.keys()) yield [idstr, page];
  }

  /** LISTEN: from now on missing pages are requested; earlier waiters are requested now. */
  listen(): void {
    this.mode = 'postcopy';
    const now = performance.now();
    // Waits that began in precopy count as faults from now on (latency and blocktime).
    for (const m of this.pending.values()) for (const e of m.values()) e.t0 = now;
    this.acct.outstanding(this.size, now);
    this.sendAll(false);
  }

  /** The return path is gone: keep every fault, send nothing. */
  pause(): void {
    if (this.mode === 'postcopy') this.mode = 'paused';
  }

  /** After RESUME_ACK: forget the last block named, re-send every outstanding request. */
  resume(): void {
    if (this.mode !== 'paused') return;
    this.mode = 'postcopy';
    this.lastBlock = undefined;
    this.sendAll(true);
  }

  private sendAll(resent: boolean): void {
    for (const [idstr, m] of this.pending) {
      for (const [page, e] of m) this.request(idstr, page, e, resent && e.requested);
    }
  }

  /** The migration completed: every page is in place; every waiter resolves. */
  complete(): void {
    this.mode = 'done';
    this.settle((e) => e.resolve.forEach((r) => r()));
  }

  /** The migration failed: every waiter rejects. */
  fail(error: unknown): void {
    this.mode = 'failed';
    this.failure = error instanceof Error ? error : new PostcopyError('FAILED', String(error));
    this.settle((e) => e.reject.forEach((r) => r(this.failure)));
  }

  private settle(fn: (e: Pending) => void): void {
    const now = performance.now();
    for (const m of this.pending.values()) for (const e of m.values()) fn(e);
    this.pending.clear();
    this.size = 0;
    this.acct.outstanding(0, now);
    for (const it of this.iters) it.push(null);
    this.iters.clear();
  }

  /** Latency summary of requested pages. */
  stats(): FaultLatency {
    return this.acct.stats();
  }

  /** Time the fault user spent blocked on outstanding faults since LISTEN, ms. */
  blocktimeMs(): number {
    return this.acct.blocktimeMs();
  }

  /** Page requests as they are sent, until the migration ends. */
  faults(): AsyncIterable<FaultRecord> {
    const self = this;
    return {
      [Symbol.asyncIterator](): AsyncIterator<FaultRecord> {
        const queue: (FaultRecord | null)[] = [];
        let wake: (() => void) | undefined;
        const sub = {
          push(r: FaultRecord | null): void {
            queue.push(r);
            wake?.();
            wake = undefined;
          },
        };
        if (self.mode === 'done' || self.mode === 'failed') queue.push(null);
        else self.iters.add(sub);
        return {
          async next(): Promise<IteratorResult<FaultRecord>> {
            while (queue.length === 0) await new Promise<void>((r) => (wake = r));
            const r = queue.shift()!;
            if (r === null) return { done: true, value: undefined };
            return { done: false, value: r };
          },
          async return(): Promise<IteratorResult<FaultRecord>> {
            self.iters.delete(sub);
            return { done: true, value: undefined };
          },
        };
      },
    };
  }
}

/** First and last page of [offset, offset+length) inside a block of `used` bytes. */
function pageRange(offset: number, length: number, used: number, idstr: string): [number, number] {
  if (!(offset >= 0) || !(length > 0) || offset + length > used) {
    throw new RangeError(`range 0x${offset.toString(16)}+0x${length.toString(16)} outside block '${idstr}' (0x${used.toString(16)})`);
  }
  return [Math.floor(offset / TP), Math.ceil((offset + length) / TP) - 1];
}
