/**
 * Splits a QMP input byte stream into JSON texts the way QEMU's JSON
 * streamer does: objects and arrays end when their brackets balance (no
 * newline needed, several per line allowed); a bare word or number at top
 * level is a text of its own (and usually a parse error); a stray closing
 * bracket is a text of its own ("expecting value").
 */
export class JsonSplitter {
  /** Default cap of a pending text (QEMU's lexer caps a JSON text at 64 MiB). */
  static readonly MAX_TEXT = 64 << 20;
  private cur = '';
  private depth = 0;
  private quote: string | undefined;
  private escaped = false;
  private bare = false;

  constructor(private readonly maxText = JsonSplitter.MAX_TEXT) {}

  /** Feed more input; returns the complete texts found, in order. */
  push(chunk: string): string[] {
    const out: string[] = [];
    let start = 0; // start of the part of `chunk` not yet moved into `cur`
    const emit = (end: number): void => {
      out.push(this.cur + chunk.slice(start, end));
      this.cur = '';
      start = end;
    };
    const flushBare = (at: number): void => {
      if (this.bare) {
        emit(at);
        this.bare = false;
      }
    };
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i]!;
      if (this.quote !== undefined) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === this.quote) {
          this.quote = undefined;
          if (this.depth === 0) emit(i + 1);
        }
        continue;
      }
      if (c === '"' || c === "'") {
        if (this.depth === 0) flushBare(i);
        this.quote = c;
        continue;
      }
      if (c === '{' || c === '[') {
        if (this.depth === 0) flushBare(i);
        this.depth++;
        continue;
      }
      if (c === '}' || c === ']') {
        if (this.depth === 0) flushBare(i);
        this.depth--;
        if (this.depth <= 0) {
          this.depth = 0;
          emit(i + 1);
        }
        continue;
      }
      if (this.depth === 0) {
        const ws = c === ' ' || c === '\t' || c === '\n' || c === '\r';
        if (ws) {
          flushBare(i);
          start = i + 1; // whitespace between texts is dropped
        } else this.bare = true;
      }
    }
    this.cur += chunk.slice(start);
    if (this.cur.length > this.maxText) {
      // Hand the oversized text over (it fails to parse) and start afresh.
      out.push(this.cur);
      this.cur = '';
      this.depth = 0;
      this.quote = undefined;
      this.escaped = false;
      this.bare = false;
    }
    return out;
  }
}
