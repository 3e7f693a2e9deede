/**
 * A minimal QMP client over a unix socket, for tests that drive real QEMU.
 * (The project's full client lives in src/control; this one keeps test/guest
 * self-contained.)
 */
import { connect, type Socket } from 'node:net';

/** One asynchronous QMP event. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  command: string;
}

/** A connected QMP session (capabilities already negotiated). */
export class MiniQmp {
  /** Every event received so far, in order. */
  readonly events: QmpEvent[] = [];
  private readonly pending: Pending[] = [];
  private buffer = '';
  private closedError: Error | null = null;
  private readonly eventWaiters = new Set<() => void>();

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    const onEnd = (err?: Error): void => {
      this.closedError = err ?? new Error('QMP connection closed');
      for (const p of this.pending.splice(0)) p.reject(new Error(`${p.command}: ${this.closedError.message}`));
      for (const w of this.eventWaiters) w();
    };
    socket.on('error', onEnd);
    socket.on('close', () => onEnd());
  }

  /** Connect to `path`, retrying until QEMU listens (up to `timeoutMs`), and negotiate capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<MiniQmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((res, rej) => {
          const s = connect(path);
          s.once('connect', () => res(s));
          s.once('error', rej);
        });
        const qmp = new MiniQmp(socket);
        // The greeting is answered as if it were the reply to a command.
        await new Promise<unknown>((resolve, reject) => qmp.pending.push({ resolve, reject, command: 'greeting' }));
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`QMP connect to ${path} failed: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if ('event' in msg) {
        this.events.push(msg as unknown as QmpEvent);
        for (const w of this.eventWaiters) w();
        continue;
      }
      const p = this.pending.shift();
      if (!p) continue;
      if ('QMP' in msg) p.resolve(msg['QMP']);
      else if ('error' in msg) {
        const err = msg['error'] as { class: string; desc: string };
        p.reject(new Error(`${p.command}: ${err.class}: ${err.desc}`));
      } else p.resolve(msg['return']);
    }
  }

  /** Run one command; resolves with its `return`, rejects with QEMU's `desc`. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedError) return Promise.reject(new Error(`${command}: ${this.closedError.message}`));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ resolve: resolve as (v: unknown) => void, reject, command });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  /** Resolve with the first event named `name` (already received or future), or reject after `timeoutMs`. */
  waitEvent(name: string, timeoutMs = 30_000, from = 0): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const ev = this.events.slice(from).find((e) => e.event === name);
        if (ev) done(() => resolve(ev));
        else if (this.closedError) done(() => reject(new Error(`waiting for ${name}: ${this.closedError!.message}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`timed out waiting for event ${name}`))), timeoutMs);
      const done = (f: () => void): void => {
        clearTimeout(timer);
        this.eventWaiters.delete(check);
        f();
      };
      this.eventWaiters.add(check);
      check();
    });
  }

  /** Close the connection. */
  close(): void {
    this.socket.destroy();
  }
}
