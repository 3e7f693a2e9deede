/**
 * Postcopy keepalive (ours; QEMU 7.2 never notices a black-holed link):
 * while postcopy-active the source asks for a COMMAND PING every
 * `intervalMs` (the sender writes it at the next section boundary) and
 * declares the link dead when the return path has been silent for
 * `timeoutMs`.
 */

/** Callbacks of a Keepalive. */
export interface KeepaliveHooks {
  /** A PING is due: write one at the next section boundary. */
  pingDue(): void;
  /** The return path was silent for the timeout. */
  timeout(silentMs: number): void;
}

/** One keepalive period; start() at postcopy-active, stop() when leaving it. */
export class Keepalive {
  private timer: NodeJS.Timeout | undefined;
  private lastActivity = 0;
  private lastPing = 0;
  /** PINGs requested so far. */
  pings = 0;

  constructor(
    private readonly intervalMs: number,
    private readonly timeoutMs: number,
    private readonly hooks: KeepaliveHooks,
  ) {}

  /** Starts (or restarts) the period; the silence clock starts now. */
  start(): void {
    this.stop();
    const t = performance.now();
    this.lastActivity = t;
    this.lastPing = t;
    const tick = Math.max(1, Math.min(this.intervalMs, this.timeoutMs / 4));
    this.timer = setInterval(() => this.check(), tick);
    this.timer.unref();
  }

  /** Stops the timer. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** True while running. */
  get running(): boolean {
    return this.timer !== undefined;
  }

  /** Something arrived on the return path (or the silence clock should restart). */
  touch(): void {
    this.lastActivity = performance.now();
  }

  private check(): void {
    const t = performance.now();
    const silent = t - this.lastActivity;
    if (silent >= this.timeoutMs) {
      this.stop();
      this.hooks.timeout(silent);
      return;
    }
    if (t - this.lastPing >= this.intervalMs) {
      this.lastPing = t;
      this.pings++;
      this.hooks.pingDue();
    }
  }
}
