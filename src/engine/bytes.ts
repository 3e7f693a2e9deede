/**
 * ChannelReader: the engines' synchronous accessors (u8/be16/be32/be64 after
 * `await need(n)`) over wire/'s StreamReader, which does all the buffering.
 * Nothing is copied here: reads are views of the received chunks, and
 * `readInto` copies a page straight from them into guest memory.
 *
 * Writing goes through wire/'s StreamWriter directly.
 */
import type { Readable } from 'node:stream';
import { StreamReader } from '../wire/reader.js';
import { holdReading, releaseReading } from '../transport/hold.js';

const LATIN1 = new TextDecoder('latin1');
/** Chunks queued ahead of the reader before the input is paused. */
const QUEUE_CHUNKS = 64;

/**
 * The chunks of `input` as an async iterable that, unlike Node's own
 * iterator, never destroys the stream (the engines keep writing to the same
 * duplex) and treats 'close' without 'end' as the end of input, not an error.
 * Flow control: the input is paused while QUEUE_CHUNKS chunks wait. A socket
 * input can be held (its reading stopped, the bytes Node already read handed
 * over) and released again: see hold().
 */
export class ChunkSource implements AsyncIterable<Uint8Array>, AsyncIterator<Uint8Array, undefined> {
  private readonly queue: Uint8Array[] = [];
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  private listening = false;
  private held = false;

  constructor(private readonly input: Readable) {
    this.listen();
  }

  private readonly signal = (): void => {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  };
  private readonly onData = (c: Uint8Array): void => {
    this.queue.push(c);
    if (this.queue.length >= QUEUE_CHUNKS) this.input.pause();
    this.signal();
  };
  private readonly onEnd = (): void => {
    this.ended = true;
    this.signal();
  };
  private readonly onError = (e: Error): void => {
    this.error ??= e;
    this.signal();
  };

  private listen(): void {
    if (this.listening) return;
    this.listening = true;
    const i = this.input;
    i.on('data', this.onData);
    i.on('end', this.onEnd);
    i.on('close', this.onEnd);
    i.on('error', this.onError);
  }

  private unlisten(): void {
    if (!this.listening) return;
    this.listening = false;
    const i = this.input;
    i.off('data', this.onData);
    i.off('end', this.onEnd);
    i.off('close', this.onEnd);
    i.off('error', this.onError);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<Uint8Array, undefined>> {
    for (;;) {
      if (this.queue.length > 0) {
        const c = this.queue.shift()!;
        if (!this.held && this.queue.length < QUEUE_CHUNKS / 2 && this.input.isPaused() && !this.ended) this.input.resume();
        return { done: false, value: c };
      }
      if (this.error) throw this.error;
      if (this.ended) return { done: true, value: undefined };
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  async return(): Promise<IteratorResult<Uint8Array, undefined>> {
    this.unlisten();
    this.ended = true;
    return { done: true, value: undefined };
  }

  /**
   * Stops reading the input (a socket; see transport/hold.ts) and returns the
   * chunks read from it and not yet yielded, in order; undefined (nothing
   * changed) when the input cannot be held or has ended.
   */
  hold(): Uint8Array[] | undefined {
    if (this.held || this.ended || this.error) return undefined;
    const tail = holdReading(this.input);
    if (!tail) return undefined;
    this.held = true;
    this.unlisten();
    return this.queue.splice(0).concat(tail);
  }

  /** Reads the input again after hold(). */
  release(): void {
    if (!this.held) return;
    this.held = false;
    this.listen();
    // An 'end' (or 'close') that fired while held was not heard.
    if (this.input.readableEnded || this.input.destroyed) this.ended = true;
    releaseReading(this.input);
  }
}

/** The chunks of `input` (see ChunkSource). */
export function readableChunks(input: Readable): ChunkSource {
  return new ChunkSource(input);
}

/** Synchronous big-endian accessors over a StreamReader fed by `input`. */
export class ChannelReader {
  /** The underlying reader (offset, decoders, subReader). */
  readonly stream: StreamReader;

  private readonly source: ChunkSource;

  constructor(input: Readable) {
    this.source = new ChunkSource(input);
    this.stream = new StreamReader(this.source);
  }

  /**
   * Stops reading the input and hands over every byte read from it and not
   * consumed yet, with the stream offset of the first; undefined (nothing
   * changed) when the input cannot be held (not a socket, or ended).
   */
  hold(): { offset: number; bytes: Uint8Array } | undefined {
    const tail = this.source.hold();
    if (!tail) return undefined;
    const offset = this.stream.offset;
    const head = this.stream.takeBuffered();
    const parts = head.concat(tail);
    const bytes = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      bytes.set(p, o);
      o += p.length;
    }
    return { offset, bytes };
  }

  /** Reads the input again after hold(): `rest` (not consumed) starts at stream offset `offset`. */
  release(offset: number, rest: Uint8Array): void {
    this.stream.restartAt(offset, rest);
    this.source.release();
  }

  /** Bytes consumed so far (stream offset of the next byte). */
  get offset(): number {
    return this.stream.offset;
  }

  /** Bytes buffered and not yet consumed. */
  get available(): number {
    return this.stream.buffered;
  }

  /** Waits until n bytes are buffered; rejects with TruncatedError at end of input. */
  async need(n: number, what = 'stream'): Promise<void> {
    const p = this.stream.need(n, what);
    if (p) await p;
  }

  /** Waits until at least one more byte is buffered; false at end of input. */
  async more(): Promise<boolean> {
    const have = this.stream.buffered;
    if (this.stream.sourceEnded) return false;
    try {
      await this.need(have + 1);
      return true;
    } catch (e) {
      if (this.stream.sourceEnded) return false;
      throw e;
    }
  }

  u8(): number {
    return this.stream.readSync(1)[0]!;
  }
  be16(): number {
    const b = this.stream.readSync(2);
    return (b[0]! << 8) | b[1]!;
  }
  be32(): number {
    const b = this.stream.readSync(4);
    return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
  }
  /** be64 as a number; callers use it for offsets and lengths below 2^53. */
  be64(): number {
    const b = this.stream.readSync(8);
    const hi = ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
    const lo = ((b[4]! << 24) | (b[5]! << 16) | (b[6]! << 8) | b[7]!) >>> 0;
    return hi * 0x100000000 + lo;
  }
  /** Next byte without consuming it (must be buffered). */
  peek(): number {
    return this.stream.peekU8Sync()!;
  }
  /** A copy of the next n (buffered) bytes, consumed. */
  take(n: number): Uint8Array {
    return this.stream.readSync(n).slice();
  }
  /** A view (valid until the next read) of the next n buffered bytes, consumed. */
  view(n: number): Uint8Array {
    return this.stream.readSync(n);
  }
  /** Fills `dst` from the stream, copying straight from the received chunks. */
  readInto(dst: Uint8Array, what = 'bytes'): Promise<void> {
    return this.stream.readInto(dst, what);
  }
  /** Fills `dst` from buffered bytes (after need), copying straight from the received chunks. */
  readIntoSync(dst: Uint8Array, what = 'bytes'): void {
    this.stream.readIntoSync(dst, what);
  }
  /** Reads a cstr8 (u8 length, then the bytes) as latin1. */
  async cstr8(what = 'idstr'): Promise<string> {
    await this.need(1, what);
    const len = this.peek();
    await this.need(1 + len, what);
    return LATIN1.decode(this.stream.readSync(1 + len).subarray(1));
  }
  /** All currently buffered bytes, consumed (a copy). */
  drainBuffered(): Uint8Array {
    return this.take(this.available);
  }
}
