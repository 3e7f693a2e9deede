/**
 * ChunkQueue: an unbounded async iterable of byte chunks fed by push(). The
 * proxy relays a chunk and pushes the same (never modified) chunk here for
 * the decoder, which consumes it off the relay's path.
 */

/** A push-fed AsyncIterable<Uint8Array>. */
export class ChunkQueue implements AsyncIterable<Uint8Array> {
  private readonly items: Uint8Array[] = [];
  private waiter: ((r: IteratorResult<Uint8Array>) => void) | undefined;
  private ended = false;
  /** Bytes queued and not yet taken by the consumer. */
  queuedBytes = 0;

  /** Queue one chunk (ignored after end()). */
  push(chunk: Uint8Array): void {
    if (this.ended) return;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w({ value: chunk, done: false });
      return;
    }
    this.items.push(chunk);
    this.queuedBytes += chunk.length;
  }

  /** No more chunks: the consumer sees the end after the queued ones. */
  end(): void {
    this.ended = true;
    const w = this.waiter;
    if (w && this.items.length === 0) {
      this.waiter = undefined;
      w({ value: undefined, done: true });
    }
  }

  /** Drop everything queued and end (decoding of the channel stopped). */
  drop(): void {
    this.items.length = 0;
    this.queuedBytes = 0;
    this.end();
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: (): Promise<IteratorResult<Uint8Array>> => {
        const c = this.items.shift();
        if (c) {
          this.queuedBytes -= c.length;
          return Promise.resolve({ value: c, done: false });
        }
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiter = resolve));
      },
      return: (): Promise<IteratorResult<Uint8Array>> => {
        this.drop();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
