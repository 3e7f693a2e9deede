/**
 * Splits a QMP input byte stream into JSON texts the way QEMU's JSON
 * streamer does: objects and arrays end when their brackets balance (no
 * newline needed, several per line allowed); a bare word or number at top
 * level is a text of its own (and usually a parse error); a stray closing
 * bracket is a text of its own ("expecting value").
 */
export class JsonSplitter {
  private cur = '';
  private depth = 0;
  private quote: string | undefined;
  private escaped = false;
  private bare = false;

  /** Feed more input; returns the complete texts found, in order. */
  push(chunk: string): string[] {
    const out: string[] = [];
    const flushBare = (): void => {
      if (this.bare) {
        out.push(this.cur);
        this.cur = '';
        this.bare = false;
      }
    };
    for (const c of chunk) {
      if (this.quote !== undefined) {
        this.cur += c;
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === this.quote) {
          this.quote = undefined;
          if (this.depth === 0) {
            out.push(this.cur);
            this.cur = '';
          }
        }
        continue;
      }
      if (c === '"' || c === "'") {
        if (this.depth === 0) flushBare();
        this.quote = c;
        this.cur += c;
        continue;
      }
      if (c === '{' || c === '[') {
        if (this.depth === 0) flushBare();
        this.depth++;
        this.cur += c;
        continue;
      }
      if (c === '}' || c === ']') {
        if (this.depth === 0) flushBare();
        this.cur += c;
        this.depth--;
        if (this.depth <= 0) {
          out.push(this.cur);
          this.cur = '';
          this.depth = 0;
        }
        continue;
      }
      const ws = c === ' ' || c === '\t' || c === '\n' || c === '\r';
      if (this.depth === 0) {
        if (ws) flushBare();
        else {
          this.cur += c;
          this.bare = true;
        }
        continue;
      }
      this.cur += c;
    }
    return out;
  }
}
