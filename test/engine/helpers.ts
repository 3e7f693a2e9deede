/**
 * Test helpers for the engines: an in-memory duplex pair, a guest with RAM
 * and a page-granular dirty log, and a timer-driven dirtier.
 */
import { Duplex } from 'node:stream';
import type { EngineRamBlock, PageBits, SourceGuest } from '../../src/engine/ports.js';

/** Two connected Duplex ends; `a.write` arrives at `b` and vice versa. */
export function duplexPair(): [Duplex, Duplex] {
  let aPeer: Duplex | undefined;
  let bPeer: Duplex | undefined;
  const mk = (peer: () => Duplex | undefined): Duplex =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        const p = peer();
        if (p && !p.destroyed) p.push(Uint8Array.prototype.slice.call(chunk));
        cb();
      },
      final(cb) {
        const p = peer();
        if (p && !p.destroyed) p.push(null);
        cb();
      },
      destroy(err, cb) {
        const p = peer();
        if (p && !p.destroyed && !p.readableEnded) p.push(null);
        cb(err);
      },
    });
  const a = mk(() => bPeer);
  const b = mk(() => aPeer);
  aPeer = a;
  bPeer = b;
  return [a, b];
}

/** Deterministic pseudo-random bytes. */
export function fillRandom(buf: Uint8Array, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < buf.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
}

/** A guest with plain RAM and a page-granular dirty log. */
export class TestGuest implements SourceGuest {
  readonly blocks: EngineRamBlock[];
  private dirty: Set<number>[];
  logging = false;
  stopped = false;
  throttle = 0;
  readonly throttleHistory: number[] = [];
  runState = 'running';
  resumed = 0;

  /** `shared`: RAM in SharedArrayBuffers (as a VM's, which the source's urgent worker can send from). */
  constructor(layout: { idstr: string; size: number }[], opts: { shared?: boolean } = {}) {
    let addr = 0;
    this.blocks = layout.map((l) => {
      const bytes = new Uint8Array(opts.shared ? new SharedArrayBuffer(l.size) : new ArrayBuffer(l.size));
      const b = { idstr: l.idstr, usedLength: l.size, ramAddr: addr, bytes };
      addr += l.size;
      return b;
    });
    this.dirty = this.blocks.map(() => new Set<number>());
  }

  /** Writes `data` at `off` of block `i`, marking pages dirty. */
  write(i: number, off: number, data: Uint8Array): void {
    if (this.stopped) throw new Error('guest is stopped');
    const b = this.blocks[i]!;
    b.bytes.set(data, off);
    if (this.logging) for (let p = off >>> 12; p <= (off + data.length - 1) >>> 12; p++) this.dirty[i]!.add(p);
  }

  startDirtyLog(): void {
    this.logging = true;
  }
  stopDirtyLog(): void {
    this.logging = false;
  }
  syncDirty(i: number, bm: PageBits): number {
    let n = 0;
    for (const p of this.dirty[i]!) {
      const w = p >>> 5;
      const m = 1 << (p & 31);
      if ((bm[w]! & m) === 0) {
        bm[w] = bm[w]! | m;
        n++;
      }
    }
    this.dirty[i]!.clear();
    return n;
  }
  stop(): void {
    this.stopped = true;
  }
  resume(): void {
    this.stopped = false;
    this.resumed++;
  }
  setThrottle(p: number): void {
    this.throttle = p;
    this.throttleHistory.push(p);
  }
}

/**
 * Dirties `pagesPerTick` pages of block 0 every `intervalMs` (one byte per
 * page, changing value), while the guest runs and the throttle allows.
 */
export function startDirtier(
  g: TestGuest,
  opts: { pagesPerTick: number; intervalMs?: number; seed?: number; block?: number; workingSet?: number },
): () => void {
  let x = opts.seed ?? 7;
  const blk = opts.block ?? 0;
  const pages = opts.workingSet ?? g.blocks[blk]!.usedLength >>> 12;
  const t = setInterval(() => {
    if (g.stopped) return;
    const n = Math.round(opts.pagesPerTick * (1 - g.throttle / 100));
    for (let k = 0; k < n; k++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const p = x % pages;
      const off = p * 4096 + ((x >>> 8) & 4095);
      g.write(blk, off, Uint8Array.of((x >>> 16) & 0xff | 1));
    }
  }, opts.intervalMs ?? 2);
  return () => clearInterval(t);
}
