/**
 * A raw QMP test client: sends text as is, hands back the server's lines
 * verbatim (replies and events apart), so tests can compare bytes.
 */
import net from 'node:net';

export class RawQmp {
  readonly replies: string[] = [];
  readonly events: string[] = [];
  private waiters: Array<(l: string) => void> = [];
  private buf = '';
  greeting!: string;

  private constructor(readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\r\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        if (line.startsWith('{"timestamp"')) this.events.push(line);
        else {
          const w = this.waiters.shift();
          if (w) w(line);
          else this.replies.push(line);
        }
      }
    });
  }

  static async connect(opts: { path: string } | { port: number; host: string }): Promise<RawQmp> {
    const sock = net.connect(opts as net.NetConnectOpts);
    await new Promise<void>((res, rej) => {
      sock.once('connect', res);
      sock.once('error', rej);
    });
    const c = new RawQmp(sock);
    c.greeting = await c.next();
    return c;
  }

  next(timeoutMs = 5000): Promise<string> {
    const l = this.replies.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('no reply')), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(t);
        res(x);
      });
    });
  }

  /** Send a raw text (a newline is appended) and wait for one reply line. */
  async cmd(text: string): Promise<string> {
    this.sock.write(text + '\n');
    return this.next();
  }

  close(): void {
    this.sock.destroy();
  }
}
