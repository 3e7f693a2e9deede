/**
 * StreamReader: buffers chunks from a Node Readable (or any
 * AsyncIterable<Uint8Array>), pulls only when it needs more (so the source
 * keeps its backpressure), knows the stream offset of every byte, and runs
 * pure decoders over buffered bytes, retrying once more data has arrived.
 */

import { TruncatedError } from '../errors.js';
import { ByteCursor, NEED_MORE } from './cursor.js';

const EMPTY = new Uint8Array(0);
const MORE: unique symbol = Symbol('more');

/** Options of StreamReader. */
export interface StreamReaderOptions {
  /** Stream offset of the first byte this reader sees (default 0). */
  base?: number;
}

/**
 * Reads a byte stream item by item; see the module comment. Views returned by
 * decoders point into the received chunks: the source must not reuse a chunk's
 * memory after yielding it (Node sockets without `onread` never do).
 */
export class StreamReader {
  private chunks: Uint8Array[] = [];
  /** Read index inside chunks[0]. */
  private head = 0;
  private avail = 0;
  private pos: number;
  private readonly it: AsyncIterator<Uint8Array>;
  private done = false;
  private lastWanted = 0;
  private lastCursor: ByteCursor | undefined;

  constructor(source: AsyncIterable<Uint8Array>, opts: StreamReaderOptions = {}) {
    this.it = source[Symbol.asyncIterator]();
    this.pos = opts.base ?? 0;
  }

  /** Stream offset of the next unread byte. */
  get offset(): number {
    return this.pos;
  }

  /** Bytes buffered and not yet consumed. */
  get buffered(): number {
    return this.avail;
  }

  /** True once the source has ended (buffered bytes may remain). */
  get sourceEnded(): boolean {
    return this.done;
  }

