/**
 * PushParser: the frame of a parser fed by chunks it may not keep (a socket's
 * `onread` buffer, reused after each callback). A subclass parses one item
 * at a time from a byte range; the frame carries an item cut between chunks
 * over to the next one (copied, at most `maxItem` bytes), counts the bytes
 * taken, and at the first item the subclass does not take stops before it,
 * keeping that item and everything after it for whoever reads on.
 */
export abstract class PushParser {
  /** Set at the first item not taken; push() takes nothing more. */
  stopped = false;
  /** Bytes taken (parsed and applied). */
  consumed = 0;
  private readonly carry: Uint8Array;
  private carryLen = 0;
  private leftover: Uint8Array[] = [];

  constructor(private readonly maxItem: number) {
    this.carry = new Uint8Array(maxItem);
  }

  /**
   * Parses and applies one item at b[p..end): its length when taken, 0 when
   * incomplete, -1 when not taken. Nothing may change unless it is taken.
   */
  protected abstract item(b: Uint8Array, p: number, end: number): number;

  /** The bytes not taken, in order: held back at a stop, or an incomplete item at the end. */
  rest(): Uint8Array {
    const parts = this.stopped ? this.leftover : [this.carry.subarray(0, this.carryLen)];
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /** Takes every complete item of `chunk` it can (the chunk may be reused after the call). */
  push(chunk: Uint8Array): void {
    if (this.stopped) {
      this.leftover.push(chunk.slice());
      return;
    }
    let pos = 0;
    if (this.carryLen > 0) {
      const had = this.carryLen;
      const take = Math.min(chunk.length, this.maxItem - had);
      this.carry.set(chunk.subarray(0, take), had);
      const n = this.item(this.carry, 0, had + take);
      if (n === 0) {
        if (had + take === this.maxItem) throw new Error(`push parser: an item longer than ${this.maxItem} bytes`);
        this.carryLen = had + take;
        return;
      }
      if (n < 0) {
        this.stop([this.carry.slice(0, had), chunk.slice()]);
        return;
      }
      this.consumed += n;
      pos = n - had;
      this.carryLen = 0;
    }
    while (pos < chunk.length) {
      const n = this.item(chunk, pos, chunk.length);
      if (n > 0) {
        pos += n;
        this.consumed += n;
      } else if (n < 0) {
        this.stop([chunk.slice(pos)]);
        return;
      } else {
        this.carry.set(chunk.subarray(pos), 0);
        this.carryLen = chunk.length - pos;
        return;
      }
    }
  }

  private stop(parts: Uint8Array[]): void {
    this.stopped = true;
    this.leftover = parts;
    this.carryLen = 0;
  }
}
