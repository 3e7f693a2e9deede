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

const LATIN1 = new TextDecoder('latin1');
/** Chunks queued ahead of the reader before the input is paused. */
const QUEUE_CHUNKS = 64;

/**
 * The chunks of `input` as an async iterable that, unlike Node's own
 * iterator, never destroys the stream (the engines keep writing to the same
 * duplex) and treats 'close' without 'end' as the end of input, not an error.
 * Flow control: the input is paused while QUEUE_CHUNKS chunks wait.
 */
export async function* readableChunks(input: Readable): AsyncGenerator<Uint8Array, void, undefined> {
  const queue: Uint8Array[] = [];
  let ended = false;
  let error: Error | undefined;
  let wake: (() => void) | undefined;
  const signal = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (c: Uint8Array): void => {
    queue.push(c);
    if (queue.length >= QUEUE_CHUNKS) input.pause();
    signal();
  };
  const onEnd = (): void => {
    ended = true;
    signal();
  };
  const onError = (e: Error): void => {
    error ??= e;
    signal();
  };
  input.on('data', onData);
  input.on('end', onEnd);
  input.on('close', onEnd);
  input.on('error', onError);
  try {
    for (;;) {
      if (queue.length > 0) {
        const c = queue.shift()!;
        if (queue.length < QUEUE_CHUNKS / 2 && input.isPaused() && !ended) input.resume();
        yield c;
        continue;
      }
      if (error) throw error;
      if (ended) return;
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    input.off('data', onData);
    input.off('end', onEnd);
    input.off('close', onEnd);
    input.off('error', onError);
  }
}

/** Synchronous big-endian accessors over a StreamReader fed by `input`. */
export class ChannelReader {
  /** The underlying reader (offset, decoders, subReader). */
  readonly stream: StreamReader;

  constructor(input: Readable) {
    this.stream = new StreamReader(readableChunks(input));
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