  /** Fetch one more chunk; false at end of source. */
  private async pull(): Promise<boolean> {
    for (;;) {
      if (this.done) return false;
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        return false;
      }
      const chunk = r.value;
      if (chunk.length === 0) continue;
      this.chunks.push(chunk);
      this.avail += chunk.length;
      return true;
    }
  }

  /** Pull until at least `n` bytes are buffered; false if the source ended first. */
  private async fill(n: number): Promise<boolean> {
    while (this.avail < n) if (!(await this.pull())) return false;
    return true;
  }

  /**
   * Ensure `n` bytes are buffered. Returns undefined when they already are
   * (synchronous fast path), else a promise; at end of stream it rejects with
   * TruncatedError naming the offset where bytes ran out.
   */
  need(n: number, what = 'stream'): Promise<void> | undefined {
    if (this.avail >= n) return undefined;
    return this.fill(n).then((ok) => {
      if (!ok) throw new TruncatedError(what, n - this.avail, this.pos + this.avail);
    });
  }

  /** True if the stream has no more bytes at all (waits for the next chunk if needed). */
  async atEnd(): Promise<boolean> {
    if (this.avail > 0) return false;
    return !(await this.fill(1));
  }

  /** Consumes and returns every buffered chunk (views), in order. */
  takeBuffered(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = 0; i < this.chunks.length; i++) out.push(i === 0 ? this.chunks[0]!.subarray(this.head) : this.chunks[i]!);
    this.pos += this.avail;
    this.chunks = [];
    this.head = 0;
    this.avail = 0;
    return out.filter((c) => c.length > 0);
  }

  /**
   * After takeBuffered(): another reader consumed the stream up to `offset`
   * and left `rest` (the bytes after it it had read): they are buffered here
   * again, and reading goes on from the source.
   */
  restartAt(offset: number, rest: Uint8Array): void {
    if (this.avail !== 0) throw new Error('StreamReader.restartAt: bytes are still buffered');
    this.pos = offset;
    this.chunks = rest.length > 0 ? [rest] : [];
    this.head = 0;
    this.avail = rest.length;
  }

  /** Drop `k` buffered bytes. */
  private consume(k: number): void {
    this.pos += k;
    this.avail -= k;
    while (k > 0) {
      const c = this.chunks[0]!;
      const left = c.length - this.head;
      if (k < left) {
        this.head += k;
        return;
      }
      k -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Make chunks[0] hold at least `n` (≤ buffered) bytes from the read point. */
  private coalesce(n: number): void {
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) return;
    const out = new Uint8Array(n);
    let o = 0;
    let start = this.head;
    while (o < n) {
      const c = this.chunks[0]!;
      const take = Math.min(c.length - start, n - o);
      out.set(c.subarray(start, start + take), o);
      o += take;
      if (start + take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(start + take);
      start = 0;
    }
    this.chunks.unshift(out);
    this.head = 0;
  }

  /** Next byte without consuming it (needs one buffered byte). */
  peekU8Sync(): number | undefined {
    return this.avail > 0 ? this.chunks[0]![this.head] : undefined;
  }

  /** Next byte without consuming it; undefined at end of stream. */
  async peekU8(): Promise<number | undefined> {
    if (this.avail === 0) await this.fill(1);
    return this.peekU8Sync();
  }

  /**
   * Consume `n` buffered bytes: a view when they lie in one chunk, else one
   * copy. Throws TruncatedError if fewer than `n` are buffered.
   */
  readSync(n: number, what = 'bytes'): Uint8Array {
    if (this.avail < n) throw new TruncatedError(what, n - this.avail, this.pos + this.avail);
    if (n === 0) return EMPTY;
    this.coalesce(n);
    const v = this.chunks[0]!.subarray(this.head, this.head + n);
    this.consume(n);
    return v;
  }

  /** Read exactly `n` bytes (allocates only once they have all arrived). */
  async read(n: number, what = 'bytes'): Promise<Uint8Array> {
    const p = this.need(n, what);
    if (p) await p;
    return this.readSync(n, what);
  }

  /**
   * Fill `dst` exactly from buffered bytes, copying straight from the
   * received chunks (no coalescing, no promise). Throws TruncatedError if
   * fewer than `dst.length` bytes are buffered (nothing is consumed then).
   */
  readIntoSync(dst: Uint8Array, what = 'bytes'): void {
    const n = dst.length;
    if (this.avail < n) throw new TruncatedError(what, n - this.avail, this.pos + this.avail);
    let o = 0;
    while (o < n) {
      const c = this.chunks[0]!;
      const take = Math.min(c.length - this.head, n - o);
      dst.set(take === c.length && this.head === 0 ? c : c.subarray(this.head, this.head + take), o);
      o += take;
      this.consume(take);
    }
  }

  /** Fill `dst` exactly, copying straight from the received chunks. */
  async readInto(dst: Uint8Array, what = 'bytes'): Promise<void> {
    let o = 0;
    while (o < dst.length) {
      if (this.avail === 0 && !(await this.pull())) {
        throw new TruncatedError(what, dst.length - o, this.pos);
      }
      const c = this.chunks[0]!;
      const take = Math.min(c.length - this.head, dst.length - o);
      dst.set(c.subarray(this.head, this.head + take), o);
      o += take;
      this.consume(take);
    }
  }

  /** Skip `n` bytes without keeping them. */
  async skip(n: number, what = 'bytes'): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.avail === 0 && !(await this.pull())) throw new TruncatedError(what, left, this.pos);
      const take = Math.min(this.avail, left);
      this.consume(take);
      left -= take;
    }
  }

  /**
   * Yield the next `n` bytes as views, as they arrive (no buffering of the
   * whole range: for blobs up to 4 GiB such as PACKAGED).
   */
  async *take(n: number, what = 'bytes'): AsyncGenerator<Uint8Array, void, undefined> {
    let left = n;
    while (left > 0) {
      if (this.avail === 0 && !(await this.pull())) throw new TruncatedError(what, left, this.pos);
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.head, left);
      const v = c.subarray(this.head, this.head + k);
      this.consume(k);
      left -= k;
      yield v;
    }
  }

  /**
   * A reader over exactly the next `n` bytes (e.g. a PACKAGED blob), with
   * stream offsets continuing from here. Bytes flow through as they arrive;
   * nothing of size `n` is allocated. Call `discardRest()` on it when done so
   * the parent is positioned after the blob.
   */
  subReader(n: number, what = 'packaged blob'): StreamReader {
    return new StreamReader(this.take(n, what), { base: this.pos });
  }

  /** Consume and drop everything left in the source (buffered or not). */
  async discardRest(): Promise<void> {
    this.consume(this.avail);
    while (await this.pull()) this.consume(this.avail);
  }

  private attempt<T>(fn: (c: ByteCursor) => T): T | typeof MORE {
    for (;;) {
      const chunk = this.chunks.length > 0 ? this.chunks[0]! : EMPTY;
      const c = new ByteCursor(chunk, this.head, this.pos - this.head);
      c.lazy = true;
      try {
        const v = fn(c);
        this.consume(c.pos - this.head);
        return v;
      } catch (e) {
        if (e !== NEED_MORE) throw e;
        const want = c.wanted - this.head;
        if (this.avail > chunk.length - this.head) {
          this.coalesce(Math.min(this.avail, want));
          continue;
        }
        this.lastWanted = want;
        this.lastCursor = c;
        return MORE;
      }
    }
  }

  /**
   * Run a pure decoder on the buffered bytes if they suffice; undefined if it
   * ran out of bytes (nothing consumed). On success the bytes it read are
   * consumed. Other errors propagate.
   */
  tryDecode<T>(fn: (c: ByteCursor) => T): T | undefined {
    const v = this.attempt(fn);
    return v === MORE ? undefined : v;
  }

  /**
   * Run a pure decoder, pulling more data and retrying whenever it runs out
   * of bytes. If the stream ends mid-item, rejects with the decoder's
   * TruncatedError (its offset is where bytes ran out).
   */
  async decode<T>(fn: (c: ByteCursor) => T): Promise<T> {
    for (;;) {
      const v = this.attempt(fn);
      if (v !== MORE) return v;
      if (!(await this.fill(this.lastWanted))) throw this.lastCursor!.truncation();
    }
  }

  /** Stop reading the source (calls its iterator's return()). */
  async close(): Promise<void> {
    this.done = true;
    await this.it.return?.();
  }
}
